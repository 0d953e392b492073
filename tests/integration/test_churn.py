"""Churn: two of six nodes crash at different times and come back. The survivors never stall, the
returning nodes resume from their checkpoints, and the swarm ends where it would have without churn."""

from __future__ import annotations

import itertools
import statistics

import pytest

from node.metrics_log import METRICS_FILE, read_metrics
from tests.integration.test_gossip_training import FAST
from tests.nodeproc import final_test_accuracies
from tests.polling import wait_until
from training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

NODES, ROUNDS, EXCHANGE_TIMEOUT_S = 6, 150, 5.0
ARGS = (
    *("--rounds", str(ROUNDS), "--min-peers", str(NODES - 1), "--alpha", "0.5", "--lr", "0.1"),
    *("--exchange-timeout-s", str(EXCHANGE_TIMEOUT_S), "--checkpoint-every", "10", *FAST),
)
CRASHES = ((4, 30), (5, 75))  # (node, the round at which it crashes): one early, one late


def start_swarm(start_node, prefix: str) -> list:
    first = start_node(f"{prefix}0", "--partition", f"0/{NODES}", *ARGS)
    return [first] + [
        start_node(f"{prefix}{i}", "--join", first.addrs[0], "--partition", f"{i}/{NODES}", *ARGS)
        for i in range(1, NODES)
    ]


def longest_stall_s(node) -> float:
    """The longest time between two consecutive rounds of this node (a round = train + one exchange).

    Counted from the first record of each round: a finished node records its last round again each time
    it rescores a late exchange, and those records are not rounds."""
    first_seen: dict[int, float] = {}
    for e in read_metrics(node.data_dir / METRICS_FILE):
        if e["event"] == "round" and e["round"] > 0:
            first_seen.setdefault(e["round"], e["t"])
    return max(b - a for a, b in itertools.pairwise(first_seen.values()))


def test_two_crashed_nodes_resume_and_the_swarm_ends_as_without_churn(start_node, tmp_path):
    calm = start_swarm(start_node, "calm")
    calm_accuracy = final_test_accuracies(calm)
    for node in calm:
        assert node.terminate() == 0

    nodes = start_swarm(start_node, "churn")
    resumed_from = {}
    for index, at_round in CRASHES:
        victim = nodes[index]
        wait_until(lambda v=victim, r=at_round: v.status()["round"] >= r, timeout_s=120, what=f"round {at_round}")
        victim.kill_hard()
        survivors = [n for i, n in enumerate(nodes) if i != index]
        # Down long enough for the swarm to notice: its record lapses from every survivor's table.
        for node in survivors:
            wait_until(
                lambda n=node, gone=victim.peer_id: gone not in (n.peer_ids() or {gone}),
                timeout_s=30,
                what=f"{node.data_dir.name} to drop the crashed {victim.data_dir.name}",
            )
        resumed_from[index] = load_checkpoint(victim.data_dir / "checkpoint")[1]["round"]
        nodes[index] = start_node(
            victim.data_dir.name, "--partition", f"{index}/{NODES}", "--join", nodes[0].addrs[0], *ARGS
        )
        status = nodes[index].status()
        assert status["started_from"] == "checkpoint"
        wait_until(
            lambda back=nodes[index].peer_id, others=survivors: all(back in (n.peer_ids() or ()) for n in others),
            timeout_s=30,
            what=f"the survivors to list {victim.data_dir.name} again",
        )
        assert status["round"] == resumed_from[index] >= at_round - 10  # its last checkpoint, not a fresh start

    churn_accuracy = final_test_accuracies(nodes)
    for index, _ in CRASHES:  # they came back to the swarm, not just to their own training
        status = nodes[index].status()
        assert status["exchanges"]["ok"] + status["pulled_mixes"] > 0
    for index, node in enumerate(nodes):
        if index not in dict(CRASHES):
            assert longest_stall_s(node) <= 2 * EXCHANGE_TIMEOUT_S, node.data_dir.name
    # Against the undisturbed swarm's mean, not node i's own accuracy there: the nodes end on a common
    # model, so node i of one run is no closer to node i of another than to any of its nodes.
    calm_mean = statistics.fmean(calm_accuracy)
    for index, churn_acc in enumerate(churn_accuracy):
        assert abs(churn_acc - calm_mean) <= 0.02, (index, calm_accuracy, churn_accuracy)
