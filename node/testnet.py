"""A whole local swarm on this machine: N real `fedswarm run` processes on 127.0.0.1.

Node 0 starts first; the others join by the full multiaddr it writes to its addrs.txt, exactly as
an operator would hand it over. The launcher only watches through the nodes' control APIs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from node import exitcodes
from node.control_client import ControlUnavailable, fetch_json, format_peers

NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 10.0
POLL_S = 0.25


@dataclass(frozen=True, kw_only=True)
class TestnetOptions:
    nodes: int = 3
    out: Path | None = None
    swarm: str = "testnet"
    record_ttl_s: float = 10.0
    exit_when_converged: bool = False
    timeout_s: float = 60.0


def node_command(data_dir: Path, *, swarm: str, record_ttl_s: float, join: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "node", "run", "--data-dir", str(data_dir), "--swarm", swarm]
    cmd += [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--control",
        "127.0.0.1:0",
        "--record-ttl-s",
        str(record_ttl_s),
    ]
    for addr in join:
        cmd += ["--join", addr]
    return cmd


def wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float) -> str:
    """Poll until `path` exists (the node writes it atomically) or the node died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with code {proc.returncode} before writing {path.name}")
        time.sleep(POLL_S)
    raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")


class Testnet:
    def __init__(self, options: TestnetOptions, root: Path):
        self.options = options
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.controls: list[tuple[str, int]] = []

    def start(self) -> None:
        join: list[str] = []
        for i in range(self.options.nodes):
            data_dir = self.root / f"node-{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("addrs.txt", "control.txt"):
                (data_dir / stale).unlink(missing_ok=True)
            log = (data_dir / "node.log").open("ab")
            cmd = node_command(data_dir, swarm=self.options.swarm, record_ttl_s=self.options.record_ttl_s, join=join)
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            host, _, port = (
                wait_for_file(data_dir / "control.txt", self.procs[-1], NODE_START_TIMEOUT_S).strip().rpartition(":")
            )
            self.controls.append((host, int(port)))
            if i == 0:
                join = wait_for_file(data_dir / "addrs.txt", self.procs[0], NODE_START_TIMEOUT_S).split()[:1]
                click.echo(f"node 0 is up; the others join through {join[0]}")
        click.echo(f"{self.options.nodes} nodes started; data dirs under {self.root}")

    def peer_counts(self) -> list[int | None]:
        counts: list[int | None] = []
        for host, port in self.controls:
            try:
                counts.append(len(fetch_json(host, port, "/peers", timeout_s=2.0)))
            except ControlUnavailable:
                counts.append(None)
        return counts

    def wait_converged(self, timeout_s: float) -> bool:
        want = self.options.nodes - 1
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            counts = self.peer_counts()
            if counts != last:
                shown = " ".join(f"node-{i}:{'-' if c is None else c}" for i, c in enumerate(counts))
                click.echo(f"peers seen  {shown}  (want {want} each)")
                last = counts
            if all(c == want for c in counts):
                return True
            time.sleep(POLL_S)
        return False

    def show_tables(self) -> None:
        for i, (host, port) in enumerate(self.controls):
            status = fetch_json(host, port, "/status")
            click.echo(f"\nnode-{i}  {status['peer_id']}")
            click.echo(format_peers(fetch_json(host, port, "/peers")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_testnet(options: TestnetOptions) -> int:
    root = options.out or Path(tempfile.mkdtemp(prefix="fedswarm-testnet-"))
    net = Testnet(options, root)
    try:
        net.start()
        converged = net.wait_converged(options.timeout_s)
        if not converged:
            click.echo(f"the swarm did not converge within {options.timeout_s:.0f} s; see node.log files in {root}")
            return exitcodes.FAILURE
        net.show_tables()
        click.echo(f"\nall {options.nodes} nodes see each other.")
        if not options.exit_when_converged:
            click.echo("running; Ctrl-C stops every node.")
            while all(p.poll() is None for p in net.procs):
                time.sleep(1.0)
        return exitcodes.OK
    except KeyboardInterrupt:
        return exitcodes.OK
    except (RuntimeError, TimeoutError) as e:
        click.echo(f"testnet failed: {e}; see node.log files in {root}", err=True)
        return exitcodes.FAILURE
    finally:
        net.stop()
        click.echo("all nodes stopped.")
        if options.out is None:
            shutil.rmtree(root, ignore_errors=True)
