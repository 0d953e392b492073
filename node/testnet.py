"""A whole local swarm on this machine: N real `fedswarm run` processes on 127.0.0.1.

Node 0 starts first; the others join by the full multiaddr it writes to its addrs.txt, exactly as
an operator would hand it over. Each node trains on its own partition of the task; the launcher only
watches through the nodes' control APIs, and at the end scores every node's final checkpoint on the
common test split (and, with --baseline, the same task trained alone and centralized).
"""

from __future__ import annotations

import json
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
from node.control_client import ControlUnavailable, fetch_json

NODE_START_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 10.0
POLL_S = 0.5


@dataclass(frozen=True, kw_only=True)
class TestnetOptions:
    nodes: int = 4
    task: str = "digits"
    rounds: int = 400
    alpha: float = 0.0
    local_steps: int = 2  # frequent averaging: on non-IID data, drift grows with local steps
    lr: float = 0.1
    seed: int = 0
    out: Path | None = None
    swarm: str = "testnet"
    record_ttl_s: float = 10.0
    baseline: bool = False
    as_json: bool = False
    timeout_s: float = 600.0


def node_command(options: TestnetOptions, index: int, data_dir: Path, join: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "node", "run", "--data-dir", str(data_dir), "--swarm", options.swarm]
    cmd += ["--listen", "/ip4/127.0.0.1/tcp/0", "--control", "127.0.0.1:0", "--record-ttl-s", str(options.record_ttl_s)]
    cmd += ["--task", options.task, "--partition", f"{index}/{options.nodes}", "--alpha", str(options.alpha)]
    cmd += ["--rounds", str(options.rounds), "--local-steps", str(options.local_steps), "--lr", str(options.lr)]
    cmd += ["--seed", str(options.seed), "--min-peers", str(options.nodes - 1)]
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
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")


class Testnet:
    def __init__(self, options: TestnetOptions, root: Path, say):
        self.options = options
        self.root = root
        self.say = say
        self.procs: list[subprocess.Popen] = []
        self.controls: list[tuple[str, int]] = []

    def data_dir(self, index: int) -> Path:
        return self.root / f"node-{index}"

    def start(self) -> None:
        join: list[str] = []
        for i in range(self.options.nodes):
            data_dir = self.data_dir(i)
            data_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("addrs.txt", "control.txt"):
                (data_dir / stale).unlink(missing_ok=True)
            with (data_dir / "node.log").open("ab") as log:
                cmd = node_command(self.options, i, data_dir, join)
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            if i == 0:
                join = wait_for_file(data_dir / "addrs.txt", self.procs[0], NODE_START_TIMEOUT_S).split()[:1]
                self.say(f"node-0 is up; the others join through {join[0]}")
        for i, proc in enumerate(self.procs):
            host, _, port = (
                wait_for_file(self.data_dir(i) / "control.txt", proc, NODE_START_TIMEOUT_S).strip().rpartition(":")
            )
            self.controls.append((host, int(port)))
        self.say(f"{self.options.nodes} nodes started; data dirs under {self.root}")

    def statuses(self) -> list[dict | None]:
        out: list[dict | None] = []
        for host, port in self.controls:
            try:
                out.append(fetch_json(host, port, "/status", timeout_s=2.0))
            except ControlUnavailable:
                out.append(None)
        return out

    def watch(self, timeout_s: float) -> bool:
        """Show progress until every node has done its rounds. False on timeout or a dead node."""
        deadline = time.monotonic() + timeout_s
        last_line = ""
        while time.monotonic() < deadline:
            dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                self.say(f"node-{dead[0]} exited with code {self.procs[dead[0]].returncode}; see its node.log")
                return False
            statuses = self.statuses()
            line = "  ".join(_progress_cell(i, s, self.options.rounds) for i, s in enumerate(statuses))
            if line != last_line:
                self.say(line)
                last_line = line
            if self.options.rounds and all(s and s.get("done") for s in statuses):
                return True
            time.sleep(POLL_S)
        self.say(f"not finished within {timeout_s:.0f} s")
        return False

    def stop(self) -> None:
        """SIGTERM every node (each writes its final checkpoint), then make sure they are gone."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _progress_cell(index: int, status: dict | None, rounds: int) -> str:
    if status is None:
        return f"node-{index}: down"
    acc = (status.get("test") or {}).get("accuracy")
    acc_text = "  -  " if acc is None else f"{acc:.3f}"
    return f"node-{index} r{status.get('round', 0):>3}/{rounds} acc {acc_text}"


def run_testnet(options: TestnetOptions) -> int:
    say = (lambda text: click.echo(text, err=True)) if options.as_json else click.echo
    root = options.out or Path(tempfile.mkdtemp(prefix="fedswarm-testnet-"))
    net = Testnet(options, root, say)
    started = time.monotonic()
    try:
        net.start()
        if options.rounds == 0:
            say("training until Ctrl-C (--rounds 0)")
            net.watch(float("inf"))
            return exitcodes.OK
        if not net.watch(options.timeout_s):
            return exitcodes.FAILURE
        final = net.statuses()
        peer_ids = [s["peer_id"] for s in final]
        exchanges = [s["exchanges"]["ok"] for s in final]
        net.stop()
        wall_s = time.monotonic() - started
        from node.results import score_testnet  # torch: only once there is something to score

        result = score_testnet(options, [net.data_dir(i) for i in range(options.nodes)], peer_ids, exchanges, say)
        result["wall_s"] = round(wall_s, 2)
        (root / "result.json").write_text(json.dumps(result, indent=2))
        click.echo(json.dumps(result) if options.as_json else _table(result))
        if options.out is not None:
            _write_report(root, say)
        return exitcodes.OK
    except KeyboardInterrupt:
        return exitcodes.OK
    except (RuntimeError, TimeoutError) as e:
        say(f"testnet failed: {e}; see the node.log files in {root}")
        return exitcodes.FAILURE
    finally:
        net.stop()
        if options.out is None:
            shutil.rmtree(root, ignore_errors=True)


def _write_report(root: Path, say) -> None:
    """The report of a kept testnet dir; a report that cannot be drawn does not fail the run."""
    from node.report import ReportError, build_report

    try:
        paths = build_report([root])
    except ReportError as e:
        say(f"no report: {e}")
        return
    say(f"report: {paths.html}  (image {paths.png})")


def _table(result: dict) -> str:
    rows = ["", f"{'node':<8}{'peer id':<50}{'swarm acc':>10}{'alone acc':>10}{'exchanges':>10}"]
    for i, node in enumerate(result["nodes"]):
        alone = node.get("local_only_accuracy")
        rows.append(
            f"node-{i:<3}{node['peer_id']:<50}{node['accuracy']:>10.4f}"
            f"{'-' if alone is None else format(alone, '.4f'):>10}{node['exchanges_ok']:>10}"
        )
    mean = sum(n["accuracy"] for n in result["nodes"]) / len(result["nodes"])
    rows.append(f"{'mean':<58}{mean:>10.4f}")
    if result.get("centralized_accuracy") is not None:
        rows.append(f"centralized (all data, same epochs): {result['centralized_accuracy']:.4f}")
    rows.append(f"wall time: {result['wall_s']:.1f} s  (accuracy on the common test split)")
    return "\n".join(rows)
