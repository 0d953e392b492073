"""Real node processes on 127.0.0.1 find each other through the DHT, and notice who leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.nodeproc import free_port, pid_alive
from tests.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TTL_S = 4.0  # record lifetime used by these tests (the default is 30 s)
# A peer must vanish within the record lifetime plus one poll; allow the loaded CI machine slack.
GONE_WITHIN_S = TTL_S + 6.0


def three_node_swarm(start_node):
    a = start_node("a")
    b = start_node("b", "--join", a.addrs[0])
    c = start_node("c", "--join", a.addrs[0])
    everyone = {a.peer_id, b.peer_id, c.peer_id}
    for node in (a, b, c):
        wait_until(
            lambda n=node: n.peer_ids() == everyone - {n.peer_id},
            timeout_s=15,
            what=f"{node.data_dir.name} to list the other two",
        )
    return a, b, c


def test_nodes_joining_through_a_list_each_other_and_cli_reports_schema(start_node):
    a, b, c = three_node_swarm(start_node)

    cli = [sys.executable, "-m", "node"]
    out = subprocess.run([*cli, "status", "--json", "--data-dir", str(b.data_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {"peer_id", "swarm", "addrs", "peers", "uptime_s", "version"} <= status.keys()
    assert status["peer_id"] == b.peer_id and status["swarm"] == "itest" and status["peers"] == 2
    assert status["addrs"] and all(addr.endswith(f"/p2p/{b.peer_id}") for addr in status["addrs"])
    assert status["uptime_s"] > 0

    host, port = b.control
    out = subprocess.run([*cli, "peers", "--json", "--control", f"{host}:{port}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    peers = json.loads(out.stdout)
    assert {p["peer_id"] for p in peers} == {a.peer_id, c.peer_id}
    for p in peers:
        assert {"peer_id", "addrs", "last_seen_s"} <= p.keys()
        assert p["last_seen_s"] >= 0 and p["addrs"]

    table = subprocess.run([*cli, "peers", "--control", f"{host}:{port}"], capture_output=True, text=True)
    assert table.returncode == 0 and a.peer_id in table.stdout and c.peer_id in table.stdout


def test_sigterm_leaves_the_others_tables_and_nothing_behind(start_node):
    a, b, c = three_node_swarm(start_node)
    p2pd = c.p2pd_pids()
    assert p2pd, "the node should run its libp2p daemon as a child process"
    sockets = [
        arg.split("=", 1)[1].removeprefix("/unix")
        for pid in p2pd
        for arg in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        if arg.startswith("-listen=/unix")
    ]
    assert sockets and all(os.path.exists(s) for s in sockets)

    started = time.monotonic()
    assert c.terminate() == 0
    assert time.monotonic() - started < 5.0 + 1.0  # promised 5 s, plus process start-up noise
    assert not any(pid_alive(pid) for pid in p2pd), "p2pd outlived its node"
    assert not any(os.path.exists(s) for s in sockets), "socket files left behind"
    assert not (c.data_dir / "control.txt").exists()

    for node in (a, b):
        wait_until(
            lambda n=node: n.peer_ids() == ({a.peer_id, b.peer_id} - {n.peer_id}),
            timeout_s=GONE_WITHIN_S,
            what=f"{node.data_dir.name} to drop the stopped node",
        )


def test_bootstrap_node_killed_the_others_carry_on(start_node):
    a, b, c = three_node_swarm(start_node)
    a.kill_hard()
    for node, other in ((b, c), (c, b)):
        wait_until(
            lambda n=node, o=other: n.peer_ids() == {o.peer_id},
            timeout_s=GONE_WITHIN_S,
            what=f"{node.data_dir.name} to drop the crashed node and keep the other",
        )
    # and they keep listing each other after several record lifetimes (refreshes go through the DHT
    # without the bootstrap node)
    deadline = time.monotonic() + 2 * TTL_S
    while time.monotonic() < deadline:
        assert b.peer_ids() == {c.peer_id}
        assert c.peer_ids() == {b.peer_id}
        time.sleep(0.5)


def test_a_node_of_another_swarm_on_the_same_dht_is_not_listed(start_node):
    a = start_node("a")
    b = start_node("b", "--join", a.addrs[0])
    stranger = start_node("stranger", "--join", a.addrs[0], swarm="elsewhere")
    wait_until(lambda: a.peer_ids() == {b.peer_id}, timeout_s=15, what="a to list b")
    wait_until(lambda: b.peer_ids() == {a.peer_id}, timeout_s=15, what="b to list a")
    # the stranger is on the same DHT (it could join through a), yet it is not a member of "itest"
    wait_until(lambda: stranger.status()["dht_neighbours"] >= 1, timeout_s=15, what="the stranger to join the DHT")
    deadline = time.monotonic() + 2 * TTL_S
    while time.monotonic() < deadline:
        assert stranger.peer_id not in a.peer_ids() | b.peer_ids()
        assert stranger.peer_ids() == set()
        time.sleep(0.5)


def test_restart_with_same_data_dir_keeps_peer_id(start_node):
    first = start_node("a")
    peer_id = first.peer_id
    assert first.terminate() == 0
    again = start_node("a")
    assert again.peer_id == peer_id
    assert again.addrs[0].endswith(f"/p2p/{peer_id}")


def test_join_retries_until_the_bootstrap_peer_appears(start_node, tmp_path):
    # Give A its identity first so B knows the full address before A runs.
    out = subprocess.run(
        [sys.executable, "-m", "node", "id", "--data-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    a_id, port = out.stdout.strip(), free_port()
    a_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}"

    b = start_node("b", "--join", a_addr)
    wait_until(lambda: b.status()["uptime_s"] > 2.0, timeout_s=10, what="b to stay up alone")
    assert b.proc.poll() is None and b.peer_ids() == set()

    a = start_node("a", "--listen", f"/ip4/127.0.0.1/tcp/{port}")
    assert a.peer_id == a_id
    wait_until(lambda: b.peer_ids() == {a_id}, timeout_s=30, what="b to join a once a is up")
    wait_until(lambda: a.peer_ids() == {b.peer_id}, timeout_s=15, what="a to list b")
