"""How much does one poisoner hurt a digits swarm, and how much of that does each defence take back?

For each defence (none = the plain gossip mean, the validation gate, the robust rules) and each
attack (none, sign-flipped x10, Gaussian noise, a constant model), one swarm of 5 honest node
processes (Dirichlet 0.5 partitions of digits, 300 rounds) plus, unless the attack is "none", one
malicious member: a real libp2p host that speaks the protocol correctly and always serves its
poisoned model (tests/integration/attackers.py). Reported: the honest nodes' test accuracy.

Starts libp2p daemons, so run it in a loopback-only namespace:

    ../shared/tools/inns .venv/bin/python bench/poisoning.py [--defences none,gate] [--attacks ...] [--repeat N]

Prints a table and writes bench/results/poisoning.json. About 30 s per cell on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.integration.attackers import ATTACKS, POISONING_SWARM, honest_accuracies  # noqa: E402

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "poisoning.json"
HONEST = 5
DEFENCES = {
    "none": (),
    "gate": ("--gate-factor", "3"),
    "median": ("--robust", "median", "--robust-k", "4"),
    "trimmed_mean": ("--robust", "trimmed_mean", "--robust-k", "4"),
    "centered_clip": ("--robust", "centered_clip", "--robust-k", "4"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defences", default=",".join(DEFENCES), help=f"comma-separated, of {list(DEFENCES)}")
    parser.add_argument(
        "--attacks", default="none," + ",".join(ATTACKS), help=f"comma-separated: none, {list(ATTACKS)}"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (to see the run-to-run spread)")
    args = parser.parse_args()
    defences, attacks = args.defences.split(","), args.attacks.split(",")
    rows = []
    print(f"{'defence':14s} {'attack':14s} {'mean':>6s} {'min':>6s} {'max':>6s} {'wall s':>7s}", flush=True)
    for defence in defences:
        for attack in attacks * args.repeat:
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="fedswarm-poisoning-") as workdir:
                node_args = (*POISONING_SWARM, *DEFENCES[defence])
                acc = honest_accuracies(Path(workdir), node_args, None if attack == "none" else attack, HONEST)
            wall = time.monotonic() - started
            rows.append({"defence": defence, "attack": attack, "accuracies": acc, "wall_s": round(wall, 1)})
            print(
                f"{defence:14s} {attack:14s} {statistics.mean(acc):6.3f} {min(acc):6.3f} {max(acc):6.3f} {wall:7.0f}",
                flush=True,
            )
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": {
            "honest_nodes": HONEST,
            "swarm_args": POISONING_SWARM,
            "defences": {d: DEFENCES[d] for d in defences},
        },
        "rows": rows,
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS_PATH.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
