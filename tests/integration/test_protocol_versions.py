"""Two real nodes whose wire protocol versions differ: neither takes the other's model in, and both
record that the exchange was refused and why."""

from __future__ import annotations

import json

import pytest

from node.control_client import fetch_json
from tests.integration.test_gossip_training import FAST
from tests.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def refusals(node) -> list[dict]:
    """The refused exchanges in the node's history (/history: what the node itself recorded)."""
    events = fetch_json(*node.control, "/history")
    return [e for e in events if e.get("event") == "exchange" and e.get("outcome") == "rejected"]


def test_nodes_of_incompatible_versions_refuse_each_other_and_both_say_why(start_node):
    old = start_node("old", "--min-peers", "1", *FAST)
    new = start_node("new", "--min-peers", "1", "--join", old.addrs[0], *FAST, module="tests.future_node")
    # They do find each other (the DHT is hivemind's, not ours) and so try to average.
    wait_until(lambda: new.peer_id in (old.peer_ids() or ()), timeout_s=30, what="old to list new")
    for node, ours, theirs in ((old, 1, 2), (new, 2, 1)):
        found = wait_until(
            lambda n=node: [r for r in refusals(n) if "protocol version" in r.get("reason", "")],
            timeout_s=60,
            what=f"{node.data_dir.name} to record a refused exchange",
        )
        assert f"protocol version {theirs}, this node speaks {ours}" in found[0]["reason"], json.dumps(found)
    for node in (old, new):
        assert node.status()["exchanges"]["ok"] == 0  # no model crossed
