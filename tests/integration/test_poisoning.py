"""A poisoned peer in the swarm: the plain gossip mean takes its poison in, a robust rule does not."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from p2p.exchange import GossipExchange, Snapshot
from p2p.host import Host, HostOptions
from p2p.identity import load_or_create_identity
from p2p.membership import Membership
from p2p.wire import specs_of
from tests.integration.test_gossip_training import FAST, digits_arrays
from tests.polling import wait_until
from training.aggregate import pairwise_mean

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SWARM = "itest"  # the swarm name tests/nodeproc.py gives its nodes


class Poisoner:
    """Serves a sign-flipped, x10 model to every pull and exchange, and never changes it."""

    def __init__(self, fingerprint: str):
        self.arrays = {k: (-10.0 * v).astype(v.dtype) for k, v in digits_arrays().items()}
        self.specs, self.fingerprint = specs_of(self.arrays), fingerprint

    def snapshot(self) -> Snapshot:
        return Snapshot({k: v.copy() for k, v in self.arrays.items()}, 1.0, 1)

    def apply(self, before, mixed, weight) -> None:
        pass  # stays poisoned


def run_attacker(tmp_path, join_addr: str, fingerprint: str, stop: threading.Event) -> None:
    async def main() -> None:
        identity, _ = load_or_create_identity(tmp_path / "attacker-identity")
        host = await Host.start(identity, HostOptions())
        try:
            await GossipExchange(host, Poisoner(fingerprint), mix=pairwise_mean, timeout_s=10).start()
            await host.join([join_addr])
            membership = Membership(
                host,
                swarm=SWARM,
                addrs=await host.visible_addrs(),
                record_ttl_s=4,
                refresh_interval_s=1,
                poll_interval_s=1,
                info=lambda: {"round": 1, "fingerprint": fingerprint, "ready": True, "done": False},
            )
            done = asyncio.Event()
            runner = asyncio.create_task(membership.run(done))
            await asyncio.to_thread(stop.wait)
            done.set()
            await runner
        finally:
            await host.close()

    asyncio.run(main())


def swarm_accuracy(start_node, tmp_path, *defence: str) -> list[float]:
    common = ("--min-peers", "3", "--rounds", "120", "--alpha", "0.3", "--lr", "0.1", *defence, *FAST)
    a = start_node("a", "--partition", "0/3", *common)
    stop = threading.Event()
    attacker = threading.Thread(
        target=run_attacker, args=(tmp_path, a.addrs[0], a.status()["model_fingerprint"], stop), daemon=True
    )
    attacker.start()
    try:
        nodes = [a] + [
            start_node(n, "--join", a.addrs[0], "--partition", f"{i}/3", *common) for i, n in ((1, "b"), (2, "c"))
        ]
        for node in nodes:
            wait_until(lambda n=node: n.status()["done"], timeout_s=150, what=f"{node.data_dir.name} to finish")
        return [n.status()["test"]["accuracy"] for n in nodes]
    finally:
        stop.set()
        attacker.join(20)


def test_plain_mean_is_poisoned(start_node, tmp_path):
    accuracies = swarm_accuracy(start_node, tmp_path)
    assert np.mean(accuracies) < 0.5, accuracies  # the attack works on the undefended swarm


def test_median_keeps_the_honest_swarm_learning(start_node, tmp_path):
    accuracies = swarm_accuracy(start_node, tmp_path, "--robust", "median", "--robust-k", "3")
    assert min(accuracies) >= 0.85, accuracies
