"""A node's history as JSON lines in DATA_DIR/metrics.jsonl: what `fedswarm report` and the live page draw.

One object per line, each with "t" (unix seconds) and "event":
  {"event": "start", "peer_id", "swarm", "task", "started_from", "round"}
  {"event": "round", "round", "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "weight", "peers"}
  {"event": "exchange", "round", "peer", "role" (caller|callee), "outcome" (ok|busy|failed|rejected),
   "bytes", "duration_s", "reason"}
Appended and flushed line by line, so a crash loses at most the line being written, and a reader
skips a torn last line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("fedswarm.metrics")

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", buffering=1, encoding="utf-8")  # line-buffered: one write per event

    def append(self, event: str, **fields: Any) -> None:
        try:
            self._file.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}) + "\n")
        except (OSError, ValueError) as e:  # a full disk must not stop training
            log.warning("cannot append to %s: %s", self.path, e)

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All well-formed events of a metrics file (a torn or garbled line is skipped)."""
    events = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
    return events
