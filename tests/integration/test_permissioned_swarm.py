"""A permissioned swarm: only listed peer IDs are members; the list can change without a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from p2p.identity import load_or_create_identity
from tests.integration.test_gossip_training import FAST
from tests.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_strangers_are_refused_until_the_members_file_admits_them(start_node, tmp_path):
    ids = {name: load_or_create_identity(tmp_path / name / "identity")[0].peer_id for name in ("a", "b", "c")}
    members = tmp_path / "members.txt"
    members.write_text(f"# our partner institutions\n{ids['a']} Hospital A\n{ids['b']} Hospital B\n")
    permissioned = ("--members-file", str(members), *FAST)

    a = start_node("a", *permissioned)
    b = start_node("b", "--join", a.addrs[0], *permissioned)
    stranger = start_node("c", "--join", a.addrs[0], *FAST)  # same swarm name, same DHT, open node
    assert stranger.peer_id == ids["c"]

    wait_until(lambda: a.peer_ids() == {b.peer_id}, timeout_s=30, what="a to list b")
    wait_until(lambda: b.peer_ids() == {a.peer_id}, timeout_s=30, what="b to list a")
    # The stranger sees the members (it runs an open swarm) and asks them to average: refused every time.
    wait_until(lambda: stranger.peer_ids() == {a.peer_id, b.peer_id}, timeout_s=30, what="the stranger to see them")
    wait_until(
        lambda: a.status()["exchanges"]["rejected"] + b.status()["exchanges"]["rejected"] >= 2,
        timeout_s=60,
        what="the members to refuse the stranger",
    )
    assert stranger.status()["exchanges"]["ok"] == 0
    assert stranger.peer_id not in (a.peer_ids() | b.peer_ids())
    from node.control_client import fetch_json

    labels = {p["peer_id"]: p.get("label") for p in fetch_json(*b.control, "/peers")}
    assert labels == {a.peer_id: "Hospital A"}
    wait_until(lambda: a.status()["exchanges"]["ok"] >= 3, timeout_s=60, what="the members to average")

    # Admit the stranger: a reloads on SIGHUP, b through the control API (`fedswarm reload-members`).
    members.write_text(members.read_text() + f"{ids['c']} Hospital C\n")
    a.proc.send_signal(signal.SIGHUP)
    reload = subprocess.run(
        [sys.executable, "-m", "node", "reload-members", "--data-dir", str(b.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reload.returncode == 0, reload.stderr
    assert json.loads(reload.stdout) == {"ok": True, "open": False, "members": 3}
    wait_until(lambda: a.peer_ids() == {b.peer_id, stranger.peer_id}, timeout_s=30, what="a to admit c")
    wait_until(lambda: b.peer_ids() == {a.peer_id, stranger.peer_id}, timeout_s=30, what="b to admit c")
    wait_until(lambda: stranger.status()["exchanges"]["ok"] >= 3, timeout_s=60, what="c to average once admitted")
    assert a.proc.poll() is None  # SIGHUP reloads; it does not stop the node
