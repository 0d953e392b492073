"""`fedswarm report`: one PNG and one self-contained HTML page from the nodes' metrics.jsonl.

The PNG shows test accuracy and loss over time per node (with the local-only and centralized
baselines of a testnet's result.json) and who averaged with whom; the HTML embeds that PNG as a
data: URI and adds a table per node. Nothing in the page points outside it.

Input: node data dirs (each with metrics.jsonl) or testnet --out dirs (node-<i>/ subdirs and
maybe result.json). Pure logic (loading, counting, summaries) is separate from the drawing, which
uses matplotlib's object API on the Agg canvas, so no process-wide backend is switched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import exitcodes
from node.metrics_log import METRICS_FILE, read_metrics

RESULT_FILE = "result.json"
REPORT_NAME = "report"
OUTCOMES = ("ok", "busy", "failed", "rejected")
_NODE_DIR = re.compile(r"^node-(\d+)$")


class ReportError(Exception):
    """A directory holds nothing to report on, or the report cannot be written."""

    exit_code = exitcodes.CONFIG


@dataclass
class NodeHistory:
    label: str  # node-<i> in a testnet dir, else the short peer id
    data_dir: Path
    peer_id: str
    events: list[dict[str, Any]]
    color: str = ""

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "round"]

    @property
    def exchanges(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "exchange"]


@dataclass
class ReportData:
    nodes: list[NodeHistory]
    result: dict[str, Any] | None = None  # the first result.json among the dirs
    sources: list[Path] = field(default_factory=list)

    @property
    def t0(self) -> float:
        """Unix seconds of the earliest event: the x origin of the time plots."""
        return min(n.events[0]["t"] for n in self.nodes)


@dataclass(frozen=True)
class ReportPaths:
    png: Path
    html: Path


def short_id(peer_id: str) -> str:
    """A peer ID short enough for a label; the tail, since every ID of a kind shares its head (Qm..., 12D3KooW...)."""
    return peer_id if len(peer_id) <= 10 else "…" + peer_id[-6:]


# --- loading ------------------------------------------------------------------------------------


def _node_dirs(directory: Path) -> list[Path]:
    subdirs = [(int(m[1]), p) for p in directory.glob("node-*") if (m := _NODE_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(subdirs)]


def _load_node(data_dir: Path, label: str | None) -> NodeHistory:
    try:
        events = [e for e in read_metrics(data_dir / METRICS_FILE) if isinstance(e.get("t"), int | float)]
    except OSError as e:
        raise ReportError(f"cannot read {data_dir / METRICS_FILE}: {e.strerror or e}") from e
    if not events:
        raise ReportError(f"{data_dir / METRICS_FILE} has no events to report on")
    starts = [e["peer_id"] for e in events if e["event"] == "start" and isinstance(e.get("peer_id"), str)]
    peer_id = starts[-1] if starts else data_dir.name
    return NodeHistory(label=label or short_id(peer_id), data_dir=data_dir, peer_id=peer_id, events=events)


def collect(dirs: Sequence[Path]) -> ReportData:
    """Load every node under `dirs`. ReportError names the first dir with nothing to report on."""
    data = ReportData(nodes=[], sources=list(dirs))
    for directory in dirs:
        if (directory / METRICS_FILE).is_file():
            data.nodes.append(_load_node(directory, None))
            continue
        node_dirs = [d for d in _node_dirs(directory) if (d / METRICS_FILE).is_file()]
        if not node_dirs:
            what = "does not exist" if not directory.exists() else f"has no {METRICS_FILE} and no node-*/ with one"
            raise ReportError(f"{directory} {what}: give a node data dir or a testnet --out dir")
        data.nodes.extend(_load_node(d, d.name) for d in node_dirs)
        result_path = directory / RESULT_FILE
        if data.result is None and result_path.is_file():
            try:
                data.result = json.loads(result_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ReportError(f"{result_path} is unreadable: {e}") from e
            if not isinstance(data.result, dict):
                raise ReportError(f"{result_path} is not a testnet result (a JSON object)")
    labels = Counter(n.label for n in data.nodes)
    for node in data.nodes:  # two testnet dirs both have a node-0: fall back to peer ids
        if labels[node.label] > 1:
            node.label = short_id(node.peer_id)
    return data


# --- pure summaries -----------------------------------------------------------------------------


def exchange_edges(histories: Mapping[str, Iterable[dict[str, Any]]]) -> dict[tuple[str, str], int]:
    """Successful exchanges per unordered pair of peers: {(a, b) with a < b: count}.

    `histories` maps each node's own peer ID to its events. Both sides log an exchange, so each is
    counted once, from its caller's log; a callee's record counts only when the caller's log is not
    among `histories` (a peer outside the given dirs).
    """
    edges: Counter[tuple[str, str]] = Counter()
    for me, events in histories.items():
        for e in events:
            peer = e.get("peer")
            if e.get("event") != "exchange" or e.get("outcome") != "ok" or not isinstance(peer, str) or peer == me:
                continue
            if e.get("role") == "caller" or (e.get("role") == "callee" and peer not in histories):
                a, b = sorted((me, peer))
                edges[a, b] += 1
    return dict(edges)


def outcome_counts(node: NodeHistory) -> dict[str, int]:
    """This node's exchanges by outcome, in either role (as its /status counts them)."""
    counts = Counter(e.get("outcome") for e in node.exchanges)
    return {o: counts.get(o, 0) for o in OUTCOMES}


def _result_by_peer(result: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    nodes = (result or {}).get("nodes") or []
    return {n["peer_id"]: n for n in nodes if isinstance(n, dict) and isinstance(n.get("peer_id"), str)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def node_summary(node: NodeHistory, result: dict[str, Any] | None) -> dict[str, Any]:
    """The table row of one node. Final accuracy: the testnet's score of the final checkpoint when
    there is one, else the test accuracy of the last round event."""
    scored = _result_by_peer(result).get(node.peer_id, {})
    rounds = node.rounds
    last_acc = next((a for e in reversed(rounds) if (a := _number(e.get("test_accuracy"))) is not None), None)
    final = _number(scored.get("accuracy"))
    return {
        "label": node.label,
        "peer_id": node.peer_id,
        "final_accuracy": final if final is not None else last_acc,
        "final_source": "final checkpoint" if final is not None else "last round",
        "local_only_accuracy": _number(scored.get("local_only_accuracy")),
        "rounds": max((int(e.get("round") or 0) for e in rounds), default=0),
        "exchanges": outcome_counts(node),
        "span_s": node.events[-1]["t"] - node.events[0]["t"],
    }


def baselines(data: ReportData) -> dict[str, float | None]:
    """Swarm mean of the final accuracies, mean local-only accuracy and centralized accuracy (None if unknown)."""
    finals = [f for n in data.nodes if (f := node_summary(n, data.result)["final_accuracy"]) is not None]
    scored = _result_by_peer(data.result).values()
    alone = [a for n in scored if (a := _number(n.get("local_only_accuracy"))) is not None]
    return {
        "swarm_mean": sum(finals) / len(finals) if finals else None,
        "local_only_mean": sum(alone) / len(alone) if alone else None,
        "centralized": _number((data.result or {}).get("centralized_accuracy")),
        "wall_s": _number((data.result or {}).get("wall_s")),
    }


def _series(node: NodeHistory, key: str, t0: float) -> tuple[list[float], list[float]]:
    points = [(e["t"] - t0, v) for e in node.rounds if (v := _number(e.get(key))) is not None]
    return [x for x, _ in points], [y for _, y in points]


# --- drawing ------------------------------------------------------------------------------------


def render_png(data: ReportData) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    palette = [f"C{i}" for i in range(10)]
    for i, node in enumerate(data.nodes):
        node.color = palette[i % len(palette)]
    fig = Figure(figsize=(15, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(1.6, 1))
    acc_ax = fig.add_subplot(grid[0, 0])
    loss_ax = fig.add_subplot(grid[1, 0], sharex=acc_ax)
    graph_ax = fig.add_subplot(grid[:, 1])
    _draw_accuracy(acc_ax, data)
    _draw_loss(loss_ax, data)
    _draw_graph(graph_ax, data)
    where = ", ".join(str(p) for p in data.sources)
    fig.suptitle(f"fedswarm: {len(data.nodes)} node(s) from {where}", fontsize=14)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _draw_accuracy(ax, data: ReportData) -> None:
    t0, scored = data.t0, _result_by_peer(data.result)
    for node in data.nodes:
        xs, ys = _series(node, "test_accuracy", t0)
        ax.plot(xs, ys, color=node.color, lw=1.6, label=node.label)
        final = _number(scored.get(node.peer_id, {}).get("accuracy"))
        if final is not None:
            ax.plot([node.events[-1]["t"] - t0], [final], marker="*", ms=13, color=node.color, mec="black", ls="none")
    if any(_number(n.get("accuracy")) is not None for n in scored.values()):
        ax.plot([], [], marker="*", ms=11, color="white", mec="black", ls="none", label="final checkpoint (scored)")
    base = baselines(data)
    if (alone := base["local_only_mean"]) is not None:
        ax.axhline(alone, color="0.4", ls="--", lw=1.2, label=f"local-only mean {alone:.3f}")
    if (central := base["centralized"]) is not None:
        ax.axhline(central, color="black", ls=":", lw=1.5, label=f"centralized {central:.3f}")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per node (common test split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9, ncols=2 if len(data.nodes) > 4 else 1)
    ax.tick_params(labelbottom=False)


def _draw_loss(ax, data: ReportData) -> None:
    t0 = data.t0
    for node in data.nodes:
        ax.plot(*_series(node, "test_loss", t0), color=node.color, lw=1.6)
        ax.plot(*_series(node, "val_loss", t0), color=node.color, lw=1, ls="--", alpha=0.6)
    ax.plot([], [], color="black", lw=1.6, label="test loss")
    ax.plot([], [], color="black", lw=1, ls="--", alpha=0.6, label="validation loss (local split)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the first node started")
    ax.set_ylabel("loss")
    ax.set_title("Loss per node")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)


def _draw_graph(ax, data: ReportData) -> None:
    edges = exchange_edges({n.peer_id: n.events for n in data.nodes})
    known = {n.peer_id: n for n in data.nodes}
    outside = sorted({p for pair in edges for p in pair} - known.keys())
    order = [n.peer_id for n in data.nodes] + outside
    pos = {p: _circle(i, len(order)) for i, p in enumerate(order)}
    top = max(edges.values(), default=1)
    rank = {p: i for i, p in enumerate(order)}
    for (a, b), count in sorted(edges.items(), key=lambda item: item[1]):
        first, second = (a, b) if rank[a] < rank[b] else (b, a)
        (xa, ya), (xb, yb) = pos[first], pos[second]
        ax.plot([xa, xb], [ya, yb], color="0.35", lw=1 + 9 * count / top, alpha=0.55, solid_capstyle="round", zorder=1)
        # the count sits 40 % along from the earlier node: diagonals of a square cross at their midpoints
        box = {"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.6"}
        ax.text(xa + 0.4 * (xb - xa), ya + 0.4 * (yb - ya), str(count), ha="center", va="center", bbox=box, zorder=3)
    for peer, (x, y) in pos.items():
        node = known.get(peer)
        ax.scatter([x], [y], s=900, color=node.color if node else "0.8", edgecolors="black", zorder=2)
        label = node.label if node else f"{short_id(peer)}\n(not in report)"
        ha = "left" if x > 0.2 else "right" if x < -0.2 else "center"
        va = "bottom" if y > 0.2 else "top" if y < -0.2 else "center"
        ax.text(x * 1.18 if ha != "center" else x, y * 1.2 if va != "center" else y, label, ha=ha, va=va, fontsize=10)
    if not edges:
        ax.text(0, -1.45, "no successful exchanges", ha="center", fontsize=11, color="0.3")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Who averaged with whom\n(line width and label: successful exchanges, counted once)")


def _circle(index: int, count: int) -> tuple[float, float]:
    if count == 1:
        return 0.0, 0.0
    angle = math.pi / 2 - 2 * math.pi * index / count
    return math.cos(angle), math.sin(angle)


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 20px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; } code { font-size: 12px; }
"""


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _row(cells: Iterable[str], left: int = 0, tag: str = "td") -> str:
    return (
        "<tr>"
        + "".join(f'<{tag} class="l">{c}</{tag}>' if i < left else f"<{tag}>{c}</{tag}>" for i, c in enumerate(cells))
        + "</tr>"
    )


def render_html(data: ReportData, png: bytes) -> str:
    e = html.escape
    summaries = [node_summary(n, data.result) for n in data.nodes]
    header = ["node", "peer id", "final accuracy", "measured on", "local-only", "rounds", *OUTCOMES, "span s"]
    nodes_table = [_row(header, left=2, tag="th")]
    for s in summaries:
        cells = [e(s["label"]), f"<code>{e(s['peer_id'])}</code>", _fmt(s["final_accuracy"]), e(s["final_source"])]
        cells += [_fmt(s["local_only_accuracy"]), str(s["rounds"]), *(str(s["exchanges"][o]) for o in OUTCOMES)]
        nodes_table.append(_row([*cells, _fmt(s["span_s"], ".1f")], left=2))
    base = baselines(data)
    base_table = [
        _row(["swarm mean (final accuracy)", _fmt(base["swarm_mean"])], left=1),
        _row(["local-only mean (each node alone)", _fmt(base["local_only_mean"])], left=1),
        _row(["centralized (all data)", _fmt(base["centralized"])], left=1),
        _row(["testnet wall time, s", _fmt(base["wall_s"], ".1f")], left=1),
    ]
    labels = {n.peer_id: n.label for n in data.nodes}
    edges = sorted(exchange_edges({n.peer_id: n.events for n in data.nodes}).items(), key=lambda kv: -kv[1])
    edge_table = [_row(["pair", "successful exchanges"], left=1, tag="th")]
    rank = {n.peer_id: i for i, n in enumerate(data.nodes)}
    for (a, b), count in edges:
        a, b = sorted((a, b), key=lambda p: (rank.get(p, len(rank)), p))
        pair = f"{e(labels.get(a, short_id(a)))} – {e(labels.get(b, short_id(b)))}"
        edge_table.append(_row([pair, str(count)], left=1))
    problems = Counter(
        (n.label, x.get("outcome"), str(x.get("reason") or "-"))
        for n in data.nodes
        for x in n.exchanges
        if x.get("outcome") in ("failed", "rejected")
    )
    problem_table = [_row(["node", "outcome", "reason", "count"], left=3, tag="th")]
    problem_table += [_row([e(n), e(str(o)), e(r), str(c)], left=3) for (n, o, r), c in problems.most_common(20)]
    sources = ", ".join(f"<code>{e(str(p))}</code>" for p in data.sources)
    image = base64.b64encode(png).decode("ascii")
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>fedswarm report</title><style>{_CSS}</style></head><body>",
        f"<h1>fedswarm report</h1><p>From {sources}, written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        f'<img id="report-png" alt="accuracy, loss and exchange graph" src="data:image/png;base64,{image}">',
        '<h2>Nodes</h2><table id="nodes">',
        *nodes_table,
        '</table><h2>Baselines</h2><table id="baselines">',
        *base_table,
        '</table><h2>Who averaged with whom</h2><table id="edges">',
        *edge_table,
        "</table>",
    ]
    if problems:
        parts += ['<h2>Failed and rejected exchanges</h2><table id="problems">', *problem_table, "</table>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- entry point --------------------------------------------------------------------------------


def build_report(dirs: Sequence[Path], prefix: Path | None = None) -> ReportPaths:
    """Write <prefix>.png and <prefix>.html (default prefix: dirs[0]/report) and return their paths."""
    if not dirs:
        raise ReportError("no directory given")
    data = collect([Path(d) for d in dirs])
    prefix = Path(prefix) if prefix is not None else Path(dirs[0]) / REPORT_NAME
    paths = ReportPaths(png=prefix.with_name(prefix.name + ".png"), html=prefix.with_name(prefix.name + ".html"))
    png = render_png(data)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        paths.png.write_bytes(png)
        paths.html.write_text(render_html(data, png), encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write the report to {prefix}.*: {e.strerror or e}") from e
    return paths
