"""`fedswarm report` on synthetic metrics.jsonl files: the counting is exact, the PNG is a real picture,
the HTML is self-contained and carries every node's numbers."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageStat

from node import exitcodes
from node.cli import main
from node.report import ReportError, build_report, collect, exchange_edges, node_summary, short_id

pytestmark = pytest.mark.timeout(60)

PEERS = [
    "QmVeyhs9fkcc6rv5fRRBcVzw6keNPDbHu6pUd1hpr7pbYa",
    "QmPrFMD9BTM2avLox2QeC78J6bJnq8XVM2YxFfEy4314b4",
    "QmSzk7LJvLXyF4Mbna7cdGa4R5arYNyvxYZgKcaJT7kzGH",
]
OUTSIDER = "12D3KooWGRUVh2ntkXcXHCpbRfK1tz8HTf3PbvJwNAkm8vdUbLKb"
T0 = 1_700_000_000.0
ROUNDS = 40
FINAL = [0.9123, 0.9345, 0.9012]  # scored final checkpoints in result.json
ALONE = [0.61, 0.72, 0.55]
CENTRALIZED = 0.9777

# Who calls whom, round by round (the callee logs the same exchange as "callee"):
#   node-0 -> node-1 every round (40 ok), node-1 -> node-2 every 2nd round (20 ok),
#   node-2 -> node-0 every 4th round (10 ok) and busy on the others' 4th+2,
#   an outsider (not in the report) -> node-0 on rounds 1..5 (5 ok, logged only by node-0),
#   node-1 -> node-0 failed on rounds 3 and 6, rejected on round 9 (not counted).
EXPECTED_EDGES = {
    tuple(sorted((PEERS[0], PEERS[1]))): 40,
    tuple(sorted((PEERS[1], PEERS[2]))): 20,
    tuple(sorted((PEERS[0], PEERS[2]))): 10,
    tuple(sorted((PEERS[0], OUTSIDER))): 5,
}


def _exchange(t: float, r: int, peer: str, role: str, outcome: str, reason: str = "") -> dict:
    return {"t": t, "event": "exchange", "round": r, "peer": peer, "role": role, "outcome": outcome,
            "bytes": 38440 if outcome == "ok" else 0, "duration_s": 0.005, "reason": reason}  # fmt: skip


def synthetic_histories() -> list[list[dict]]:
    events: list[list[dict]] = [[] for _ in PEERS]
    for i, peer in enumerate(PEERS):
        start = T0 + i * 0.5
        events[i].append({"t": start, "event": "start", "peer_id": peer, "swarm": "s", "task": "digits",
                          "started_from": "init", "round": 0})  # fmt: skip
        for r in range(ROUNDS + 1):
            acc = 0.1 + (0.75 + 0.05 * i) * (1 - math.exp(-r / 8)) + 0.02 * math.sin(r + i)
            loss = 2.3 * math.exp(-r / 12) + 0.25 + 0.05 * i
            events[i].append({"t": start + 1 + 0.1 * r, "event": "round", "round": r, "train_loss": loss * 0.9,
                              "val_loss": loss * 1.1, "val_accuracy": acc - 0.03, "test_loss": loss,
                              "test_accuracy": acc, "weight": 1.0, "peers": 2})  # fmt: skip
    events[1][10]["test_loss"] = float("nan")  # a diverging step must not break the report

    def both(caller: int, callee: int, r: int, outcome: str, reason: str = "") -> None:
        t = T0 + 1.2 + 0.1 * r + 0.01 * caller
        events[caller].append(_exchange(t, r, PEERS[callee], "caller", outcome, reason))
        if outcome in ("ok", "rejected"):  # busy and failed never reach the callee's log
            events[callee].append(_exchange(t, r, PEERS[caller], "callee", outcome, reason))

    for r in range(1, ROUNDS + 1):
        both(0, 1, r, "ok")
        if r % 2 == 0:
            both(1, 2, r, "ok")
        if r % 4 == 0:
            both(2, 0, r, "ok")
        elif r % 4 == 2:
            both(2, 0, r, "busy")
        if r <= 5:
            events[0].append(_exchange(T0 + 1.25 + 0.1 * r, r, OUTSIDER, "callee", "ok"))
    both(1, 0, 3, "failed", "timed out after 30 s")
    both(1, 0, 6, "failed", "timed out after 30 s")
    both(1, 0, 9, "rejected", "fingerprint mismatch")
    for node_events in events:
        node_events.sort(key=lambda e: e["t"])
    return events


def write_testnet(root: Path, *, with_result: bool = True) -> Path:
    for i, node_events in enumerate(synthetic_histories()):
        (root / f"node-{i}").mkdir(parents=True)
        lines = [json.dumps(e) for e in node_events]
        (root / f"node-{i}" / "metrics.jsonl").write_text("\n".join(lines) + '\n{"t": 1, "event": "ro')  # torn tail
    if with_result:
        nodes = [{"peer_id": p, "accuracy": FINAL[i], "exchanges_ok": 0, "local_only_accuracy": ALONE[i]}
                 for i, p in enumerate(PEERS)]  # fmt: skip
        (root / "result.json").write_text(json.dumps({"nodes": nodes, "centralized_accuracy": CENTRALIZED}))
    return root


# --- pure counting ---------------------------------------------------------------------------------


def test_edges_count_each_ok_exchange_once_from_the_caller() -> None:
    histories = dict(zip(PEERS, synthetic_histories(), strict=True))
    assert exchange_edges(histories) == EXPECTED_EDGES


def test_edges_use_the_callee_log_only_for_callers_outside_the_report() -> None:
    histories = dict(zip(PEERS, synthetic_histories(), strict=True))
    only_0_and_1 = {p: histories[p] for p in PEERS[:2]}
    # node-2 is now outside: its 10 calls to node-0 and 20 callee records at node-1 count from the other side
    assert exchange_edges(only_0_and_1) == {
        tuple(sorted((PEERS[0], PEERS[1]))): 40,
        tuple(sorted((PEERS[1], PEERS[2]))): 20,
        tuple(sorted((PEERS[0], PEERS[2]))): 10,
        tuple(sorted((PEERS[0], OUTSIDER))): 5,
    }
    # node-2 alone: its own calls, and node-1's calls as logged by node-2 (the callee)
    assert exchange_edges({PEERS[2]: histories[PEERS[2]]}) == {
        tuple(sorted((PEERS[1], PEERS[2]))): 20,
        tuple(sorted((PEERS[0], PEERS[2]))): 10,
    }
    assert exchange_edges({}) == {}


def test_node_summary_prefers_the_scored_checkpoint(tmp_path: Path) -> None:
    data = collect([write_testnet(tmp_path / "tn")])
    assert [n.label for n in data.nodes] == ["node-0", "node-1", "node-2"]
    assert [n.peer_id for n in data.nodes] == PEERS
    first = node_summary(data.nodes[0], data.result)
    assert first["final_accuracy"] == FINAL[0] and first["final_source"] == "final checkpoint"
    assert first["local_only_accuracy"] == ALONE[0]
    assert first["rounds"] == ROUNDS
    # node-0: 40 calls + 10 callee from node-2 + 5 from the outsider ok; 10 busy as node-2's callee never logged
    assert first["exchanges"] == {"ok": 55, "busy": 0, "failed": 0, "rejected": 1}
    assert node_summary(data.nodes[1], data.result)["exchanges"] == {"ok": 60, "busy": 0, "failed": 2, "rejected": 1}
    assert node_summary(data.nodes[2], data.result)["exchanges"] == {"ok": 30, "busy": 10, "failed": 0, "rejected": 0}
    last_round = data.nodes[0].rounds[-1]["test_accuracy"]
    assert node_summary(data.nodes[0], None) == {**first, "final_accuracy": last_round, "final_source": "last round",
                                                 "local_only_accuracy": None}  # fmt: skip


def test_short_id_keeps_the_distinguishing_tail() -> None:
    assert short_id(PEERS[0]) == "…" + PEERS[0][-6:]
    assert short_id("abc") == "abc"


# --- the files ---------------------------------------------------------------------------------------


def test_report_png_and_html(tmp_path: Path) -> None:
    root = write_testnet(tmp_path / "tn")
    paths = build_report([root])
    assert paths.png == root / "report.png" and paths.html == root / "report.html"

    png = paths.png.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000
    with Image.open(paths.png) as image:
        image.load()
        assert image.width >= 1200 and image.height >= 700
        stats = ImageStat.Stat(image.convert("L"))
        assert stats.stddev[0] > 10, "the figure is (nearly) one colour"

    page = paths.html.read_text(encoding="utf-8")
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert not re.search(r"https?://|//[\w-]+\.", page.replace(base64.b64encode(png).decode(), ""))
    for i, peer in enumerate(PEERS):
        assert f"node-{i}" in page and peer in page
        assert f"{FINAL[i]:.4f}" in page
        assert f"{ALONE[i]:.4f}" in page
    assert f"{CENTRALIZED:.4f}" in page
    assert f"{sum(ALONE) / 3:.4f}" in page  # the local-only mean
    assert "fingerprint mismatch" in page and "timed out after 30 s" in page
    edge_rows = re.findall(r"<tr><td class=\"l\">([^<]+)</td><td>(\d+)</td></tr>", page)
    assert sorted(int(c) for _, c in edge_rows) == sorted(EXPECTED_EDGES.values())
    assert ("node-0 – node-1", "40") in edge_rows and ("node-0 – …" + OUTSIDER[-6:], "5") in edge_rows


def test_report_without_result_json_and_custom_prefix(tmp_path: Path) -> None:
    root = write_testnet(tmp_path / "tn", with_result=False)
    paths = build_report([root / "node-0", root / "node-2"], tmp_path / "out" / "r")
    assert paths.png == tmp_path / "out" / "r.png" and paths.png.stat().st_size > 20_000
    page = paths.html.read_text(encoding="utf-8")
    assert "last round" in page and "final checkpoint" not in page
    assert short_id(PEERS[0]) in page  # a lone data dir is labelled by its peer id


# --- the command -------------------------------------------------------------------------------------


def test_cli_prints_both_paths(tmp_path: Path) -> None:
    root = write_testnet(tmp_path / "tn")
    result = CliRunner().invoke(main, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(root / "report.png"), str(root / "report.html")]


@pytest.mark.parametrize("make", ["empty", "missing", "no_events"])
def test_cli_dir_without_metrics_is_one_line_exit_3(tmp_path: Path, make: str) -> None:
    target = tmp_path / "d"
    if make != "missing":
        target.mkdir()
    if make == "no_events":
        (target / "metrics.jsonl").write_text("garbage\n")
    result = CliRunner().invoke(main, ["report", str(target)])
    assert result.exit_code == exitcodes.CONFIG == ReportError.exit_code
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedswarm: ") and str(target) in lines[0]
    assert not (target / "report.png").exists()
