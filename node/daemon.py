"""The node daemon's lifecycle: start, run until a signal, shut down cleanly.

Start-up is parse -> validate -> start (config errors never get this far). Each start-up failure
maps to a documented exit code; once running, a failing peer is a normal event, never a reason
to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import uvloop

from node import __version__, exitcodes
from node.config import NodeConfig, check_join_address
from node.control import ControlServer, ControlStartError
from node.members import Members, MembersError
from node.metrics import NodeMetrics
from node.metrics_log import METRICS_FILE, read_metrics
from p2p.aio import wait_stopped
from p2p.errors import HostStartError, IdentityError
from p2p.exchange import GossipExchange
from p2p.host import Host, HostOptions
from p2p.identity import load_or_create_identity
from p2p.membership import Membership

log = logging.getLogger("fedswarm.node")

SHUTDOWN_LOOPS_S = 1.0  # let the loops notice `stop` before cancelling them
SHUTDOWN_WITHDRAW_S = 1.0  # tombstone our membership record
SHUTDOWN_HOST_S = 2.0  # stop the DHT and p2pd; together well inside the promised 5 s


class StartupError(Exception):
    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


def write_atomically(path: Path, text: str) -> None:
    """Readers (scripts, the next container) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


JOIN_FILE_POLL_S = 0.5
JOIN_FILE_LOG_EVERY_S = 10.0


async def read_join_file(path: Path, stop: asyncio.Event) -> list[str]:
    """Wait for another node's addrs.txt (containers start in any order) and return its addresses.

    Lines that are not full peer multiaddrs are skipped with a warning; the node never exits over it.
    """
    waited, next_log = 0.0, 0.0
    while not stop.is_set():
        try:
            text = await asyncio.to_thread(path.read_text)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
        except FileNotFoundError:
            lines = []
        if lines:
            addrs = []
            for line in lines:
                try:
                    check_join_address(line)
                    addrs.append(line)
                except ValueError as e:
                    log.warning("ignoring a line of join file %s: %s", path, e)
            log.info("join file %s lists %d address(es)", path, len(addrs))
            return addrs
        if waited >= next_log:
            log.info("waiting for join file %s (%.0f s so far)", path, waited)
            next_log += JOIN_FILE_LOG_EVERY_S
        if await wait_stopped(stop, JOIN_FILE_POLL_S):
            break
        waited += JOIN_FILE_POLL_S
    return []


class Node:
    """One running node: its host, membership, metrics and control API."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.started_monotonic = time.monotonic()
        self.host: Host | None = None
        self.membership: Membership | None = None
        self.addrs: list[str] = []
        self.metrics = NodeMetrics(self)
        self.control: ControlServer | None = None
        self.learner = None  # node.learner.Learner, once the task is loaded
        self.members: Members | None = None
        self.resumed = False
        self._published = False

    # --- what the control API shows ------------------------------------------------------------

    def status(self) -> dict:
        status = {
            "peer_id": self.host.peer_id if self.host else None,
            "swarm": self.config.swarm,
            "addrs": self.addrs,
            "peers": len(self.membership.peers()) if self.membership else 0,
            "dht_neighbours": self.host.dht_neighbours() if self.host else 0,
            "uptime_s": round(self.uptime_s(), 3),
            "version": __version__,
        }
        if self.learner is not None:
            status.update(self.learner.status())
        return status

    def peers(self) -> list[dict]:
        now = time.time()
        rows = [p.as_json(now) for p in self.membership.peers()] if self.membership else []
        refused = self.learner.exchange.stats.rejected_by_peer if self.learner and self.learner.exchange else {}
        for row in rows:
            if label := self.members.label(row["peer_id"]):
                row["label"] = label
            row["rejected"] = refused.get(row["peer_id"], 0)  # bad input and validation-gate refusals
        return rows

    async def reload_members(self) -> dict:
        """SIGHUP or POST /members/reload: re-read the members file without a restart."""
        try:
            result = self.members.reload()
        except MembersError as e:
            log.error("members not reloaded (the previous list stays in force): %s", e)
            return {"ok": False, "error": str(e)}
        log.info("members reloaded: %s", result)
        return {"ok": True, **result}

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(
                exitcodes.CONFIG, f"invalid setting 'data_dir': cannot create {cfg.data_dir}: {e}"
            ) from e
        try:
            identity, created = load_or_create_identity(cfg.identity_path)
        except IdentityError as e:
            raise StartupError(
                exitcodes.IDENTITY,
                f"{e}; restore it from a backup, or move it away to start as a new peer ID",
            ) from e
        if created:
            log.info("created a new identity at %s", cfg.identity_path)

        try:
            self.members = Members(cfg.members, cfg.members_file)
        except MembersError as e:
            raise StartupError(exitcodes.CONFIG, f"invalid setting 'members_file': {e}") from e
        if self.members.open:
            log.warning(
                "open swarm: any peer that finds this swarm on the DHT can average with this node; "
                "set 'members' or 'members_file' to admit only your partner institutions"
            )
        options = HostOptions(
            listen=cfg.p2p.listen,
            announce=cfg.p2p.announce,
            nat_port_map=cfg.p2p.nat_port_map,
            auto_nat=cfg.p2p.auto_nat,
            relay=cfg.p2p.relay,
            use_ipfs=cfg.p2p.use_ipfs,
            startup_timeout_s=cfg.p2p.startup_timeout_s,
            rpc_timeout_s=cfg.p2p.rpc_timeout_s,
        )
        try:
            self.host = await Host.start(identity, options)
        except HostStartError as e:
            raise StartupError(exitcodes.NETWORK, f"{e} (check 'listen' and 'announce')") from e

        self.addrs = await self.host.visible_addrs()
        self.membership = Membership(
            self.host,
            swarm=cfg.swarm,
            addrs=self.addrs,
            record_ttl_s=cfg.membership.record_ttl_s,
            refresh_interval_s=cfg.membership.refresh_interval_s,
            poll_interval_s=cfg.membership.poll_interval_s,
            allowed=self.members.allowed,
        )
        await self._start_learner()
        self.control = ControlServer(
            host=cfg.control.host,
            port=cfg.control.port,
            status=self.status,
            peers=self.peers,
            registry=self.metrics.registry,
            actions={"/members/reload": self.reload_members},
            history=lambda: read_metrics(cfg.data_dir / METRICS_FILE)[-2000:],
        )
        try:
            port = await self.control.start()
        except ControlStartError as e:
            await self.host.close()
            raise StartupError(exitcodes.CONTROL, str(e)) from e

        write_atomically(cfg.data_dir / "addrs.txt", "".join(f"{a}\n" for a in self.addrs))
        write_atomically(cfg.data_dir / "control.txt", f"{cfg.control.host}:{port}\n")
        print(f"fedswarm node {self.host.peer_id} (swarm {cfg.swarm!r})", flush=True)
        for addr in self.addrs:
            print(f"  listening on {addr}", flush=True)
        print(f"  control API on http://{cfg.control.host}:{port}", flush=True)
        log.info("node started: peer %s, swarm %r, control port %d", self.host.peer_id, cfg.swarm, port)

    async def _start_learner(self) -> None:
        # torch and the task load only here: `fedswarm status` and friends never pay for them
        from node.learner import Learner
        from training.errors import CheckpointError, TaskError

        try:
            self.learner = Learner(self.config, self.membership, self.host.peer_id)
        except TaskError as e:
            raise StartupError(exitcodes.CONFIG, f"invalid setting 'task': {e}") from e
        try:
            self.resumed = await asyncio.to_thread(self.learner.resume)
        except (CheckpointError, ValueError) as e:
            raise StartupError(exitcodes.CHECKPOINT, f"cannot resume: {e}") from e
        self.membership.info = self.learner.membership_info
        from training.aggregate import pairwise_mean

        exchange = GossipExchange(
            self.host,
            self.learner.state,
            mix=pairwise_mean,
            timeout_s=self.config.training.exchange_timeout_s,
            handshake_timeout_s=self.config.p2p.rpc_timeout_s,
            on_record=self.learner.record_exchange,
            allowed=self.members.allowed,
            vet=self.learner.vet,
            offer_refusal=self.learner.offer_refusal,
        )
        self.learner.exchange = exchange
        await self.learner.measure_start()
        await exchange.start()

    async def _learn(self, stop: asyncio.Event) -> None:
        if not self.resumed:
            await self.learner.start_from_peer(stop)
        await self.learner.run(stop)

    async def _join(self, stop: asyncio.Event) -> None:
        addrs = list(self.config.p2p.join)
        if self.config.p2p.join_file:
            addrs += await read_join_file(Path(self.config.p2p.join_file), stop)
        if addrs:
            await self.host.join_until_connected(addrs, retry_max_s=self.config.p2p.join_retry_max_s, stop=stop)

    async def run(self, stop: asyncio.Event) -> None:
        assert self.host and self.membership, "start() first"
        self._published = True  # from here on, shutdown owes the swarm a tombstone
        await self.membership.publish()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.membership.run(stop))
            tg.create_task(self._learn(stop))
            if self.config.p2p.join or self.config.p2p.join_file:
                tg.create_task(self._join(stop))

    async def shutdown(self) -> None:
        """Save the model, withdraw from the swarm, stop serving, stop libp2p. Bounded in time."""
        if self.learner is not None and self._published:
            await self.learner.save()
        if self.membership is not None and self._published:
            try:
                async with asyncio.timeout(SHUTDOWN_WITHDRAW_S):
                    await self.membership.withdraw()
            except TimeoutError:
                log.warning("could not withdraw the membership record in time; it lapses by itself")
        if self.control is not None:
            await self.control.stop()
        if self.host is not None:
            try:
                async with asyncio.timeout(SHUTDOWN_HOST_S):
                    await self.host.close()
            except TimeoutError:
                log.warning("libp2p did not stop in time; terminating it")
                self.host.kill()
        (self.config.data_dir / "control.txt").unlink(missing_ok=True)  # no node answers there any more
        log.info("node stopped")

    def kill(self) -> None:
        if self.host is not None:
            self.host.kill()


async def _serve(config: NodeConfig) -> int:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s received: shutting down (send it again to force)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal: forcing exit")
            node.kill()
            os._exit(exitcodes.INTERRUPTED)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    reloads: set[asyncio.Task] = set()

    def on_sighup() -> None:
        if node.members is not None:
            task = asyncio.create_task(node.reload_members())
            reloads.add(task)  # owned until done
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await node.start()
        run = asyncio.create_task(node.run(stop))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        stopped.cancel()
        # The loops end at `stop` between steps; one stuck in a long wait (an exchange with a slow
        # peer, a pull) is cancelled so that shutdown stays within its promised 5 s.
        await asyncio.wait({run}, timeout=SHUTDOWN_LOOPS_S)
        if not run.done():
            log.info("cancelling work in progress to shut down")
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        else:
            run.result()  # a crash in the loops surfaces here
        return exitcodes.OK
    except StartupError as e:
        log.error("%s", e)
        return e.exit_code
    finally:
        await node.shutdown()


def serve(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM. Returns the process exit code."""
    return uvloop.run(_serve(config))
