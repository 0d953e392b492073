"""How fast is fedswarm's pairwise gossip exchange, next to gloo and to hivemind's own averager?

One run measures, for the same float32 model (default 10M floats = 40 MB each way):

  1. fedswarm    `p2p.exchange.GossipExchange` between two processes, each with its own `p2p.host.Host`
                 (own p2pd), over libp2p on 127.0.0.1. Process B serves, process A calls
                 `exchange(B)`. Checked once: both sides must hold the weighted mean afterwards.
  2. gloo        `torch.distributed.all_reduce(SUM)` between two processes (the speed a plain TCP
                 collective gets here: the bar to compare against).
  3. hivemind    `hivemind.averaging.DecentralizedAverager`, two peers, one `step()` per round.

Every timing is "until both sides hold the result", median over `--repeats` after 2 warm-ups.
MB = 10**6 bytes, payload = the model's bytes one way.

Run it inside a loopback-only network namespace (it starts libp2p daemons):

    /work/shared/tools/inns .venv/bin/python bench/exchange.py [--floats N] [--repeats N] [--skip-hivemind]

Each measurement runs in spawned child processes, one phase after the other (this is a 2-core
machine: phases must not compete for CPU). Every child gets its own process group, so the p2pd
daemons and hivemind's forked helpers go down with it if anything fails or hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import queue
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/exchange.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "exchange.json"
WARMUP = 2
MB = 1e6
# The two models of the correctness check differ in value and in weight, so a mix that ignored the
# weights (or swapped them) would fail the check.
SEED_A, WEIGHT_A = 1, 1.0
SEED_B, WEIGHT_B = 2, 3.0
MAX_ABS_ERROR = 1e-5
# Phase deadlines: generous next to what each takes (a few seconds to ~30 s), and together they
# keep a hung run well within a few minutes.
GOSSIP_TIMEOUT_S = 60.0
GLOO_TIMEOUT_S = 45.0
HIVEMIND_TIMEOUT_S = 90.0
HIVEMIND_MATCHMAKING_S = 1.5  # min_matchmaking_time: the group starts early once target_group_size peers joined


class BenchError(RuntimeError):
    """A measurement could not be made (or gave a wrong answer): the run aborts."""


# --- shared helpers -----------------------------------------------------------------------------------


def initial_model(seed: int, floats: int) -> dict[str, np.ndarray]:
    """One float32 tensor, deterministic per seed, so either process can rebuild the other's model."""
    return {"w": np.random.default_rng(seed).standard_normal(floats, dtype=np.float32)}


def expected_mix(floats: int) -> np.ndarray:
    """The weighted mean of models A and B, in float64."""
    a = initial_model(SEED_A, floats)["w"].astype(np.float64)
    b = initial_model(SEED_B, floats)["w"].astype(np.float64)
    return (WEIGHT_A * a + WEIGHT_B * b) / (WEIGHT_A + WEIGHT_B)


def max_abs_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual.astype(np.float64) - expected)))


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mean_ms(values: Sequence[float]) -> float | None:
    return round(1e3 * statistics.fmean(values), 2) if values else None


# --- child processes ---------------------------------------------------------------------------------


def _child_entry(role: str, target: Callable, results: mp.Queue, commands: mp.Queue, args: tuple) -> None:
    """Runs in each spawned child: own process group, then `target`; any failure goes back as a message."""
    os.setpgrp()  # the parent can then kill this child together with its p2pd daemons and helpers
    try:
        target(role, results, commands, *args)
    except BaseException:
        results.put((role, "error", traceback.format_exc()))
        raise SystemExit(1) from None


class Phase:
    """The child processes of one measurement: start them, wait for their messages, always clean up."""

    def __init__(self, name: str, timeout_s: float):
        self.name = name
        self._ctx = mp.get_context("spawn")  # a fresh interpreter: no forked event loops, threads or p2pd
        self._results = self._ctx.Queue()
        self._procs: dict[str, mp.process.BaseProcess] = {}
        self._commands: dict[str, mp.Queue] = {}
        self._inbox: list[tuple[str, str, Any]] = []
        self._deadline = time.monotonic() + timeout_s

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def spawn(self, role: str, target: Callable, *args) -> None:
        commands = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_child_entry, args=(role, target, self._results, commands, args), name=f"{self.name}-{role}"
        )
        proc.start()
        self._procs[role], self._commands[role] = proc, commands

    def send(self, role: str, message: Any) -> None:
        self._commands[role].put(message)

    def expect(self, role: str, kind: str) -> Any:
        """The payload of the next (role, kind) message; raises if a child failed, died or the phase ran late."""
        while True:
            for i, (r, k, payload) in enumerate(self._inbox):
                if k == "error":
                    raise BenchError(f"{self.name}: child {r} failed:\n{payload}")
                if (r, k) == (role, kind):
                    del self._inbox[i]
                    return payload
            if time.monotonic() > self._deadline:
                raise BenchError(f"{self.name}: no {kind!r} from {role} before the phase deadline")
            try:
                self._inbox.append(self._results.get(timeout=0.5))
            except queue.Empty:
                for r, proc in self._procs.items():
                    if proc.exitcode not in (None, 0):
                        raise BenchError(f"{self.name}: child {r} exited with {proc.exitcode}") from None

    def close(self) -> None:
        """Tell children to stop, give them a few seconds, then kill each one's whole process group."""
        for role in self._procs:
            with contextlib.suppress(Exception):
                self.send(role, "stop")
        for proc in self._procs.values():
            proc.join(timeout=max(1.0, min(10.0, self._deadline - time.monotonic())))
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3.0)
            _kill_process_group(proc.pid)
        for q in [self._results, *self._commands.values()]:
            q.close()
            q.cancel_join_thread()  # never hang on a queue whose reader is gone


def _kill_process_group(pgid: int) -> None:
    """Kill what is left of a child's group (p2pd daemons, hivemind's forked DHT/averager processes).

    A normal run leaves nothing: the children shut their daemons down. Only after a failure do
    leftovers exist; their unix sockets in /tmp are then ours to remove too (hivemind's own
    shutdown would have removed them).
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return  # the group is empty
    socket_ids = _p2pd_socket_ids(pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    time.sleep(0.2)
    for uid in socket_ids:
        for kind in ("p2pd", "p2pclient"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"/tmp/hivemind-{kind}-{uid}.sock")


def _p2pd_socket_ids(pgid: int) -> set[str]:
    """Socket ids of the p2pd daemons in a process group (from their command lines)."""
    ids: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry)) != pgid:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            ids.update(re.findall(r"hivemind-p2pd-([\w-]+)\.sock", cmdline))
    return ids


def _wait_command(commands: mp.Queue, timeout_s: float) -> Any:
    try:
        return commands.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no command from the parent within {timeout_s:.0f} s") from None


# --- 1. fedswarm gossip exchange ---------------------------------------------------------------------


@dataclass
class BenchState:
    """The `p2p.exchange.ModelState` of a node that does not train: a model, a weight, and timings."""

    arrays: dict[str, np.ndarray]
    weight: float
    fingerprint: str = "bench-model"
    round: int = 0
    specs: list = field(init=False)
    timings: dict[str, list[float]] = field(default_factory=lambda: {"snapshot": [], "mix": [], "apply": []})

    def __post_init__(self):
        from p2p.wire import specs_of

        self.specs = specs_of(self.arrays)

    def snapshot(self):
        from p2p.exchange import Snapshot

        started = time.perf_counter()
        snap = Snapshot({k: a.copy() for k, a in self.arrays.items()}, self.weight, self.round)
        self.timings["snapshot"].append(time.perf_counter() - started)
        return snap

    def apply(self, before, mixed: Mapping[str, np.ndarray], weight: float) -> None:
        started = time.perf_counter()
        # Apply the difference, not the mix itself: what a training node does (its trainer may have
        # moved on since the snapshot). Here nothing moved, so this equals the mix up to rounding.
        for name, array in self.arrays.items():
            array += mixed[name] - before.arrays[name]
        self.weight, self.round = weight, self.round + 1
        self.timings["apply"].append(time.perf_counter() - started)

    def mix(self, models):
        started = time.perf_counter()
        mixed = _node_mix()(models)
        self.timings["mix"].append(time.perf_counter() - started)
        return mixed

    def breakdown_ms(self) -> dict[str, float | None]:
        """Mean local compute per exchange on this side (it is part of each measured exchange)."""
        return {f"{name}_ms": mean_ms(values) for name, values in self.timings.items()}


def _node_mix() -> Callable:
    """The mix a fedswarm node uses for an exchange (node/daemon.py passes it to GossipExchange)."""
    from training.aggregate import pairwise_mean

    return pairwise_mean


async def _start_host(key_dir: str, name: str):
    from p2p.host import Host, HostOptions
    from p2p.identity import load_or_create_identity

    identity, _ = load_or_create_identity(Path(key_dir) / f"{name}.key")
    return await Host.start(identity, HostOptions())  # listens on 127.0.0.1 only, NAT/relay off


def _gossip_server(role: str, results: mp.Queue, commands: mp.Queue, floats: int, key_dir: str) -> None:
    """Process B: serve exchanges until told to stop; check the result of the first one."""
    import uvloop

    from p2p.exchange import GossipExchange, Outcome

    async def main() -> None:
        host = await _start_host(key_dir, "b")
        try:
            state = BenchState(initial_model(SEED_B, floats), WEIGHT_B)
            checked = False

            def on_record(record) -> None:
                nonlocal checked
                if record.outcome is Outcome.OK and not checked:
                    checked = True  # once: the float64 reference costs a few hundred ms
                    err = max_abs_error(state.arrays["w"], expected_mix(floats))
                    results.put((role, "checked", {"max_abs_error": err, "weight": state.weight}))

            exchange = GossipExchange(host, state, mix=state.mix, timeout_s=30.0, on_record=on_record)
            await exchange.start()
            results.put((role, "addrs", (host.peer_id, await host.visible_addrs())))
            await asyncio.to_thread(_wait_command, commands, GOSSIP_TIMEOUT_S)  # "stop"
            results.put((role, "stats", {"outcomes": exchange.stats.as_json(), **state.breakdown_ms()}))
        finally:
            await host.close()

    uvloop.run(main())


def _gossip_caller(role: str, results: mp.Queue, commands: mp.Queue, floats: int, key_dir: str, repeats: int) -> None:
    """Process A: exchange with B WARMUP + repeats times, timing each; check the first one."""
    import uvloop

    from p2p.exchange import GossipExchange, Outcome

    async def main() -> None:
        host = await _start_host(key_dir, "a")
        try:
            state = BenchState(initial_model(SEED_A, floats), WEIGHT_A)
            exchange = GossipExchange(host, state, mix=state.mix, timeout_s=30.0)
            peer_id, addrs = await asyncio.to_thread(_wait_command, commands, GOSSIP_TIMEOUT_S)
            timings = []
            for i in range(WARMUP + repeats):
                started = time.perf_counter()
                outcome = await exchange.exchange(peer_id, addrs)
                elapsed = time.perf_counter() - started
                if outcome is not Outcome.OK:
                    raise BenchError(f"exchange {i} ended {outcome.value}")
                if i == 0:
                    err = max_abs_error(state.arrays["w"], expected_mix(floats))
                    results.put((role, "checked", {"max_abs_error": err, "weight": state.weight}))
                if i >= WARMUP:
                    timings.append(elapsed)
            results.put((role, "timings", timings))
            results.put((role, "stats", state.breakdown_ms()))
        finally:
            await host.close()

    uvloop.run(main())


def _check_mix(side: str, checked: Mapping[str, float]) -> None:
    expected_weight = (WEIGHT_A + WEIGHT_B) / 2
    if not checked["max_abs_error"] < MAX_ABS_ERROR or checked["weight"] != expected_weight:
        raise BenchError(
            f"fedswarm exchange gave a wrong result on side {side}: max abs error {checked['max_abs_error']:.3g} "
            f"(limit {MAX_ABS_ERROR}), weight {checked['weight']} (expected {expected_weight})"
        )


def measure_gossip(floats: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedswarm-bench-") as key_dir, Phase("gossip", GOSSIP_TIMEOUT_S) as phase:
        phase.spawn("B", _gossip_server, floats, key_dir)
        phase.spawn("A", _gossip_caller, floats, key_dir, repeats)
        phase.send("A", phase.expect("B", "addrs"))
        checked = {side: phase.expect(side, "checked") for side in ("A", "B")}
        for side, result in checked.items():
            _check_mix(side, result)
        timings = phase.expect("A", "timings")
        stats_a = phase.expect("A", "stats")
        phase.send("B", "stop")
        stats_b = phase.expect("B", "stats")
    return {
        "method": "fedswarm gossip exchange",
        "timings_s": timings,
        "note": "libp2p stream, both directions at once; incl. snapshot+mix+apply "
        f"(~{stats_a['mix_ms']:.0f} ms mix per side)",
        "details": {
            "max_abs_error": {side: c["max_abs_error"] for side, c in checked.items()},
            "local_compute_caller": stats_a,
            "local_compute_callee": stats_b,
            "mix": "training.aggregate.pairwise_mean",
        },
    }


# --- 2. gloo all_reduce (the baseline) ---------------------------------------------------------------


def _gloo_rank(role: str, results: mp.Queue, commands: mp.Queue, rank: int, port: int, floats: int, repeats: int):
    import datetime as dt

    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=dt.timedelta(seconds=30)
    )
    try:
        tensor = torch.full((floats,), float(rank + 1), dtype=torch.float32)
        timings = []
        for i in range(WARMUP + repeats):
            dist.barrier()  # both ranks start together: the time is the collective's, not the other rank's lag
            started = time.perf_counter()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            elapsed = time.perf_counter() - started
            if i == 0 and not bool((tensor == 3.0).all()):
                raise BenchError("gloo all_reduce gave a wrong sum")
            if i >= WARMUP:
                timings.append(elapsed)
        results.put((role, "timings", timings))
    finally:
        dist.destroy_process_group()


def measure_gloo(floats: int, repeats: int) -> dict[str, Any]:
    port = free_tcp_port()
    with Phase("gloo", GLOO_TIMEOUT_S) as phase:
        for rank in (0, 1):
            phase.spawn(f"rank{rank}", _gloo_rank, rank, port, floats, repeats)
        per_rank = [phase.expect(f"rank{rank}", "timings") for rank in (0, 1)]
    return {
        "method": "gloo all_reduce (baseline)",
        # per repeat, the slower rank: done when both hold the result, as for the other methods
        "timings_s": [max(pair) for pair in zip(*per_rank, strict=True)],
        "note": "torch.distributed, 2 processes, tcp 127.0.0.1",
        "details": {"per_rank_timings_s": per_rank},
    }


# --- 3. hivemind DecentralizedAverager ---------------------------------------------------------------

# What keeps hivemind's daemons on this machine: no UPnP/NAT-PMP, no AutoNAT, no relays.
HIVEMIND_SAFE_P2P = {"nat_port_map": False, "auto_nat": False, "use_relay": False, "use_auto_relay": False}


def _hivemind_pair(role: str, results: mp.Queue, commands: mp.Queue, floats: int, repeats: int) -> None:
    """Both averagers in this process (each runs in its own forked process with its own DHT/p2pd anyway)."""
    import torch
    from hivemind import DHT
    from hivemind.averaging import DecentralizedAverager

    # This child was spawned, which made "spawn" its default start method; hivemind's averager is an
    # mp.Process built for fork (its state does not pickle), so give it the Linux default back.
    mp.set_start_method("fork", force=True)
    socket_notes = Path(tempfile.mkdtemp(prefix="fedswarm-bench-")) / "client-sockets"
    _note_replica_sockets(socket_notes)
    dhts, averagers = [], []
    try:
        first = DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], **HIVEMIND_SAFE_P2P)
        dhts.append(first)
        dhts.append(
            DHT(
                start=True,
                host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                initial_peers=first.get_visible_maddrs(),
                **HIVEMIND_SAFE_P2P,
            )
        )
        tensors = [torch.from_numpy(initial_model(seed, floats)["w"]) for seed in (SEED_A, SEED_B)]
        for dht, tensor in zip(dhts, tensors, strict=True):
            averagers.append(
                DecentralizedAverager(
                    [tensor],
                    dht,
                    start=True,
                    prefix="fedswarm-bench",
                    target_group_size=2,
                    min_group_size=2,
                    min_matchmaking_time=HIVEMIND_MATCHMAKING_S,
                    request_timeout=HIVEMIND_MATCHMAKING_S / 2,  # hivemind wants it below min_matchmaking_time
                    allreduce_timeout=30.0,
                )
            )
        rounds, allreduce_parts, error = [], [], None
        for i in range(WARMUP + repeats):
            total, allreduce = _hivemind_round(averagers)
            if i == 0:
                with averagers[0].get_tensors() as (averaged,):
                    error = max_abs_error(averaged.numpy(), expected_mix(floats))
            if i >= WARMUP:
                rounds.append(total)
                allreduce_parts.append(allreduce)
        results.put((role, "timings", {"round": rounds, "allreduce": allreduce_parts, "max_abs_error": error}))
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()
        _remove_noted_sockets(socket_notes)


def _note_replica_sockets(notes: Path) -> None:
    """Make every `P2P.replicate` in this process and its forks write its client socket path to `notes`.

    Each averager talks to its DHT's p2pd through such a replica and never shuts it down, so its
    /tmp/hivemind-p2pclient-*.sock outlives the run. This way we learn exactly which ones are ours.
    """
    from hivemind.p2p import P2P

    replicate = P2P.replicate.__func__

    async def replicate_and_note(cls, *args, **kwargs):
        replica = await replicate(cls, *args, **kwargs)
        with notes.open("a") as f:
            f.write(replica._client_listen_maddr["unix"] + "\n")
        return replica

    P2P.replicate = classmethod(replicate_and_note)


def _remove_noted_sockets(notes: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        for path in notes.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        notes.unlink()
    with contextlib.suppress(OSError):
        notes.parent.rmdir()


def _hivemind_round(averagers) -> tuple[float, float]:
    """One step on both peers. Returns (whole round, all-reduce part) in seconds.

    The all-reduce part starts when either peer's step says `began_allreduce` (a flag in shared
    memory, polled every millisecond) and ends when both steps are done.
    """
    started = time.perf_counter()
    weights = (WEIGHT_A, WEIGHT_B)
    steps = [a.step(weight=w, wait=False, timeout=20.0) for a, w in zip(averagers, weights, strict=True)]
    allreduce_began = None
    while not all(s.done() for s in steps):
        if allreduce_began is None and any(s.began_allreduce for s in steps):
            allreduce_began = time.perf_counter()
        if time.perf_counter() - started > 40.0:
            for s in steps:
                s.cancel()
            raise BenchError("hivemind round did not finish within 40 s")
        time.sleep(0.001)
    finished = time.perf_counter()
    if any(s.result() is None for s in steps):
        raise BenchError("a hivemind averaging step failed")
    return finished - started, finished - (allreduce_began or started)


def measure_hivemind(floats: int, repeats: int) -> list[dict[str, Any]]:
    with Phase("hivemind", HIVEMIND_TIMEOUT_S) as phase:
        phase.spawn("pair", _hivemind_pair, floats, repeats)
        measured = phase.expect("pair", "timings")
    error = measured["max_abs_error"]
    wrong = "" if error < 1e-4 else f"; WRONG RESULT (max abs error {error:.3g})"
    details = {"max_abs_error": error, "min_matchmaking_time_s": HIVEMIND_MATCHMAKING_S}
    return [
        {
            "method": "hivemind averager round",
            "timings_s": measured["round"],
            "note": "step(): includes matchmaking (DHT group lookup + join, "
            f"min_matchmaking_time={HIVEMIND_MATCHMAKING_S} s, starts early when 2 joined){wrong}",
            "details": details,
        },
        {
            "method": "hivemind all-reduce part",
            "timings_s": measured["allreduce"],
            "note": f"same rounds, from began_allreduce (polled every 1 ms) to both done{wrong}",
            "details": details,
        },
    ]


# --- report ------------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], payload_bytes: int) -> None:
    """Add median, MB/s and ratio to gloo to each row (in place)."""
    gloo_median = statistics.median(next(r for r in rows if r["method"].startswith("gloo"))["timings_s"])
    for row in rows:
        median = statistics.median(row["timings_s"])
        row["median_s"] = median
        row["mb_per_s"] = payload_bytes / MB / median
        row["ratio_to_gloo"] = median / gloo_median


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'method':<28} {'median ms':>10} {'MB/s':>8} {'x gloo':>7}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        numbers = f"{1e3 * r['median_s']:>10.1f} {r['mb_per_s']:>8.0f} {r['ratio_to_gloo']:>7.1f}"
        print(f"{r['method']:<28} {numbers}  {r['note']}")


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = models[0] if models else ""
    versions = {}
    for package in ("torch", "hivemind", "numpy", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


def write_json(rows: list[dict[str, Any]], args: argparse.Namespace, payload_bytes: int) -> None:
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "floats": args.floats,
        "payload_bytes_one_way": payload_bytes,
        "mb": "10**6 bytes",
        "warmup": WARMUP,
        "repeats": args.repeats,
        "methods": rows,
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--floats", type=int, default=10_000_000, help="model size in float32 values")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per method (after 2 warm-ups)")
    parser.add_argument("--skip-hivemind", action="store_true", help="leave out hivemind's DecentralizedAverager")
    args = parser.parse_args(argv)
    if args.floats < 1 or args.repeats < 1:
        parser.error("--floats and --repeats must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Children inherit these: quiet hivemind, and gloo on loopback (its default is the hostname's address).
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d warns that the namespace has no hostname
    # A SIGTERM must still run the `finally` blocks that kill the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    payload_bytes = 4 * args.floats
    started = time.monotonic()
    try:
        rows = [measure_gossip(args.floats, args.repeats), measure_gloo(args.floats, args.repeats)]
        if not args.skip_hivemind:
            rows += measure_hivemind(args.floats, args.repeats)
    except BenchError as e:
        print(f"bench aborted: {e}", file=sys.stderr)
        return 1
    summarize(rows, payload_bytes)
    print(f"{args.floats:,} float32 ({payload_bytes / MB:.0f} MB one way), ", end="")
    print(f"median of {args.repeats} after {WARMUP} warm-ups\n")
    print_table(rows)
    write_json(rows, args, payload_bytes)
    print(f"\nwrote {RESULTS_PATH.relative_to(REPO_ROOT)} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
