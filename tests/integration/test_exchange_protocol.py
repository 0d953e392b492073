"""The pairwise exchange on real libp2p hosts in one process: applies on both sides or on neither."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from p2p.exchange import GOSSIP_PROTOCOL, GossipExchange, Outcome, Snapshot
from p2p.host import Host, HostOptions
from p2p.identity import load_or_create_identity
from p2p.wire import read_header, read_tensors, specs_of, write_frame, write_tensors
from training.aggregate import pairwise_mean

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class StaticModel:
    """A model that only changes through exchanges, so every change is the exchange's doing."""

    def __init__(self, seed: int, weight: float):
        rng = np.random.default_rng(seed)
        self.arrays = {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": rng.normal(size=32).astype(np.float32)}
        self.weight, self.specs, self.fingerprint = weight, specs_of(self.arrays), "static-model"

    def snapshot(self) -> Snapshot:
        return Snapshot({k: v.copy() for k, v in self.arrays.items()}, self.weight, 0)

    def apply(self, before: Snapshot, mixed: dict, weight: float) -> None:
        for k in self.arrays:
            self.arrays[k] += mixed[k] - before.arrays[k]
        self.weight = weight

    def copy(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.arrays.items()}


async def two_nodes(tmp_path):
    hosts, models, exchanges = [], [], []
    for i, weight in enumerate((1.0, 3.0)):
        identity, _ = load_or_create_identity(tmp_path / f"id{i}")
        host = await Host.start(identity, HostOptions())
        model = StaticModel(i, weight)
        exchange = GossipExchange(host, model, mix=pairwise_mean, timeout_s=5.0)
        await exchange.start()
        hosts.append(host)
        models.append(model)
        exchanges.append(exchange)
    return hosts, models, exchanges


def run(tmp_path, scenario):
    async def main():
        hosts, models, exchanges = await two_nodes(tmp_path)
        try:
            await scenario(hosts, models, exchanges)
        finally:
            for host in hosts:
                await host.close()

    asyncio.run(main())


def test_an_exchange_leaves_both_sides_on_the_weighted_mean(tmp_path):
    async def scenario(hosts, models, exchanges):
        a, b = models
        expected = {k: (1.0 * a.arrays[k] + 3.0 * b.arrays[k]) / 4.0 for k in a.arrays}
        addrs = await hosts[1].visible_addrs()
        assert await exchanges[0].exchange(hosts[1].peer_id, addrs) is Outcome.OK
        for model in models:
            assert model.weight == 2.0
            for k in expected:
                np.testing.assert_allclose(model.arrays[k], expected[k], rtol=1e-6, atol=1e-6)

    run(tmp_path, scenario)


def test_a_caller_that_vanishes_before_commit_leaves_the_callee_unchanged(tmp_path):
    async def scenario(hosts, models, exchanges):
        b_before, b_weight = models[1].copy(), models[1].weight
        snap = models[0].snapshot()
        reader, writer = await hosts[0].open_stream(hosts[1].peer_id, GOSSIP_PROTOCOL, await hosts[1].visible_addrs())
        header = exchanges[0]._offer_header("offer", snap)
        await write_frame(writer, header)
        assert (await read_header(reader))["type"] == "accept"
        await write_tensors(writer, snap.arrays)
        await read_tensors(reader, models[0].specs)
        assert (await read_header(reader))["type"] == "ready"
        writer.close()  # gone before "commit"
        async with asyncio.timeout(10):
            while exchanges[1].stats.outcomes["failed"] == 0:  # noqa: ASYNC110 (a counter, polled to a deadline)
                await asyncio.sleep(0.05)
        assert models[1].weight == b_weight
        assert all(np.array_equal(models[1].arrays[k], b_before[k]) for k in b_before)

    run(tmp_path, scenario)


def test_a_callee_sending_nan_leaves_the_caller_unchanged(tmp_path):
    async def scenario(hosts, models, exchanges):
        a_before = models[0].copy()

        async def poisoned(peer_id, reader, writer):  # replaces B's honest handler
            await read_header(reader)
            snap = models[1].snapshot()
            snap.arrays["w"][0, 0] = np.nan
            await write_frame(writer, exchanges[1]._offer_header("accept", snap))
            await write_tensors(writer, snap.arrays)
            await reader.read()

        await hosts[1].stop_serving(GOSSIP_PROTOCOL)
        await hosts[1].serve_streams(GOSSIP_PROTOCOL, poisoned)
        outcome = await exchanges[0].exchange(hosts[1].peer_id, await hosts[1].visible_addrs())
        assert outcome is Outcome.REJECTED
        assert models[0].weight == 1.0
        assert all(np.array_equal(models[0].arrays[k], a_before[k]) for k in a_before)

    run(tmp_path, scenario)


def test_a_busy_callee_answers_busy_and_nothing_changes(tmp_path):
    async def scenario(hosts, models, exchanges):
        before = [m.copy() for m in models]
        async with exchanges[1]._lock:  # B is in another exchange
            outcome = await exchanges[0].exchange(hosts[1].peer_id, await hosts[1].visible_addrs())
        assert outcome is Outcome.BUSY
        for model, saved in zip(models, before, strict=True):
            assert all(np.array_equal(model.arrays[k], saved[k]) for k in saved)

    run(tmp_path, scenario)


def test_another_model_is_refused_and_both_sides_record_why(tmp_path):
    async def scenario(hosts, models, exchanges):
        records = {0: [], 1: []}
        for i, exchange in enumerate(exchanges):
            exchange._on_record = records[i].append
        models[1].fingerprint = "another-model"  # B now runs a different architecture
        before = [m.copy() for m in models]
        outcome = await exchanges[0].exchange(hosts[1].peer_id, await hosts[1].visible_addrs())
        assert outcome is Outcome.FAILED
        async with asyncio.timeout(10):
            while not records[1]:  # noqa: ASYNC110 (the callee records just after answering)
                await asyncio.sleep(0.05)
        (caller,), (callee,) = records[0], records[1]
        assert "fingerprint" in caller.reason and "another-model" in caller.reason  # A knows why it was refused
        assert callee.outcome is Outcome.REJECTED and "fingerprint" in callee.reason  # and B why it refused
        for model, saved in zip(models, before, strict=True):
            assert all(np.array_equal(model.arrays[k], saved[k]) for k in saved)

    run(tmp_path, scenario)
