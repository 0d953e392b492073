"""Swarm membership over the DHT.

Each node keeps one record under `<swarm>/members`, in a subkey only it can write (hivemind's RSA
record validator checks the signature), and refreshes it well before it expires. The record's
value names the node's peer ID; we accept it only if that ID is the one derived from the signing
key, so nobody can publish a record in another node's name. A record that lapses means its node
is gone: no separate failure detector is needed. On a clean shutdown a node overwrites its record
with a tombstone so the others drop it at their next poll instead of waiting for the expiry.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2p.aio import wait_stopped
from p2p.host import Host
from p2p.identity import peer_id_from_ssh_public_key

log = logging.getLogger("fedswarm.membership")

RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024  # a record is a few hundred bytes; anything bigger is not ours
MAX_ADDRS = 16
_OWNER_RE = re.compile(rb"^\[owner:(.+)\]$", re.DOTALL)
_ADD_NEIGHBOURS_AT_ONCE = 8


def members_key(swarm: str) -> str:
    return f"{swarm}/members"


@dataclass(frozen=True)
class MemberRecord:
    """What a node says about itself in the DHT."""

    peer_id: str
    addrs: tuple[str, ...]
    updated_at: float  # unix seconds, set by the owner at each refresh
    started_at: float
    left: bool = False  # tombstone written at a clean shutdown
    info: Mapping[str, Any] = field(default_factory=dict)  # round, samples, fingerprint, ... (later)


def encode_record(record: MemberRecord) -> bytes:
    return msgpack.packb(
        {
            "v": RECORD_VERSION,
            "peer_id": record.peer_id,
            "addrs": list(record.addrs),
            "updated_at": record.updated_at,
            "started_at": record.started_at,
            "left": record.left,
            "info": dict(record.info),
        },
        use_bin_type=True,
    )


class InvalidRecord(ValueError):
    pass


def decode_record(subkey: bytes, value: object) -> MemberRecord:
    """Check a record found in the DHT and return it. Raises InvalidRecord saying why not.

    The DHT has already verified the signature against the key in `subkey`; here we make sure the
    record speaks for that key's peer ID and is well-formed.
    """
    if not isinstance(subkey, bytes) or not (m := _OWNER_RE.match(subkey)):
        raise InvalidRecord("subkey is not an owner key")
    if not isinstance(value, bytes) or len(value) > MAX_RECORD_BYTES:
        raise InvalidRecord("value is not bytes of a sane size")
    try:
        owner = peer_id_from_ssh_public_key(m.group(1))
    except ValueError as e:
        raise InvalidRecord(f"owner key: {e}") from e
    try:
        raw = msgpack.unpackb(value, raw=False, strict_map_key=True)  # size checked above
    except Exception as e:  # msgpack raises several unrelated types for hostile bytes
        raise InvalidRecord(f"not msgpack: {e}") from e
    if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
        raise InvalidRecord(f"unsupported record version {raw.get('v') if isinstance(raw, dict) else None!r}")
    peer_id, addrs = raw.get("peer_id"), raw.get("addrs")
    if peer_id != owner:
        raise InvalidRecord(f"record claims peer {peer_id!r} but is signed by {owner}")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS or not all(isinstance(a, str) for a in addrs):
        raise InvalidRecord("addrs must be a short list of strings")
    updated_at, started_at = raw.get("updated_at"), raw.get("started_at")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (updated_at, started_at)):
        raise InvalidRecord("timestamps must be numbers")
    info = raw.get("info", {})
    if not isinstance(info, dict):
        raise InvalidRecord("info must be a map")
    return MemberRecord(
        peer_id=peer_id,
        addrs=tuple(addrs),
        updated_at=float(updated_at),
        started_at=float(started_at),
        left=bool(raw.get("left", False)),
        info=info,
    )


@dataclass(frozen=True)
class Peer:
    """A live member as seen from this node."""

    record: MemberRecord
    expires_at: float

    @property
    def peer_id(self) -> str:
        return self.record.peer_id

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.record.addrs),
            "last_seen_s": round(max(0.0, now - self.record.updated_at), 3),
            "info": dict(self.record.info),
        }


def live_peers(
    found: Mapping[bytes, tuple[object, float]],
    *,
    me: str,
    now: float,
    allowed: Callable[[str], bool] = lambda peer_id: True,
) -> dict[str, Peer]:
    """Pure: turn the DHT's {subkey: (value, expiration)} into the live peer table.

    Drops our own record, tombstones, expired and invalid records (invalid ones are logged), and the
    records of peers that `allowed` refuses (a permissioned swarm ignores strangers on the same DHT).
    """
    peers: dict[str, Peer] = {}
    for subkey, (value, expires_at) in found.items():
        try:
            record = decode_record(subkey, value)
        except InvalidRecord as e:
            log.warning("ignoring an invalid membership record: %s", e)
            continue
        if record.peer_id == me or record.left or expires_at <= now or not allowed(record.peer_id):
            continue
        known = peers.get(record.peer_id)
        if known is None or record.updated_at > known.record.updated_at:
            peers[record.peer_id] = Peer(record, expires_at)
    return peers


class Membership:
    """Publishes this node's record and keeps the live peer table of its swarm."""

    def __init__(
        self,
        host: Host,
        *,
        swarm: str,
        addrs: list[str],
        record_ttl_s: float,
        refresh_interval_s: float,
        poll_interval_s: float,
        info: Callable[[], Mapping[str, Any]] = dict,
        allowed: Callable[[str], bool] = lambda peer_id: True,
    ):
        self._host = host
        self._key = members_key(swarm)
        self._addrs = tuple(addrs)
        self._ttl_s = record_ttl_s
        self._refresh_s = refresh_interval_s
        self._poll_s = poll_interval_s
        self.info = info  # extra fields of our record (round, fingerprint, ...), read at each refresh
        self._started_at = time.time()
        self._allowed = allowed
        self._peers: dict[str, Peer] = {}
        self.peers_changed = asyncio.Event()  # set whenever the table changes (tests and UIs wait on it)

    # --- the peer table ------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        """Live peers, most recently seen first. Entries that expired since the last poll are dropped."""
        now = time.time()
        return sorted(
            (p for p in self._peers.values() if p.expires_at > now and self._allowed(p.peer_id)),
            key=lambda p: -p.record.updated_at,
        )

    async def poll(self) -> None:
        """Read the swarm's records from the DHT and update the peer table."""
        try:
            found = await self._host.get_subkeys(self._key)
        except (TimeoutError, ConnectionError, OSError) as e:
            log.warning("membership poll failed: %s", e)
            return
        except Exception:
            # hivemind deserialises what peers stored; hostile bytes must not end the node
            log.warning("membership poll failed on a DHT value", exc_info=True)
            return
        table = live_peers(found, me=self._host.peer_id, now=time.time(), allowed=self._allowed)
        joined, left = table.keys() - self._peers.keys(), self._peers.keys() - table.keys()
        for peer_id in sorted(joined):
            log.info("peer joined: %s", peer_id)
        for peer_id in sorted(left):
            log.info("peer left: %s", peer_id)
        self._peers = table
        if joined or left:
            self.peers_changed.set()
        # Know every member directly in the DHT, so the swarm does not depend on the peer we
        # bootstrapped through (bounded fan-out: a newcomer to a big swarm must not open 500 dials).
        missing = [p for p in table.values() if not self._host.has_neighbour(p.peer_id)]
        sem = asyncio.Semaphore(_ADD_NEIGHBOURS_AT_ONCE)

        async def add(peer: Peer) -> None:
            async with sem:
                await self._host.add_neighbour(peer.peer_id, peer.record.addrs)

        async with asyncio.TaskGroup() as tg:
            for peer in missing:
                tg.create_task(add(peer))

    # --- our own record --------------------------------------------------------------------------

    def _record(self, *, left: bool = False) -> MemberRecord:
        return MemberRecord(
            peer_id=self._host.peer_id,
            addrs=self._addrs,
            updated_at=time.time(),
            started_at=self._started_at,
            left=left,
            info=dict(self.info()),
        )

    async def publish(self, *, left: bool = False) -> bool:
        value = encode_record(self._record(left=left))
        try:
            return await self._host.store_subkey(self._key, self._host.owner_subkey, value, self._ttl_s)
        except (TimeoutError, ConnectionError, OSError) as e:
            log.warning("publishing the membership record failed: %s", e)
            return False

    async def withdraw(self) -> bool:
        """Replace our record with a tombstone (clean shutdown): peers drop us at their next poll."""
        return await self.publish(left=True)

    # --- loops ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh our record and poll the table until `stop` is set."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every(self._refresh_s, self.publish, stop))
            tg.create_task(self._every(self._poll_s, self.poll, stop))

    @staticmethod
    async def _every(period_s: float, job: Callable[[], Any], stop: asyncio.Event) -> None:
        """Start `job` every `period_s` seconds, even while an earlier run still waits on a silent peer
        (a DHT call to an unreachable node takes its whole RPC timeout): records must not lapse
        because one peer went quiet. At most two runs at a time."""
        running: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                started = time.monotonic()
                if len(running) < 2:
                    task = asyncio.create_task(job())
                    running.add(task)
                    task.add_done_callback(running.discard)
                await wait_stopped(stop, period_s - (time.monotonic() - started))
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
