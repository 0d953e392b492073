"""A node's presence on the network: one libp2p daemon (hivemind's bundled go-libp2p `p2pd`) and
one hivemind DHT node, both driven from the daemon's own event loop.

Why not `hivemind.DHT`: it forks a child process and talks to it over pipes, which suits a training
script that must not block. A daemon that owns its event loop can run `P2P` and `DHTNode` in that
loop directly: one process less, no pipes, and a shutdown we control from start to end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.control import P2PDaemonError
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo
from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.timed_storage import get_dht_time

from p2p.aio import wait_stopped
from p2p.errors import HostStartError, PeerUnavailable
from p2p.identity import Identity

log = logging.getLogger("fedswarm.p2p")

StreamHandler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class HostOptions:
    """How to bring up libp2p. Everything that could send traffic off the machine is off by default."""

    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    announce: Sequence[str] = ()
    nat_port_map: bool = False  # UPnP / NAT-PMP probes to the LAN gateway
    auto_nat: bool = False  # asks public peers to dial us back
    relay: bool = False  # circuit relay (reach peers behind NAT through a third peer)
    use_ipfs: bool = False  # bootstrap through the public IPFS network
    startup_timeout_s: float = 15.0
    rpc_timeout_s: float = 5.0  # one DHT RPC or one connect attempt


def split_peer_addr(addr: str) -> tuple[str, str]:
    """'/ip4/1.2.3.4/tcp/5/p2p/Qm..' -> ('/ip4/1.2.3.4/tcp/5', 'Qm..')."""
    head, sep, peer_id = addr.rpartition("/p2p/")
    if not sep or not peer_id or "/" in peer_id:
        raise ValueError(f"{addr!r} does not end with /p2p/<peer id>")
    return head, peer_id


class Host:
    """libp2p + DHT for one node. Create with `await Host.start(...)`, end with `await host.close()`."""

    def __init__(
        self, identity: Identity, p2p: P2P, dht: DHTNode, validator: RSASignatureValidator, rpc_timeout_s: float
    ):
        self.identity = identity
        self.peer_id = identity.peer_id
        self._p2p = p2p
        self._dht = dht
        self._validator = validator
        self._closed = False
        self._rpc_timeout_s = rpc_timeout_s

    @classmethod
    async def start(cls, identity: Identity, options: HostOptions) -> Host:
        try:
            p2p = await P2P.create(
                host_maddrs=list(options.listen),
                announce_maddrs=list(options.announce) or None,
                identity_path=str(identity.path),
                # hivemind's identity check starts a throwaway daemon with NAT probes on; the peer ID is
                # ours by construction (we made the key), so the check buys nothing here.
                check_if_identity_free=False,
                nat_port_map=options.nat_port_map,
                auto_nat=options.auto_nat,
                use_relay=options.relay,
                use_auto_relay=False,
                use_ipfs=options.use_ipfs,
                startup_timeout=options.startup_timeout_s,
            )
        except (P2PDaemonError, ValueError, OSError) as e:
            raise HostStartError(f"libp2p did not start: {e}") from e

        validator = RSASignatureValidator(identity.signing_key)
        try:
            dht = await DHTNode.create(
                p2p=p2p,
                record_validator=validator,
                wait_timeout=options.rpc_timeout_s,
                # Joining is ours to do (see `join`), with retries; a lone first node is normal.
                initial_peers=None,
                cache_locally=True,
                cache_nearest=1,
            )
        except BaseException:
            await p2p.shutdown()
            raise
        return cls(identity, p2p, dht, validator, options.rpc_timeout_s)

    # --- addresses -------------------------------------------------------------------------

    async def visible_addrs(self) -> list[str]:
        """Full multiaddrs, each ending in /p2p/<peer id>: what another node passes to --join."""
        maddrs = await self._p2p.get_visible_maddrs()
        return [str(m) for m in maddrs]

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Open (or reuse) a libp2p connection to a peer at known addresses."""
        maddrs = []
        for addr in addrs:
            head = split_peer_addr(addr)[0] if "/p2p/" in addr else addr
            maddrs.append(Multiaddr(head))
        try:
            async with asyncio.timeout(self._rpc_timeout_s):
                # The daemon's CONNECT call is not wrapped by hivemind's P2P class.
                await self._p2p._client.connect(PeerID.from_base58(peer_id), maddrs)
        except (TimeoutError, ControlFailure, P2PDaemonError, OSError, ConnectionError) as e:
            raise PeerUnavailable(f"cannot connect to {peer_id}: {e or type(e).__name__}") from e

    # --- joining a swarm ---------------------------------------------------------------------

    async def join(self, addrs: Sequence[str]) -> list[str]:
        """Connect to bootstrap peers and fill our DHT routing table through them.

        Returns the peer IDs that answered (empty if none did). Never raises for a dead peer.
        """
        answered: list[str] = []
        for addr in addrs:
            _, peer_id = split_peer_addr(addr)
            if peer_id != self.peer_id and await self.add_neighbour(peer_id, [addr]):
                answered.append(peer_id)
        if answered:
            # Look ourselves up: this is how a newcomer learns the rest of the swarm, so the swarm
            # no longer depends on the bootstrap peer it came in through.
            async with asyncio.timeout(self._rpc_timeout_s * 2):
                await self._dht.find_nearest_nodes([self._dht.node_id])
        return answered

    async def add_neighbour(self, peer_id: str, addrs: Sequence[str]) -> bool:
        """Make sure `peer_id` is in our DHT routing table (connect and ping it if not).

        Members learnt from the DHT are added this way, so every node knows the others directly and
        the swarm does not hang on the peer it bootstrapped through. False if the peer is unreachable.
        """
        if self.has_neighbour(peer_id):
            return True
        pid = PeerID.from_base58(peer_id)
        try:
            await self.connect(peer_id, addrs)
        except PeerUnavailable as e:
            log.debug("peer %s unreachable: %s", peer_id, e)
            return False
        return await self._dht.protocol.call_ping(pid) is not None

    def has_neighbour(self, peer_id: str) -> bool:
        return PeerID.from_base58(peer_id) in self._dht.protocol.routing_table

    def dht_neighbours(self) -> int:
        """How many peers our DHT routing table holds."""
        return len(self._dht.protocol.routing_table.uid_to_peer_id)

    async def join_until_connected(self, addrs: Sequence[str], *, retry_max_s: float, stop: asyncio.Event) -> None:
        """Keep trying `addrs` with exponential backoff while we know no other peer.

        Runs for the life of the node: if we lose every neighbour later (a cut link, the whole
        swarm restarted), we come back through the bootstrap peers.
        """
        delay = 1.0
        announced_alone = False
        next_check = time.monotonic() + retry_max_s
        while not stop.is_set():
            if self.dht_neighbours() > 0 and time.monotonic() >= next_check:
                # We are in a swarm, but a bootstrap peer that restarted knows nobody and nobody dials it:
                # now and then, make sure each bootstrap peer is one of our neighbours.
                next_check = time.monotonic() + retry_max_s
                for addr in addrs:
                    _, peer_id = split_peer_addr(addr)
                    if peer_id != self.peer_id and not self.has_neighbour(peer_id):
                        await self.add_neighbour(peer_id, [addr])
            if self.dht_neighbours() == 0:
                answered = await self.join(addrs)
                if answered:
                    log.info("joined swarm through %s", ", ".join(answered))
                    delay, announced_alone = 1.0, False
                else:
                    if not announced_alone:
                        log.warning(
                            "no bootstrap peer answers (%s); running as a swarm of one, retrying with backoff",
                            ", ".join(addrs),
                        )
                        announced_alone = True
                    else:
                        log.info("still no bootstrap peer answers; next try in %.0f s", delay)
                    delay = min(delay * 2, retry_max_s)
            # jitter: nodes of a restarted swarm do not retry in lockstep
            await wait_stopped(stop, delay * random.uniform(0.8, 1.2))

    # --- streams ---------------------------------------------------------------------------------

    async def serve_streams(self, protocol: str, handler: StreamHandler) -> None:
        """Serve `protocol`: handler(peer_id, reader, writer) runs for each incoming stream.

        The peer ID is the one libp2p authenticated (Noise/TLS), so handlers may trust it.
        """

        async def on_stream(info: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            try:
                await handler(info.peer_id.to_base58(), reader, writer)
            finally:
                writer.close()

        await self._p2p.add_binary_stream_handler(protocol, on_stream)

    async def stop_serving(self, protocol: str) -> None:
        await self._p2p.remove_binary_stream_handler(protocol)

    async def open_stream(
        self, peer_id: str, protocol: str, addrs: Sequence[str] = ()
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream to a peer (dialling `addrs` first if given). Raises PeerUnavailable."""
        if addrs:
            await self.connect(peer_id, addrs)
        try:
            _, reader, writer = await self._p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), protocol)
        except (ControlFailure, P2PDaemonError, OSError, ConnectionError) as e:
            # ControlFailure: the daemon found no route, or the peer does not serve `protocol`
            raise PeerUnavailable(f"cannot open a stream to {peer_id}: {e}") from e
        return reader, writer

    # --- DHT records -------------------------------------------------------------------------

    @property
    def owner_subkey(self) -> bytes:
        """A DHT subkey only this node can write (hivemind's RSA validator checks the signature)."""
        return self._validator.local_public_key

    async def store_subkey(self, key: str, subkey: bytes, value: bytes, ttl_s: float) -> bool:
        """Store `value` under key/subkey until now + ttl_s. True if any DHT peer (or we) accepted."""
        expiration = get_dht_time() + ttl_s
        return bool(await self._dht.store(key, value, expiration, subkey=subkey))

    async def get_subkeys(self, key: str) -> dict[bytes, tuple[object, float]]:
        """Freshest {subkey: (value, expiration)} under key across the DHT; {} if none."""
        found = await self._dht.get(key, latest=True)
        if found is None or not isinstance(found.value, dict):
            return {}
        now = get_dht_time()
        return {
            subkey: (item.value, item.expiration_time)
            for subkey, item in found.value.items()
            if item.expiration_time > now
        }

    # --- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the DHT and the libp2p daemon (waits for p2pd to exit; removes its socket files)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._dht.shutdown()
        finally:
            await self._p2p.shutdown()

    def kill(self) -> None:
        """Last resort for a forced exit: terminate p2pd without waiting."""
        self._p2p._terminate()
