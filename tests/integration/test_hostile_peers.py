"""A peer that sends garbage is rejected, logged and counted; the node keeps exchanging with honest peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from p2p.errors import ProtocolViolation
from p2p.exchange import GOSSIP_PROTOCOL
from p2p.host import Host, HostOptions
from p2p.identity import load_or_create_identity
from p2p.wire import PROTOCOL_VERSION, decode_header, encode_header, read_header, specs_of
from tests.integration.test_gossip_training import FAST, digits_arrays, exchanges_ok
from tests.nodeproc import children_of
from tests.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def offer(fingerprint: str, arrays: dict[str, np.ndarray], **overrides) -> bytes:
    fields = dict(fingerprint=fingerprint, weight=1.0, round=0, tensors=[s.as_wire() for s in specs_of(arrays)])
    fields.update(overrides)
    return encode_header("offer", **fields)


async def send_raw(host: Host, peer_id: str, addrs: list[str], header: bytes, rest: bytes) -> bool:
    """Open a gossip stream, write `header`; if it is a well-formed offer, wait for the node's answer
    (as an honest caller would) and send `rest` only after "accept". Then hang up.

    Returns False if the node answered "busy" (it was averaging with someone else: try again).
    """
    reader, writer = await host.open_stream(peer_id, GOSSIP_PROTOCOL, addrs)
    try:
        writer.write(header)
        await writer.drain()
        async with asyncio.timeout(15):
            if header_is_offer(header):
                reply = await read_header(reader)
                if reply["type"] == "busy":
                    return False
                if reply["type"] == "reject":
                    return True  # refused on the header alone
                assert reply["type"] == "accept", reply
            writer.write(rest)
            await writer.drain()
            writer.write_eof()
            await reader.read()  # until the node closes its side: it has finished judging us
        return True
    except ConnectionError:
        return True  # hung up on: a banned (rate-limited) offender gets no answer at all
    finally:
        writer.close()


def header_is_offer(header: bytes) -> bool:
    try:
        return decode_header(header[4:])["type"] == "offer"
    except ProtocolViolation:
        return False


def wrong_version(fingerprint: str, arrays: dict[str, np.ndarray]) -> bytes:
    blob = msgpack.packb({"v": PROTOCOL_VERSION + 98, "type": "offer", "fingerprint": fingerprint})
    return len(blob).to_bytes(4, "big") + blob


def test_hostile_frames_are_rejected_and_honest_exchanges_go_on(start_node, tmp_path):
    victim = start_node("victim", "--min-peers", "1", *FAST)
    honest = start_node("honest", "--min-peers", "1", "--join", victim.addrs[0], *FAST)
    wait_until(lambda: exchanges_ok(victim) >= 3, timeout_s=60, what="honest exchanges to start")
    fingerprint = victim.status()["model_fingerprint"]
    arrays = digits_arrays()
    nan_arrays = {k: v.copy() for k, v in arrays.items()}
    next(iter(nan_arrays.values())).flat[0] = np.nan
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    nan_body = b"".join(np.ascontiguousarray(a).tobytes() for a in nan_arrays.values())

    attacks = {
        "wrong fingerprint": (offer("0123456789abcdef", arrays), body),
        "truncated frame": (offer(fingerprint, arrays), body[: len(body) // 2]),
        "oversized length header": (b"\xff\xff\xff\xf0", os.urandom(64)),
        "NaN values": (offer(fingerprint, arrays), nan_body),
        "garbage bytes": (b"\x00\x00\x00\x20" + os.urandom(32), b""),
        "wrong protocol version": (wrong_version(fingerprint, arrays), b""),
        "wrong shapes": (offer(fingerprint, arrays, tensors=[[k, "float32", [3, 3]] for k in arrays]), body),
    }

    async def attack_all() -> None:
        identity, _ = load_or_create_identity(tmp_path / "attacker-identity")
        attacker = await Host.start(identity, HostOptions())
        try:
            for name, (header, rest) in attacks.items():
                before = victim.status()["exchanges"]["rejected"]
                deadline = time.monotonic() + 30  # the victim is busy averaging with the honest peer most of the time
                while not await send_raw(attacker, victim.peer_id, victim.addrs, header, rest):
                    assert time.monotonic() < deadline, f"the victim stayed busy for 30 s: {name}"
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(
                    wait_until,
                    lambda b=before: victim.status()["exchanges"]["rejected"] >= b + 1,
                    timeout_s=15,
                    what=f"the victim to reject: {name}",
                )
                assert victim.proc.poll() is None, f"the victim died of: {name}"
        finally:
            await attacker.close()

    async def banned_after_the_attacks() -> bool:
        identity, _ = load_or_create_identity(tmp_path / "attacker-identity")
        attacker = await Host.start(identity, HostOptions())
        try:
            reader, writer = await attacker.open_stream(victim.peer_id, GOSSIP_PROTOCOL, victim.addrs)
            try:
                writer.write(offer(fingerprint, arrays))  # even a well-formed offer now gets no answer
                await writer.drain()
                await read_header(reader, idle_timeout_s=10)
            except ConnectionError:
                return True
            return False
        finally:
            await attacker.close()

    asyncio.run(attack_all())
    assert asyncio.run(banned_after_the_attacks()), "a repeat offender should be refused outright"
    assert victim.status()["exchanges"]["rejected"] >= len(attacks)
    ok_after_attacks = exchanges_ok(victim)
    wait_until(
        lambda: exchanges_ok(victim) >= ok_after_attacks + 5,
        timeout_s=60,
        what="the victim to keep exchanging with the honest peer",
    )
    assert exchanges_ok(honest) > 0


def test_the_validation_gate_refuses_a_poisoned_model(start_node, tmp_path):
    from p2p.exchange import GossipExchange, Outcome, Snapshot
    from training.aggregate import pairwise_mean

    victim = start_node("victim", "--gate-factor", "3", *FAST)
    wait_until(lambda: victim.status()["round"] >= 50, timeout_s=60, what="the victim to train")
    honest = digits_arrays()
    poisoned = {k: (-10.0 * v).astype(v.dtype) for k, v in honest.items()}  # sign-flipped, scaled x10

    class Poisoner:
        specs, fingerprint = specs_of(poisoned), victim.status()["model_fingerprint"]

        def snapshot(self) -> Snapshot:
            return Snapshot(poisoned, 1.0, 0)

        def apply(self, before, mixed, weight) -> None:
            raise AssertionError("the victim must never commit to this exchange")

    async def poison() -> list[Outcome]:
        identity, _ = load_or_create_identity(tmp_path / "poisoner-identity")
        host = await Host.start(identity, HostOptions())
        try:
            exchange = GossipExchange(host, Poisoner(), mix=pairwise_mean, timeout_s=10)
            return [await exchange.exchange(victim.peer_id, victim.addrs) for _ in range(2)]
        finally:
            await host.close()

    accuracy_before = victim.status()["test"]["accuracy"]
    outcomes = asyncio.run(poison())
    assert all(o is Outcome.FAILED for o in outcomes), outcomes  # "peer refused our model"
    assert victim.status()["exchanges"]["rejected"] >= 2
    assert victim.status()["test"]["accuracy"] >= accuracy_before - 0.05  # nothing of the poison got in


def rss_mib(pid: int) -> float:
    """Resident memory of a node: its own process and its p2pd child."""
    total = 0
    for p in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


async def stall_in_header(host: Host, victim, streams: int, hold_s: float) -> None:
    """Slowloris on the handshake: many streams, each with 2 of the 4 length bytes, then silence."""

    async def one() -> None:
        with contextlib.suppress(Exception):
            _, writer = await host.open_stream(victim.peer_id, GOSSIP_PROTOCOL, victim.addrs)
            writer.write(b"\x00\x00")
            await writer.drain()
            await asyncio.sleep(hold_s)
            writer.close()

    await asyncio.gather(*(one() for _ in range(streams)))


async def stall_in_body(host: Host, victim, offer_frame: bytes, body: bytes, give_up_s: float = 90) -> int:
    """Slowloris on the exchange slot: a valid offer, half the model after "accept", then silence
    until the victim gives up; again and again until the victim stops answering us at all.
    Returns how many times the victim accepted (and so held its one exchange slot for us)."""
    accepted, deadline = 0, time.monotonic() + give_up_s
    while time.monotonic() < deadline:  # most offers meet "busy": the victim averages with its honest peer
        reader, writer = await host.open_stream(victim.peer_id, GOSSIP_PROTOCOL, victim.addrs)
        try:
            try:
                writer.write(offer_frame)
                await writer.drain()
                async with asyncio.timeout(10):
                    reply = await read_header(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                return accepted  # hung up on before any answer: we are refused outright
            if reply["type"] == "accept":
                accepted += 1
                with contextlib.suppress(ConnectionError):
                    writer.write(body[: len(body) // 2])
                    await writer.drain()
                    async with asyncio.timeout(10):
                        await reader.read()  # hold the stream until the victim hangs up on us
        finally:
            writer.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"still answered after {give_up_s:.0f} s of stalled exchanges ({accepted} accepted)")


async def flood(host: Host, victim, offer_frame: bytes, streams: int) -> None:
    """A flood of exchange requests, all at once."""

    async def one() -> None:
        with contextlib.suppress(Exception):
            reader, writer = await host.open_stream(victim.peer_id, GOSSIP_PROTOCOL, victim.addrs)
            writer.write(offer_frame)
            await writer.drain()
            async with asyncio.timeout(10):
                await reader.read()
            writer.close()

    await asyncio.gather(*(one() for _ in range(streams)))


async def is_refused_outright(host: Host, victim, offer_frame: bytes) -> bool:
    """True if a well-formed offer gets no answer at all: the victim rate-limits this peer ID."""
    reader, writer = await host.open_stream(victim.peer_id, GOSSIP_PROTOCOL, victim.addrs)
    try:
        writer.write(offer_frame)
        await writer.drain()
        await read_header(reader, idle_timeout_s=10)
    except (ConnectionError, ProtocolViolation, asyncio.IncompleteReadError):
        return True
    finally:
        writer.close()
    return False


def test_slowloris_and_floods_leave_the_node_responsive_with_bounded_memory(start_node, tmp_path):
    victim = start_node("victim", "--min-peers", "1", *FAST)
    start_node("honest", "--min-peers", "1", "--join", victim.addrs[0], *FAST)
    wait_until(lambda: exchanges_ok(victim) >= 3, timeout_s=60, what="honest exchanges to start")
    fingerprint = victim.status()["model_fingerprint"]
    arrays = digits_arrays()
    offer_frame = offer(fingerprint, arrays)
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    rss_before = rss_mib(victim.proc.pid)
    peak = [rss_before]
    ok_before = exchanges_ok(victim)

    async def attack() -> dict:
        hosts = []
        for name in ("header-staller", "body-staller", "flooder"):
            identity, _ = load_or_create_identity(tmp_path / f"{name}-identity")
            hosts.append(await Host.start(identity, HostOptions()))

        async def sample_memory() -> None:
            while True:
                peak.append(await asyncio.to_thread(rss_mib, victim.proc.pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_memory())
        try:
            header_staller, body_staller, flooder = hosts
            _, accepted, _ = await asyncio.gather(
                stall_in_header(header_staller, victim, streams=100, hold_s=8),
                stall_in_body(body_staller, victim, offer_frame, body),
                flood(flooder, victim, offer_frame, streams=300),
            )
            refused = [await is_refused_outright(h, victim, offer_frame) for h in hosts]
            return {"accepted": accepted, "refused": refused}
        finally:
            sampler.cancel()
            for host in hosts:
                await host.close()

    outcome = asyncio.run(attack())
    assert victim.proc.poll() is None, victim.log()
    # Every offender ends up refused outright (rate-limited by its authenticated peer ID).
    assert outcome["refused"] == [True, True, True], outcome
    # The body staller held the exchange slot at most 3 times (3 strikes) before it was shut out.
    assert outcome["accepted"] <= 3, outcome
    growth = max(peak) - rss_before
    # Design bound: MAX_INBOUND_STREAMS (64) streams, each holding at most a 1 MiB header.
    assert growth < 64, f"memory grew by {growth:.0f} MiB under attack ({rss_before:.0f} MiB before)"
    wait_until(
        lambda: exchanges_ok(victim) >= ok_before + 10,
        timeout_s=60,
        what="the victim to keep exchanging with the honest peer",
    )
