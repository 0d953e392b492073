"""Four hosts in their own network namespaces, joined by a Linux bridge: discovery, training, a cut
link that heals, and a crash followed by a restart from the checkpoint.

Each host is a network namespace with one veth (10.231.7.1X/24) whose other end sits on a bridge.
The bridge lives in a fifth namespace, the "switch", that the test also creates: nothing at all is
added to the namespace the test runs in, so the test is equally safe inside CI's loopback-only
namespace and on a developer's machine, and deleting the switch deletes the bridge and every veth.
Every node runs `fedswarm run` through `ip netns exec`; its control API is on the namespace's own
127.0.0.1, so the test asks it through `ip netns exec ... fedswarm status` too.

The tests share one swarm (module-scoped fixture) and run in file order: each starts from the state
the previous one left (4 hosts, all linked, all training). Needs root and `ip netns`; skipped otherwise.

Cleanup: the fixture stops every node (SIGTERM, then SIGKILL to its process group), kills whatever still
names the run's directory and deletes the namespaces (with the switch go the bridge and the veths),
also when a test fails or times out. A watchdog process (netns_reaper.py) does the same if pytest itself
is killed. Names carry a random tag, so parallel or leftover runs never collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.netns_reaper import delete_namespaces, kill_processes_naming
from tests.polling import wait_until
from training.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HOSTS = 4
SUBNET = "10.231.7"  # private, and only ever configured inside namespaces this test creates
PORT = 4001
RECORD_TTL_S = 4
CHECKPOINT_EVERY = 5
START_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 15.0


def host_addr(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def sh(*cmd: str, check: bool = True, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


def netns_unavailable() -> str | None:
    """Why this machine cannot run the test, or None if it can (tried with a throwaway namespace)."""
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, veth pairs and a bridge"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"fs-e2e-probe-{secrets.token_hex(4)}"
    try:
        added = sh("ip", "netns", "add", probe, check=False)
        if added.returncode != 0:
            return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
        bridge = sh("ip", "-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge in a namespace: {bridge.stderr.strip()}"
        veth = sh("ip", "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair in a namespace: {veth.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def initial_test_accuracy() -> float:
    """Test accuracy of the model every node starts from (the test split is common to all partitions)."""
    from node.config import TrainingConfig
    from node.learner import build_trainer, task_spec
    from training.tasks import load_task

    cfg = TrainingConfig(task="digits")
    return build_trainer(cfg, load_task(task_spec(cfg))).evaluate("test")["accuracy"]


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


class NodeHost:
    """One host: a namespace, its veth (switch side `v<i>`), its data dir and its `fedswarm run` process."""

    def __init__(self, index: int, ns: str, data_dir: Path):
        self.index = index
        self.ns = ns
        self.data_dir = data_dir
        self.switch_port = f"v{index}"
        self.addr = host_addr(index)
        self.peer_id: str | None = None
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.log_path = data_dir / "node.log"

    @property
    def name(self) -> str:
        return f"host{self.index}"

    def in_ns(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def start(self, *args: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("addrs.txt", "control.txt"):  # a killed node leaves them behind
            (self.data_dir / stale).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "node", "run", "--data-dir", str(self.data_dir), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSWARM_")}
        self.stopping = False
        with self.log_path.open("ab") as log:
            log.write(f"\n===== e2e: starting {' '.join(cmd)}\n".encode())
            log.flush()
            # `ip netns exec` execs the command: the pid is the node's, and its p2pd shares the new group
            self.proc = subprocess.Popen(
                self.in_ns(*cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return (self.data_dir / "control.txt").exists() and (self.data_dir / "addrs.txt").exists()

    def cli(self, command: str) -> dict | list | None:
        """`fedswarm <command> --json` run inside the host's namespace; None if the node does not answer."""
        cmd = self.in_ns(sys.executable, "-m", "node", command, "--json", "--data-dir", str(self.data_dir))
        try:
            done = sh(*cmd, check=False)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def status(self) -> dict:
        status = self.cli("status")
        assert isinstance(status, dict), f"{self.name} does not answer `fedswarm status`"
        return status

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        """The node's last checkpoint (written atomically; a read that races a save is retried)."""

        def read():
            with contextlib.suppress(CheckpointError):
                return load_checkpoint(self.data_dir / "checkpoint")
            return None

        return wait_until(read, timeout_s=10, what=f"a readable checkpoint of {self.name}", interval_s=0.05)

    def signal_group(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def kill_hard(self) -> None:
        """A crash: SIGKILL the node and its p2pd at once (no tombstone, no final checkpoint)."""
        assert self.proc is not None
        self.signal_group(signal.SIGKILL)
        self.proc.wait(10)

    def request_stop(self) -> None:
        """SIGTERM once: a second signal would make the node skip its clean shutdown."""
        if self.proc is not None and self.proc.poll() is None and not self.stopping:
            self.stopping = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 8.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.request_stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        self.signal_group(signal.SIGKILL)  # p2pd too, whatever happened above
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"(no log: {e})"


class NetnsSwarm:
    """The namespaces, the bridge, the veths and the node processes of one test run."""

    def __init__(self, root: Path, tag: str):
        self.root = root
        self.tag = tag
        self.state_file = root / "cleanup.json"  # what the reaper removes if this process cannot
        self.switch_ns = f"fs-e2e-{self.tag}-sw"
        self.hosts = [NodeHost(i, f"fs-e2e-{self.tag}-{i}", root / f"host{i}") for i in range(HOSTS)]
        self.namespaces: list[str] = []
        self.started = time.monotonic()
        self.events: list[str] = []

    # --- bookkeeping ---------------------------------------------------------------------------

    def note(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f} s] {message}"
        self.events.append(line)
        print(line, flush=True)

    def describe(self) -> str:
        parts = ["timeline:", *self.events]
        for host in self.hosts:
            parts += [f"\n----- {host.name} ({host.ns}, {host.addr}) {host.log_path} (tail) -----", host.log_tail()]
        return "\n".join(parts)

    # --- the network -----------------------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        self.namespaces.append(name)
        self.save_state()  # before it exists: nothing made is ever missing from the state file
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build_network(self) -> None:
        self.add_namespace(self.switch_ns)
        sh("ip", "-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch_ns, "link", "set", "br0", "up")
        for host in self.hosts:
            self.add_namespace(host.ns)
            sw = ("ip", "-n", self.switch_ns, "link")
            sh(*sw, "add", host.switch_port, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            sh(*sw, "set", host.switch_port, "master", "br0")
            sh(*sw, "set", host.switch_port, "up")
            sh("ip", "-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            sh("ip", "-n", host.ns, "link", "set", "eth0", "up")
        self.note(f"network up: switch {self.switch_ns}, hosts {', '.join(h.ns for h in self.hosts)}")

    def cut(self, host: NodeHost) -> None:
        sh("ip", "-n", self.switch_ns, "link", "set", host.switch_port, "down")
        self.note(f"cut {host.name}: switch port {host.switch_port} down")

    def heal(self, host: NodeHost) -> None:
        sh("ip", "-n", self.switch_ns, "link", "set", host.switch_port, "up")
        self.note(f"healed {host.name}: switch port {host.switch_port} up")

    # --- the nodes -------------------------------------------------------------------------------

    def node_args(self, host: NodeHost, *, min_peers: int) -> list[str]:
        args = ["--swarm", "e2e", "--listen", f"/ip4/{host.addr}/tcp/{PORT}", "--control", "127.0.0.1:0"]
        args += ["--record-ttl-s", str(RECORD_TTL_S), "--task", "digits", "--partition", f"{host.index}/{HOSTS}"]
        args += ["--alpha", "0.5", "--rounds", "0", "--min-peers", str(min_peers)]
        args += ["--checkpoint-every", str(CHECKPOINT_EVERY)]
        if host.index != 0:
            bootstrap = self.hosts[0]
            args += ["--join", f"/ip4/{bootstrap.addr}/tcp/{PORT}/p2p/{bootstrap.peer_id}"]
        return args

    def create_identities(self) -> None:
        for host in self.hosts:
            host.data_dir.mkdir(parents=True, exist_ok=True)
            done = sh(sys.executable, "-m", "node", "id", "--data-dir", str(host.data_dir), timeout_s=60)
            host.peer_id = done.stdout.strip()

    def start(self, host: NodeHost, *, min_peers: int) -> None:
        host.start(*self.node_args(host, min_peers=min_peers))

    def wait_ready(self, hosts: list[NodeHost]) -> None:
        for host in hosts:
            wait_until(host.ready, timeout_s=START_TIMEOUT_S, what=f"{host.name} to start")
        self.note(f"started: {', '.join(h.name for h in hosts)}")

    def statuses(self, hosts: list[NodeHost] | None = None) -> dict[str, dict | None]:
        """`fedswarm status --json` of several hosts at once (one `ip netns exec` each, in parallel)."""
        hosts = self.hosts if hosts is None else hosts
        procs = {
            h.name: subprocess.Popen(
                h.in_ns(sys.executable, "-m", "node", "status", "--json", "--data-dir", str(h.data_dir)),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for h in hosts
        }
        result: dict[str, dict | None] = {}
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                result[name] = None
                continue
            result[name] = json.loads(out) if proc.returncode == 0 else None
        return result

    def status_of(self, host: NodeHost) -> dict:
        status = self.statuses([host])[host.name]
        assert status is not None, f"{host.name} does not answer `fedswarm status`"
        return status

    def wait_all(self, hosts: list[NodeHost], ok, *, timeout_s: float, what: str, interval_s: float = 0.5) -> dict:
        """Poll the hosts' status until ok(status) holds for every one; returns {name: status}."""
        seen: dict[str, object] = {}

        def check():
            statuses = self.statuses(hosts)
            seen.clear()
            seen.update({n: s and _summary(s) for n, s in statuses.items()})
            return statuses if all(s is not None and ok(s) for s in statuses.values()) else None

        try:
            found = wait_until(check, timeout_s=timeout_s, what=what, interval_s=interval_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast statuses: {seen}") from None
        self.note(f"{what}: {found and {n: _summary(s) for n, s in found.items()}}")
        return found

    def watch(self, conditions: dict, *, since: float, limit_s: float) -> dict[str, float | None]:
        """Poll every host at once and note, for each named (hosts, ok) condition, how many seconds after
        `since` ok(status) first held for all its hosts in one poll. Returns when all have held, or at
        `limit_s`; a condition that never held maps to None."""
        first: dict[str, float | None] = dict.fromkeys(conditions)
        deadline = since + limit_s
        while any(t is None for t in first.values()) and time.monotonic() < deadline:
            statuses = self.statuses()
            now = time.monotonic()
            for what, (hosts, ok) in conditions.items():
                if first[what] is None and all((st := statuses[h.name]) is not None and ok(st) for h in hosts):
                    first[what] = now - since
                    self.note(f"{what}: {first[what]:.1f} s ({ {h.name: _summary(statuses[h.name]) for h in hosts} })")
            time.sleep(0.2)
        return first

    def distance(self, host: NodeHost) -> float:
        """Relative L2 distance of host's checkpointed parameters to the mean of the others' checkpoints.

        The four checkpoints are read back to back (each node rewrites its own every 5 rounds, a few
        times a second), so they are snapshots of nearly the same moment."""
        own = flat(host.checkpoint()[0])
        others = np.mean([flat(h.checkpoint()[0]) for h in self.hosts if h is not host], axis=0)
        return float(np.linalg.norm(own - others) / np.linalg.norm(others))

    def save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"root": str(self.root), "namespaces": self.namespaces}))
        os.replace(tmp, self.state_file)

    def teardown(self) -> None:
        for host in self.hosts:  # all at once: each clean stop takes up to a few seconds
            host.request_stop()
        for host in self.hosts:
            host.stop()
        kill_processes_naming(str(self.root))  # anything left that names this run's directory (an orphaned p2pd)
        delete_namespaces(self.namespaces)  # with the switch go the bridge and every veth


def _summary(status: dict) -> dict:
    return {
        "peers": status.get("peers"),
        "round": status.get("round"),
        "acc": round(status.get("test", {}).get("accuracy", float("nan")), 3),
        "ok": status.get("exchanges", {}).get("ok"),
    }


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsSwarm]:
    if reason := netns_unavailable():
        pytest.skip(reason)
    tag = secrets.token_hex(3)  # unique per run: parallel or leftover runs never collide
    net = NetnsSwarm(tmp_path_factory.mktemp(f"netns-{tag}-"), tag)
    net.save_state()
    # A watchdog that cleans up even if this process is killed outright (then the fixture cannot).
    reaper = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("netns_reaper.py")), str(net.state_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        try:
            net.build_network()
            net.create_identities()
            first, rest = net.hosts[0], net.hosts[1:]
            net.start(first, min_peers=HOSTS - 1)
            net.wait_ready([first])
            for host in rest:
                net.start(host, min_peers=HOSTS - 1)
            net.wait_ready(rest)
        except BaseException:
            print(net.describe())  # shown with the setup error
            raise
        yield net
    finally:
        try:
            net.teardown()
        finally:
            assert reaper.stdin is not None
            reaper.stdin.close()  # EOF: the reaper checks once more, finds nothing, and exits
            reaper.wait(30)


@pytest.mark.timeout(150)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch, building the reference model
def test_hosts_discover_each_other_and_train_together(swarm: NetnsSwarm):
    hosts = swarm.hosts
    found = swarm.wait_all(hosts, lambda s: s["peers"] == HOSTS - 1, timeout_s=60, what="every host to see 3 peers")
    for host in hosts:
        status = found[host.name]
        assert status["peer_id"] == host.peer_id
        assert status["swarm"] == "e2e"
        assert any(a.startswith(f"/ip4/{host.addr}/tcp/{PORT}/p2p/") for a in status["addrs"]), status["addrs"]
        listed = host.cli("peers")
        assert listed is not None
        assert {p["peer_id"] for p in listed} == {h.peer_id for h in hosts if h is not host}

    # The common starting point: every node builds the same initial model (same init seed); a host that
    # joins once the others have trained starts from a peer's model instead, so its own start_test is no baseline.
    fresh = initial_test_accuracy()
    for s in found.values():
        if s["started_from"] == "init" and s["start_test"]:
            assert s["start_test"]["accuracy"] == pytest.approx(fresh, abs=1e-6)
    target = max(fresh + 0.3, 0.7)

    def learnt(s: dict) -> bool:
        return s["test"].get("accuracy", 0.0) >= target and s["exchanges"]["ok"] > 0

    swarm.wait_all(hosts, learnt, timeout_s=90, what=f"every host to learn (test accuracy >= {target:.3f})")


# How long a healthy swarm may take to route around a host whose link went silent. A silent link (no RST,
# no FIN: the cable is pulled) is only noticed through timeouts; these bounds allow one DHT RPC timeout
# (5 s) plus the record lifetime and poll slack, far less than the 30 s exchange deadline.
REROUTE_S = 20.0


@pytest.mark.timeout(300)
def test_a_cut_host_trains_alone_then_rejoins_and_reconverges(swarm: NetnsSwarm):
    cut, others = swarm.hosts[3], swarm.hosts[:3]
    swarm.wait_all(swarm.hosts, lambda s: s["peers"] == HOSTS - 1, timeout_s=30, what="a whole swarm before the cut")
    connected = statistics.median(swarm.distance(cut) for _ in range(5))
    swarm.note(f"distance of host3 to the others' mean while connected: {connected:.4f}")
    at_cut = swarm.statuses()
    assert all(s is not None for s in at_cut.values()), at_cut
    ok_at_cut = {n: s["exchanges"]["ok"] for n, s in at_cut.items()}
    swarm.cut(cut)
    cut_at = time.monotonic()

    # What should happen, each within its bound of the cut (watched together, so each time is its own).
    bounds = {
        "cut host shows 0 peers": ([cut], lambda s: s["peers"] == 0, 3 * RECORD_TTL_S + 3),
        "cut host trains on alone (+30 rounds)": ([cut], lambda s: s["round"] >= at_cut[cut.name]["round"] + 30, 20),
        "the other three drop it (2 peers each)": (others, lambda s: s["peers"] == HOSTS - 2, 20),
        "the other three keep exchanging (+10 ok each)": (
            others,
            lambda s: s["exchanges"]["ok"] >= ok_at_cut[_name(swarm, s)] + 10,
            20,
        ),
    }
    took = swarm.watch({what: (hosts, ok) for what, (hosts, ok, _) in bounds.items()}, since=cut_at, limit_s=90)
    report = "\n".join(
        f"  {what}: {'never' if took[what] is None else f'{took[what]:.1f} s'} after the cut (bound {bound:.0f} s)"
        for what, (_, _, bound) in bounds.items()
    )
    swarm.note("after the cut:\n" + report)
    assert all(t is not None for t in took.values()), "after the cut:\n" + report
    too_slow = [what for what, (_, _, bound) in bounds.items() if took[what] > bound]

    # Let it drift on its own label-skewed part long enough to be clearly apart from the swarm.
    alone_from = swarm.status_of(cut)["round"]
    swarm.wait_all([cut], lambda s: s["round"] >= alone_from + 300, timeout_s=60, what="cut host: 300 rounds alone")
    still = swarm.statuses([cut])[cut.name]
    assert still is not None and still["peers"] == 0, still

    drift = statistics.median(swarm.distance(cut) for _ in range(5))
    swarm.note(f"distance of the cut host to the others' mean at the end of the cut: {drift:.4f}")
    assert drift > 3 * connected, f"training alone did not move it apart ({drift:.4f} vs {connected:.4f} connected)"

    swarm.heal(cut)
    healed_at = time.monotonic()
    swarm.wait_all([cut], lambda s: s["peers"] == HOSTS - 1, timeout_s=60, what="cut host: 3 peers again")
    swarm.wait_all(others, lambda s: s["peers"] == HOSTS - 1, timeout_s=30, what="others: 3 peers again")
    swarm.note(f"rejoined {time.monotonic() - healed_at:.1f} s after the link came back")

    def reconverged() -> float | None:
        d = statistics.median(swarm.distance(cut) for _ in range(3))
        return d if d < 0.5 * drift else None

    try:
        after = wait_until(reconverged, timeout_s=40, what="the rejoined host's parameters to reconverge", interval_s=1)
    except AssertionError as e:
        raise AssertionError(
            f"{e}; distance at the end of the cut {drift:.4f}, now {swarm.distance(cut):.4f}"
        ) from None
    swarm.note(f"distance after rejoining: {after:.4f} (end of cut: {drift:.4f}, connected before: {connected:.4f})")
    assert not too_slow, "the swarm routed around the cut link too slowly:\n" + report


@pytest.mark.timeout(150)
def test_a_killed_host_restarts_from_its_checkpoint_and_rejoins(swarm: NetnsSwarm):
    victim = swarm.hosts[1]
    swarm.wait_all(swarm.hosts, lambda s: s["peers"] == HOSTS - 1, timeout_s=60, what="a whole swarm before the kill")
    swarm.wait_all([victim], lambda s: s["round"] >= 2 * CHECKPOINT_EVERY, timeout_s=30, what="a checkpoint to exist")
    victim.kill_hard()
    swarm.note(f"killed {victim.name} (SIGKILL to its process group)")
    assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
    _, saved = victim.checkpoint()
    assert saved["peer_id"] == victim.peer_id

    swarm.start(victim, min_peers=0)
    swarm.wait_ready([victim])
    status = victim.status()
    assert status["peer_id"] == victim.peer_id
    assert status["started_from"] == "checkpoint"
    assert status["round"] >= saved["round"]
    swarm.note(f"restarted {victim.name} from its checkpoint at round {saved['round']} (now {status['round']})")

    swarm.wait_all(swarm.hosts, lambda s: s["peers"] == HOSTS - 1, timeout_s=60, what="the restarted host to rejoin")
    ok_now = victim.status()["exchanges"]["ok"]
    swarm.wait_all([victim], lambda s: s["exchanges"]["ok"] >= ok_now + 3, timeout_s=30, what="it to exchange again")


def _name(swarm: NetnsSwarm, status: dict) -> str:
    return next(h.name for h in swarm.hosts if h.peer_id == status["peer_id"])
