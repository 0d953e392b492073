"""Last-resort cleanup for the namespace e2e test, in a process of its own.

The test's fixture removes what it made when a test fails or times out. This watchdog covers the
cases where the fixture cannot run: pytest killed with SIGKILL or SIGTERM, or dying hard. Namespaces
made with `ip netns add` are bound under /run/netns and outlive the process (and CI's `unshare --net`)
that made them, and node daemons run in sessions of their own: without this, they would train on.

    python tests/e2e/netns_reaper.py STATE_FILE   (stdin: a pipe whose write end only the test holds)

It waits for EOF on stdin, which comes when the test closes the pipe or its process ends for whatever
reason, then kills every process whose command line names the run's own directory (node daemons, their
p2pd, status clients) and deletes the namespaces listed in STATE_FILE. Both steps are idempotent, so
the fixture calls the same functions for its own teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def processes_naming(root: str) -> list[int]:
    """PIDs of processes (other than this one) whose command line mentions `root`, a directory unique to one run."""
    needle = root.rstrip("/").encode() + b"/"  # what the run starts names files inside it
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def kill_processes_naming(root: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (pids := processes_naming(root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def delete_namespaces(names: list[str]) -> None:
    for name in names:
        if Path("/run/netns", name).exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=15, check=False)


def clean(state_file: Path) -> None:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return
    kill_processes_naming(state["root"])
    delete_namespaces(state["namespaces"])


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest; we act once it is gone
    state_file = Path(sys.argv[1])
    with contextlib.suppress(OSError):
        sys.stdin.buffer.read()  # returns at EOF: the test closed the pipe, or died
    clean(state_file)


if __name__ == "__main__":
    main()
