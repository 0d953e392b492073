"""Gossip averaging and collaborative training with real node processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from node.config import TrainingConfig
from node.learner import build_trainer, task_spec
from p2p.exchange import GossipExchange, Outcome, Snapshot
from p2p.host import Host, HostOptions
from p2p.identity import load_or_create_identity
from p2p.wire import specs_of
from tests.polling import wait_until
from training.aggregate import pairwise_mean
from training.checkpoint import load_checkpoint, save_checkpoint
from training.specs import fingerprint
from training.tasks import load_task

pytestmark = pytest.mark.integration

FAST = ("--record-ttl-s", "4", "--pull-wait-s", "5")


def digits_trainer():
    """A fresh trainer of the default task (digits, whole data): the node's initial model and test split."""
    cfg = TrainingConfig()
    return build_trainer(cfg, load_task(task_spec(cfg)))


def digits_arrays() -> dict[str, np.ndarray]:
    return digits_trainer().named_arrays()


def exchanges_ok(node) -> int:
    return node.status()["exchanges"]["ok"]


@pytest.mark.timeout(240)
def test_six_nodes_gossip_to_the_weighted_mean_of_their_starting_models(start_node, tmp_path):
    template = digits_arrays()
    fp = fingerprint(template)
    rng = np.random.default_rng(7)
    starts, weights = [], []
    for i in range(6):
        arrays = {k: rng.normal(0, 1 + i, size=v.shape).astype(v.dtype) for k, v in template.items()}
        weight = float(rng.uniform(0.5, 4.0))
        meta = {"round": 0, "weight": weight, "fingerprint": fp, "task": "digits", "steps_done": 0}
        save_checkpoint(tmp_path / f"n{i}" / "checkpoint", arrays, meta)
        starts.append(arrays)
        weights.append(weight)

    def weighted_mean(models, ws):
        return {
            k: sum(w * m[k].astype(np.float64) for m, w in zip(models, ws, strict=True)) / sum(ws) for k in template
        }

    target = weighted_mean(starts, weights)
    # No round limit: a node that finishes keeps its final model and others only pull it (one-sided,
    # not conserving), so the swarm is stopped instead, once every node has averaged plenty.
    gossip_only = ("--no-train", "--min-peers", "5", *FAST)
    first = start_node("n0", *gossip_only)
    nodes = [first] + [start_node(f"n{i}", *gossip_only, "--join", first.addrs[0]) for i in range(1, 6)]
    assert all(n.status()["started_from"] == "checkpoint" for n in nodes)
    for node in nodes:
        wait_until(lambda n=node: exchanges_ok(n) >= 40, timeout_s=150, what=f"{node.data_dir.name} to average")
    for node in nodes:
        assert node.terminate() == 0  # writes the final checkpoint

    finals, final_weights = [], []
    for i in range(6):
        arrays, meta = load_checkpoint(tmp_path / f"n{i}" / "checkpoint")
        finals.append(arrays)
        final_weights.append(meta["weight"])
    assert sum(final_weights) == pytest.approx(sum(weights), rel=1e-9)  # total weight conserved
    preserved = weighted_mean(finals, final_weights)
    norm = np.sqrt(sum(np.sum(t**2) for t in target.values()))
    drift = np.sqrt(sum(np.sum((preserved[k] - target[k]) ** 2) for k in target)) / norm
    assert drift < 1e-5, f"the weighted mean moved by {drift:.2e} (relative)"
    for i, arrays in enumerate(finals):
        gap = np.sqrt(sum(np.sum((arrays[k] - target[k]) ** 2) for k in target)) / norm
        assert gap < 1e-3, f"node {i} is {gap:.2e} (relative) from the weighted mean"


@pytest.mark.timeout(300)
def test_digits_swarm_beats_local_only_training(tmp_path):
    cmd = [sys.executable, "-m", "node", "testnet", "--nodes", "4", "--task", "digits", "--alpha", "0.3"]
    cmd += ["--rounds", "400", "--local-steps", "2", "--lr", "0.1", "--baseline", "--json", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    nodes = result["nodes"]
    assert len(nodes) == 4 and all(n["exchanges_ok"] > 0 for n in nodes)
    for n in nodes:
        assert n["accuracy"] >= 0.93, nodes
        assert n["accuracy"] >= n["local_only_accuracy"], nodes
    swarm_mean = np.mean([n["accuracy"] for n in nodes])
    alone_mean = np.mean([n["local_only_accuracy"] for n in nodes])
    assert swarm_mean >= alone_mean + 0.10, (swarm_mean, alone_mean)
    assert 0.9 <= result["centralized_accuracy"] <= 1.0
    assert result["wall_s"] > 0


@pytest.mark.timeout(180)
def test_a_node_killed_mid_exchanges_does_not_stall_the_others(start_node):
    a = start_node("a", "--min-peers", "3", *FAST)
    others = [start_node(name, "--min-peers", "3", "--join", a.addrs[0], *FAST) for name in ("b", "c", "d")]
    nodes = [a, *others]
    for node in nodes:
        wait_until(lambda n=node: exchanges_ok(n) >= 5, timeout_s=60, what=f"{node.data_dir.name} to exchange")
    victim, survivors = others[0], [a, others[1], others[2]]
    victim.kill_hard()
    before = {n.data_dir.name: exchanges_ok(n) for n in survivors}
    for node in survivors:
        wait_until(
            lambda n=node: exchanges_ok(n) >= before[n.data_dir.name] + 10,
            timeout_s=60,
            what=f"{node.data_dir.name} to keep exchanging after the kill",
        )


@pytest.mark.timeout(120)
def test_a_restarted_node_resumes_from_its_checkpoint(start_node, tmp_path):
    node = start_node("a", *FAST)
    wait_until(lambda: node.status()["round"] >= 5, timeout_s=60, what="a few rounds of training")
    assert node.terminate() == 0
    saved_arrays, saved = load_checkpoint(tmp_path / "a" / "checkpoint")
    assert saved["round"] >= 5

    # Restart with the same data dir and exactly as many rounds as it already has: nothing left to train.
    again = start_node("a", "--rounds", str(saved["round"]), *FAST)
    status = wait_until(lambda: (s := again.status()) and s["done"] and s, timeout_s=60, what="the restart")
    assert status["started_from"] == "checkpoint"
    assert status["round"] == saved["round"]
    assert status["weight"] == saved["weight"]
    assert status["start_test"]["accuracy"] == pytest.approx(saved["test"]["accuracy"], abs=1e-9)
    assert again.terminate() == 0
    arrays, meta = load_checkpoint(tmp_path / "a" / "checkpoint")
    assert meta["round"] == saved["round"]
    assert all(np.array_equal(arrays[k], saved_arrays[k]) for k in saved_arrays)


@pytest.mark.timeout(180)
def test_a_late_joiner_starts_from_a_peers_model(start_node):
    a = start_node("a", "--min-peers", "1", *FAST)
    b = start_node("b", "--min-peers", "1", "--join", a.addrs[0], *FAST)
    for node in (a, b):
        wait_until(lambda n=node: n.status()["round"] >= 20, timeout_s=90, what=f"{node.data_dir.name} to train")
    late = start_node("late", "--join", a.addrs[0], *FAST)
    status = wait_until(
        lambda: (s := late.status())["started_from"].startswith("peer") and s, timeout_s=60, what="a copied start"
    )
    assert status["started_from"] in {f"peer {a.peer_id}", f"peer {b.peer_id}"}
    assert status["round"] >= 20
    fresh = digits_trainer().evaluate("test")["accuracy"]
    assert status["start_test"]["accuracy"] >= max(0.5, fresh + 0.3), (status["start_test"], fresh)


class LatePeer:
    """A peer model for one exchange with a finished node: fixed arrays, a round ahead of anyone's."""

    def __init__(self, arrays: dict[str, np.ndarray], weight: float, fingerprint_: str):
        self.arrays, self.weight, self.specs, self.fingerprint = arrays, weight, specs_of(arrays), fingerprint_

    def snapshot(self) -> Snapshot:
        return Snapshot(self.arrays, self.weight, 10**6)

    def apply(self, before: Snapshot, mixed: dict, weight: float) -> None:
        pass


@pytest.mark.timeout(120)
def test_a_finished_node_rescores_and_saves_a_late_exchange(start_node, tmp_path):
    """A peer that finishes a moment later may still exchange with a finished node: the node's status and
    checkpoint must then describe the mix it holds, not the model it finished with."""
    node = start_node("a", "--rounds", "20", *FAST)
    wait_until(lambda: (s := node.status())["done"] and s["scores_current"], timeout_s=60, what="the node to finish")
    finished, meta = load_checkpoint(tmp_path / "a" / "checkpoint")
    late = LatePeer(digits_arrays(), 1.0, node.status()["model_fingerprint"])  # the untrained model: a big change
    expected = pairwise_mean([(finished, meta["weight"]), (late.arrays, late.weight)])

    async def exchange_once(identity_path):
        identity, _ = load_or_create_identity(identity_path)
        host = await Host.start(identity, HostOptions())
        try:
            exchange = GossipExchange(host, late, mix=pairwise_mean, timeout_s=10)
            await exchange.start()
            return await exchange.exchange(node.peer_id, node.addrs)
        finally:
            await host.close()

    assert asyncio.run(exchange_once(tmp_path / "late-identity")) is Outcome.OK

    def saved_mix() -> bool:
        arrays, _ = load_checkpoint(tmp_path / "a" / "checkpoint")
        return all(np.allclose(arrays[k], expected[k], atol=1e-5) for k in expected)

    wait_until(saved_mix, timeout_s=30, what="the checkpoint to hold the mix")
    status = wait_until(lambda: (s := node.status())["scores_current"] and s, timeout_s=30, what="a rescore")
    trainer = digits_trainer()
    trainer.load_arrays(expected)
    assert status["test"]["accuracy"] == pytest.approx(trainer.evaluate("test")["accuracy"], abs=1e-9)
    assert status["test"]["accuracy"] != pytest.approx(meta["test"]["accuracy"], abs=1e-9)  # it did change
