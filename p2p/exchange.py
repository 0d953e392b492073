"""Weighted pairwise gossip over one libp2p stream.

Caller i and callee j swap (x, w) and both set x = (w_i x_i + w_j x_j) / (w_i + w_j) and
w = (w_i + w_j) / 2, so the weighted sum and the total weight of the swarm are conserved.

    caller                                   callee
    offer header                    ----->   checks version, fingerprint, specs, busy
                                    <-----   accept header (or busy / reject), then its tensors
    its tensors (sent while reading) ---->
                                    <-----   ready (the caller's tensors were valid) | reject
    commit (after checking the callee's) ->  applies
    applies                         <-----   done

The exchange applies on both sides or on neither: nothing is applied before the caller has seen
the callee's "ready" and the callee has seen "commit". The one window left is a commit lost on a
connection that dies right after the caller wrote it; the caller then has applied and the callee
has not, which only costs the swarm a little of the conserved sum.

Local training may go on during an exchange: each side mixes the snapshot it sent and applies the
difference (mixed - snapshot) on top of whatever its trainer did meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from p2p.errors import ModelRefused, PeerUnavailable, ProtocolViolation
from p2p.host import Host
from p2p.penalty import BAN_S, PenaltyBox
from p2p.wire import (
    TensorSpec,
    check_specs,
    encode_header,
    expect_round,
    expect_weight,
    parse_specs,
    read_header,
    read_tensors,
    show,
    write_frame,
    write_tensors,
)

log = logging.getLogger("fedswarm.exchange")

GOSSIP_PROTOCOL = "/fedswarm/gossip/1"
# Inbound streams one peer may hold open at once: an honest peer needs one (an exchange or a pull),
# a second covers a retry racing a stream that is closing. More is a flood: refused, and a strike.
MAX_STREAMS_PER_PEER = 2
# All peers together: each open stream may hold up to a header (1 MiB) while it is read.
MAX_INBOUND_STREAMS = 64
MAX_CONCURRENT_PULLS = 4  # each pull served holds a copy of our model
Arrays = dict[str, np.ndarray]
Mix = Callable[[Sequence[tuple[Mapping[str, np.ndarray], float]]], Arrays]


@dataclass(frozen=True)
class Snapshot:
    arrays: Arrays
    weight: float
    round: int


class ModelState(Protocol):
    """What the exchange needs from the node's model. Both methods run in a worker thread."""

    fingerprint: str
    specs: list[TensorSpec]

    def snapshot(self) -> Snapshot: ...

    def apply(self, before: Snapshot, mixed: Arrays, weight: float) -> None: ...


class Outcome(enum.Enum):
    OK = "ok"
    BUSY = "busy"  # the peer is in another exchange: try someone else
    FAILED = "failed"  # unreachable, timed out, refused, or the stream broke
    REJECTED = "rejected"  # the peer sent something we refuse to apply


@dataclass
class ExchangeRecord:
    """One finished exchange, for metrics and the report."""

    peer_id: str
    role: str  # "caller" | "callee"
    outcome: Outcome
    duration_s: float
    bytes_sent: int
    reason: str = ""


@dataclass
class ExchangeStats:
    outcomes: Counter = field(default_factory=Counter)  # Outcome.value -> count, both roles
    rejected_by_peer: Counter = field(default_factory=Counter)
    last_ok_at: dict[str, float] = field(default_factory=dict)  # peer -> time.monotonic()

    def as_json(self) -> dict[str, int]:
        return {o.value: self.outcomes[o.value] for o in Outcome}


class GossipExchange:
    """Serves and initiates exchanges for one node; at most one exchange at a time."""

    def __init__(
        self,
        host: Host,
        state: ModelState,
        *,
        mix: Mix,
        timeout_s: float,
        handshake_timeout_s: float = 5.0,
        on_record: Callable[[ExchangeRecord], None] = lambda record: None,
        allowed: Callable[[str], bool] = lambda peer_id: True,
        vet: Callable[[Arrays], str | None] = lambda arrays: None,
        offer_refusal: Callable[[int], str] = lambda their_round: "",
    ):
        self._host = host
        self._state = state
        self._mix = mix
        self._timeout_s = timeout_s  # the whole exchange, transfer included (big models need long)
        # Reaching the peer and hearing accept/busy/reject: short, so that a silent peer (a cut link
        # sends no reset) costs seconds, not the whole exchange deadline, while we hold our one lock.
        # The same bound applies to every later wait for the next bytes (idle time, not total time).
        self._handshake_s = min(handshake_timeout_s, timeout_s)
        self._on_record = on_record
        self._allowed = allowed  # a permissioned swarm's member check, by authenticated peer ID
        self._penalty = PenaltyBox()  # peers that keep sending garbage are refused for a while
        # The validation gate: a reason to refuse a well-formed but bad model (runs in a worker thread).
        self._vet = vet
        # Why this node refuses a pairwise offer from a peer at round r ("" = it accepts): a node that
        # aggregates robustly only pulls (an offer would mix a peer in at full weight), a finished
        # node keeps its final model from peers still training. The answer may change as it runs.
        self._offer_refusal = offer_refusal
        self._lock = asyncio.Lock()  # one exchange at a time, as caller or callee
        self._open_streams: Counter = Counter()  # peer -> inbound streams being served now
        self._pulls = asyncio.Semaphore(MAX_CONCURRENT_PULLS)
        self.stats = ExchangeStats()

    async def start(self) -> None:
        await self._host.serve_streams(GOSSIP_PROTOCOL, self._serve)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def _offer_header(self, kind: str, snap: Snapshot) -> bytes:
        return encode_header(
            kind,
            fingerprint=self._state.fingerprint,
            weight=snap.weight,
            round=snap.round,
            tensors=[s.as_wire() for s in self._state.specs],
        )

    def _check_model_header(self, header: Mapping) -> tuple[float, int]:
        if header.get("fingerprint") != self._state.fingerprint:
            raise ProtocolViolation(
                f"model fingerprint {show(header.get('fingerprint'))} differs from ours {self._state.fingerprint!r}"
            )
        check_specs(parse_specs(header.get("tensors")), self._state.specs)
        return expect_weight(header), expect_round(header)

    def _record(
        self, peer_id: str, role: str, outcome: Outcome, started: float, sent: int, reason="", strike=True
    ) -> Outcome:
        self.stats.outcomes[outcome.value] += 1
        if outcome is Outcome.OK:
            self.stats.last_ok_at[peer_id] = time.monotonic()
        elif outcome is Outcome.REJECTED:
            self.stats.rejected_by_peer[peer_id] += 1
            if role == "callee" and strike and self._penalty.strike(peer_id):
                log.warning("rejected %s exchange with %s: %s; refusing it for %.0f s", role, peer_id, reason, BAN_S)
            elif not self._penalty.banned(peer_id):
                log.warning("rejected %s exchange with %s: %s", role, peer_id, reason)
        elif outcome is Outcome.FAILED:
            log.info("%s exchange with %s failed: %s", role, peer_id, reason)
        self._on_record(ExchangeRecord(peer_id, role, outcome, time.monotonic() - started, sent, reason))
        return outcome

    async def _vetted(self, arrays: Arrays) -> None:
        reason = await asyncio.to_thread(self._vet, arrays)
        if reason is not None:
            raise ModelRefused(f"validation gate: {reason}")

    # --- caller side ------------------------------------------------------------------------------

    async def exchange(self, peer_id: str, addrs: Sequence[str] = ()) -> Outcome:
        """Average with `peer_id`. Never raises for a peer's fault: the outcome says what happened."""
        started = time.monotonic()
        async with self._lock:
            before = await asyncio.to_thread(self._state.snapshot)
            sent = sum(a.nbytes for a in before.arrays.values())
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with asyncio.timeout(self._handshake_s):
                        reader, writer = await self._host.open_stream(peer_id, GOSSIP_PROTOCOL, addrs)
                    try:
                        outcome, reason = await self._call(reader, writer, before)
                    finally:
                        writer.close()
            except ProtocolViolation as e:
                return self._record(peer_id, "caller", Outcome.REJECTED, started, sent, str(e))
            except (TimeoutError, PeerUnavailable, ConnectionError, asyncio.IncompleteReadError) as e:
                return self._record(peer_id, "caller", Outcome.FAILED, started, sent, str(e) or type(e).__name__)
            return self._record(peer_id, "caller", outcome, started, sent, reason)

    async def _call(self, reader, writer, before: Snapshot) -> tuple[Outcome, str]:
        # The body goes out only after "accept": a busy or refusing peer never has megabytes in flight
        # that it would have to drain (or reset the stream over) before it can answer.
        await write_frame(writer, self._offer_header("offer", before))
        async with asyncio.timeout(self._handshake_s):
            reply = await read_header(reader, idle_timeout_s=self._handshake_s)
        if reply["type"] == "busy":
            return Outcome.BUSY, ""
        if reply["type"] == "reject":
            return Outcome.FAILED, f"peer refused: {show(reply.get('reason'))}"
        if reply["type"] != "accept":
            raise ProtocolViolation(f"expected accept, got {reply['type']!r}")
        weight, _ = self._check_model_header(reply)
        async with _sending(writer, before.arrays, self._handshake_s) as send:
            try:
                theirs = await read_tensors(reader, self._state.specs, self._handshake_s)
                await self._vetted(theirs)
            except ProtocolViolation as e:
                await _try_send(writer, encode_header("abort", reason=str(e)))
                raise
            await send
        verdict = await read_header(reader, idle_timeout_s=self._handshake_s)
        if verdict["type"] != "ready":
            return Outcome.FAILED, f"peer refused our model: {show(verdict.get('reason'))}"
        mixed = await asyncio.to_thread(self._mix, [(before.arrays, before.weight), (theirs, weight)])
        await write_frame(writer, encode_header("commit"))
        await asyncio.to_thread(self._state.apply, before, mixed, (before.weight + weight) / 2)
        # Wait for the callee to finish applying too, so that "ok" means both sides hold the mix (and the
        # callee is free again). Its absence changes nothing: we committed, and so will it.
        with contextlib.suppress(ProtocolViolation, ConnectionError):
            await read_header(reader, idle_timeout_s=self._handshake_s)
        return Outcome.OK, ""

    # --- callee side ------------------------------------------------------------------------------

    async def _serve(self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        if self._penalty.banned(peer_id):
            self.stats.outcomes[Outcome.REJECTED.value] += 1
            self.stats.rejected_by_peer[peer_id] += 1
            return  # no answer, no log line: it was told once when the ban started
        if self._open_streams[peer_id] >= MAX_STREAMS_PER_PEER:
            self._record(peer_id, "callee", Outcome.REJECTED, started, 0, "too many streams at once (a flood)")
            return
        if self._open_streams.total() >= MAX_INBOUND_STREAMS:
            return  # swamped by many peers: hang up without reading; honest callers try someone else
        self._open_streams[peer_id] += 1
        try:
            await self._serve_stream(peer_id, reader, writer, started)
        finally:
            self._open_streams[peer_id] -= 1
            if not self._open_streams[peer_id]:
                del self._open_streams[peer_id]  # bounded: only peers with a stream open right now

    async def _serve_stream(
        self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, started: float
    ) -> None:
        sent = 0
        if not self._allowed(peer_id):
            # Refused before a byte of the payload is read: libp2p authenticated this peer ID.
            await _try_send(writer, encode_header("reject", reason="not a member of this swarm"))
            self._record(peer_id, "callee", Outcome.REJECTED, started, 0, "not a member of this swarm")
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                async with asyncio.timeout(self._handshake_s):
                    request = await read_header(reader, idle_timeout_s=self._handshake_s)
                if request["type"] == "pull":
                    await self._serve_pull(request, writer)
                    return
                if request["type"] != "offer":
                    raise ProtocolViolation(f"unexpected request {show(request['type'])}")
                weight, their_round = self._check_model_header(request)
                if refusal := self._offer_refusal(their_round):
                    await write_frame(writer, encode_header("reject", reason=refusal))
                    return
                if self._lock.locked():
                    await write_frame(writer, encode_header("busy"))
                    return
                async with self._lock:
                    outcome, sent, reason = await self._accept(reader, writer, weight)
        except ProtocolViolation as e:
            await _try_send(writer, encode_header("reject", reason=str(e)))
            self._record(
                peer_id, "callee", Outcome.REJECTED, started, sent, str(e), strike=not isinstance(e, ModelRefused)
            )
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            self._record(peer_id, "callee", Outcome.FAILED, started, sent, str(e) or type(e).__name__)
        else:  # skipped by the early returns (pull served, busy answered), which are not exchanges
            self._record(peer_id, "callee", outcome, started, sent, reason)

    async def _accept(self, reader, writer, their_weight: float) -> tuple[Outcome, int, str]:
        before = await asyncio.to_thread(self._state.snapshot)
        sent = sum(a.nbytes for a in before.arrays.values())
        await write_frame(writer, self._offer_header("accept", before))
        async with _sending(writer, before.arrays, self._handshake_s) as send:
            # a NaN (or a model the gate refuses) here -> reject, nothing applied
            try:
                theirs = await read_tensors(reader, self._state.specs, self._handshake_s)
            except TimeoutError:
                # We hold our one exchange slot for this peer: stalling here (slowloris) starves the
                # swarm, so it is an offence, unlike a silent handshake, which holds nothing.
                raise ProtocolViolation(f"stalled inside its model body for {self._handshake_s:g} s") from None
            await self._vetted(theirs)
            await send
        await write_frame(writer, encode_header("ready"))
        mixed = await asyncio.to_thread(self._mix, [(before.arrays, before.weight), (theirs, their_weight)])
        final = await read_header(reader, idle_timeout_s=self._handshake_s)
        if final["type"] != "commit":
            return Outcome.FAILED, sent, f"caller aborted: {show(final.get('reason'))}"
        await asyncio.to_thread(self._state.apply, before, mixed, (before.weight + their_weight) / 2)
        await _try_send(writer, encode_header("done"))
        return Outcome.OK, sent, ""

    async def _serve_pull(self, request: Mapping, writer: asyncio.StreamWriter) -> None:
        if request.get("fingerprint") != self._state.fingerprint:
            raise ProtocolViolation(f"pull for another model ({show(request.get('fingerprint'))})")
        if self._pulls.locked():
            await write_frame(writer, encode_header("busy"))
            return
        async with self._pulls:
            snap = await asyncio.to_thread(self._state.snapshot)
            await write_frame(writer, self._offer_header("model", snap))
            await write_tensors(writer, snap.arrays, self._handshake_s)

    # --- late joiners -----------------------------------------------------------------------------

    async def pull(self, peer_id: str, addrs: Sequence[str] = ()) -> Snapshot | None:
        """Fetch a peer's current model without mixing (a newcomer starts from it). None on failure."""
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await self._host.open_stream(peer_id, GOSSIP_PROTOCOL, addrs)
                try:
                    await write_frame(writer, encode_header("pull", fingerprint=self._state.fingerprint))
                    header = await read_header(reader, idle_timeout_s=self._handshake_s)
                    if header["type"] == "busy":
                        log.info("%s is serving other pulls; not pulling from it now", peer_id)
                        return None
                    if header["type"] != "model":
                        raise ProtocolViolation(f"expected model, got {header['type']!r}: {show(header.get('reason'))}")
                    weight, round_ = self._check_model_header(header)
                    arrays = await read_tensors(reader, self._state.specs, self._handshake_s)
                finally:
                    writer.close()
        except ProtocolViolation as e:
            self.stats.rejected_by_peer[peer_id] += 1
            log.warning("rejected the model pulled from %s: %s", peer_id, e)
            return None
        except (TimeoutError, PeerUnavailable, ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("pulling the model from %s failed: %s", peer_id, e or type(e).__name__)
            return None
        return Snapshot(arrays, weight, round_)


@contextlib.asynccontextmanager
async def _sending(writer: asyncio.StreamWriter, arrays: Mapping[str, np.ndarray], idle_timeout_s: float):
    """Send our tensors in the background while the body reads the peer's: both directions at once.

    Yields the send task; if the body leaves early (busy, refusal, error) the send is cancelled.
    """
    task = asyncio.create_task(write_tensors(writer, arrays, idle_timeout_s))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await task


async def _try_send(writer: asyncio.StreamWriter, frame: bytes) -> None:
    """Best effort: tell the peer why, but a broken stream is no reason to fail harder."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
        async with asyncio.timeout(1.0):
            await write_frame(writer, frame)
