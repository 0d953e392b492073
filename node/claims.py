"""Replicas that all get the same configuration (`docker compose up --scale node=8`) still need a part
of the data each: every node claims the lowest free part in a directory they share.

A claim is a file `part-<i>` created with O_EXCL (so two nodes can never win the same part) that
holds the claimer's peer ID; a restarted node finds its own claim again.
"""

from __future__ import annotations

import os
from pathlib import Path


class NoFreePart(Exception):
    pass


def claim_partition(claim_dir: Path, count: int, peer_id: str) -> int:
    """The index of this node's part of `count`, claiming the lowest free one if it has none yet."""
    claim_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = claim_dir / f"part-{index}"
        try:
            if path.read_text().strip() == peer_id:
                return index  # ours from an earlier run
            continue
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # someone was faster
        with os.fdopen(fd, "w") as f:
            f.write(peer_id + "\n")
        return index
    raise NoFreePart(f"all {count} parts in {claim_dir} are claimed by other nodes; raise the count in 'partition'")
