"""Real `fedswarm run` processes for integration tests, with teardown that always runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from node.control_client import ControlUnavailable, fetch_json
from tests.polling import wait_until

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class NodeProcess:
    """One node daemon in its own process group (so a SIGKILL can take p2pd down with it, like a crash)."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        swarm: str = "itest",
        record_ttl_s: float = 4.0,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        module: str = "node",
    ):
        """`command` + `env` run a node exactly as given (e.g. a compose service); otherwise the
        test defaults (loopback, free ports, short record lifetime) plus `args`. `module` is what
        `python -m` runs: another release of the node, for instance (see tests/future_node.py)."""
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("addrs.txt", "control.txt"):
            (data_dir / stale).unlink(missing_ok=True)
        self.log_path = data_dir / "node.log"
        if command is None:
            command = ["run", "--data-dir", str(data_dir), "--swarm", swarm]
            command += ["--control", "127.0.0.1:0", "--record-ttl-s", str(record_ttl_s), *args]
            if not any(a == "--listen" for a in args):
                command += ["--listen", "/ip4/127.0.0.1/tcp/0"]
        cmd = [sys.executable, "-m", module, *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSWARM_")} | (env or {})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.peer_id: str | None = None
        self.addrs: list[str] = []
        self.control: tuple[str, int] | None = None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> NodeProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            return (self.data_dir / "control.txt").exists() and (self.data_dir / "addrs.txt").exists()

        wait_until(ready, timeout_s=timeout_s, what=f"node in {self.data_dir} to start")
        host, _, port = (self.data_dir / "control.txt").read_text().strip().rpartition(":")
        self.control = (host, int(port))
        self.addrs = (self.data_dir / "addrs.txt").read_text().split()
        self.peer_id = self.status()["peer_id"]
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def status(self) -> dict:
        return fetch_json(*self.control, "/status")

    def peer_ids(self) -> set[str] | None:
        """The peer IDs this node lists, or None if it does not answer."""
        try:
            return {p["peer_id"] for p in fetch_json(*self.control, "/peers", timeout_s=2.0)}
        except ControlUnavailable:
            return None

    def p2pd_pids(self) -> list[int]:
        return children_of(self.proc.pid)

    def terminate(self, timeout_s: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill_hard(self) -> None:
        """A crash: SIGKILL the daemon and its p2pd at once (no goodbye to the swarm)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(8)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # p2pd too, whatever happened above
        if self.proc.poll() is None:
            self.proc.wait(10)


def final_test_accuracies(nodes: list[NodeProcess], timeout_s: float = 240.0) -> list[float]:
    """Each node's test accuracy once every node has finished, scored on the model it holds then.

    Finished nodes still take in exchanges that peers settling a moment later started, and rescore within
    a second; reading `test` as soon as `done` shows could report the model before that (measured: 0.95
    reported, 0.964 held). Once all are done nobody starts an exchange, so the scores stop moving.
    """
    for node in nodes:
        wait_until(lambda n=node: n.status()["done"], timeout_s=timeout_s, what=f"{node.data_dir.name} to finish")
    return [
        wait_until(
            lambda n=node: (s := n.status())["scores_current"] and (s["test"]["accuracy"],),
            timeout_s=30,
            what=f"{node.data_dir.name} to score the model it holds",
        )[0]
        for node in nodes
    ]
