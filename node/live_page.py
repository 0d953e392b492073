"""The live page the control API serves at `/`: inline style and script, no external resources."""

import base64
import hashlib

# -- the live page -------------------------------------------------------------------------------------
# Inline style and script only; the Content-Security-Policy below allows exactly these two blocks (by
# hash) and requests to this server, so the page can neither load nor send anything elsewhere. Network
# strings (peer IDs, addresses) reach the DOM through textContent only.

_PAGE_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 20px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h1 code { font-size: 14px; color: #555; }
#summary { margin: 0 0 12px; color: #333; } #error { color: #b00; min-height: 1.4em; margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figcaption { font-weight: 600; margin-bottom: 4px; } svg { width: 100%; height: auto; display: block; }
svg text { font-size: 13px; fill: #444; } svg .grid { stroke: #e5e5e5; } svg .axis { stroke: #999; }
.test, .val, .train { fill: none; stroke-width: 2; } .test { stroke: #1f77b4; }
.val { stroke: #ff7f0e; stroke-dasharray: 5 3; } .train { stroke: #2ca02c; stroke-dasharray: 2 3; }
rect.ok { fill: #2ca02c; } rect.busy { fill: #bcbd22; } rect.failed { fill: #d62728; } rect.rejected { fill: #9467bd; }
table { border-collapse: collapse; background: #fff; margin-top: 6px; width: 100%; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; } th { background: #f0f0f0; }
td.n { text-align: right; white-space: nowrap; } td.a { word-break: break-all; font-size: 12px; }
"""

_PAGE_SCRIPT = r"""
"use strict";
const NS = "http://www.w3.org/2000/svg", W = 520, H = 230, L = 46, R = 12, T = 10, B = 28;
const OUTCOMES = ["ok", "busy", "failed", "rejected"];
const $ = (id) => document.getElementById(id);
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
const finite = (v) => typeof v === "number" && Number.isFinite(v);
const fmt = (v, d = 4) => (finite(v) ? v.toFixed(d) : "-");
function ago(s) {
  if (!finite(s)) return "-";
  s = Math.round(s);
  return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : (s / 3600).toFixed(1) + " h";
}
// NaN/Infinity (a diverging loss) are not JSON: turn them into null, leaving string literals alone.
const JSON_NON_FINITE = /"(?:[^"\\]|\\.)*"|-?\bInfinity\b|\bNaN\b/g;
const parse = (text) => JSON.parse(text.replace(JSON_NON_FINITE, (m) => (m[0] === '"' ? m : "null")));
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + " answered HTTP " + r.status);
  return parse(await r.text());
}

function lineChart(svg, series, yMin, yMax) {
  svg.replaceChildren();
  svg.dataset.points = String(series[0].points.length);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no rounds yet"));
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(x0 + 1, ...xs);
  const lo = yMin ?? Math.min(...ys), hi = yMax ?? Math.max(lo + 1e-6, ...ys) * 1.05;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), sy = (y) => H - B - ((y - lo) / (hi - lo)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, y = sy(v);
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    svg.append(svgEl("text", { x: L - 5, y: y + 4, "text-anchor": "end" }, v.toFixed(2)));
  }
  svg.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(svgEl("text", { x: L, y: H - 8 }, "round " + x0));
  svg.append(svgEl("text", { x: W - R, y: H - 8, "text-anchor": "end" }, "round " + x1));
  let kx = L + 90;
  for (const s of series) {
    const pts = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    svg.append(svgEl("polyline", { id: s.id, class: s.cls, points: pts, "data-points": s.points.length }));
    svg.append(svgEl("line", { x1: kx, x2: kx + 18, y1: H - 12, y2: H - 12, class: s.cls }));
    svg.append(svgEl("text", { x: kx + 22, y: H - 8, class: "key" }, s.name));
    kx += 32 + s.name.length * 6;
  }
}

function barChart(svg, counts) {
  svg.replaceChildren();
  const n = OUTCOMES.map((o) => (finite(counts[o]) ? counts[o] : 0)), top = Math.max(1, ...n);
  svg.dataset.total = String(n.reduce((a, b) => a + b, 0));
  OUTCOMES.forEach((o, i) => {
    const y = T + i * 50, w = ((W - 150) * n[i]) / top;
    svg.append(svgEl("text", { x: 70, y: y + 24, "text-anchor": "end" }, o));
    const bar = { x: 78, y: y + 8, width: Math.max(w, 1), height: 26, class: o, "data-outcome": o, "data-count": n[i] };
    svg.append(svgEl("rect", bar));
    svg.append(svgEl("text", { x: 84 + w, y: y + 26 }, String(n[i])));
  });
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
}

function render(status, peers, history) {
  if (status) {
    $("peer-id").textContent = status.peer_id || "";
    const test = status.test || {}, ex = status.exchanges || {};
    $("summary").textContent = [
      "swarm " + status.swarm, "task " + (status.task || "-"),
      "round " + (status.round ?? "-") + (status.rounds ? " / " + status.rounds : "") + (status.done ? " (done)" : ""),
      "test accuracy " + fmt(test.accuracy), "weight " + fmt(status.weight, 3),
      status.peers + " peer(s)", "up " + ago(status.uptime_s), "version " + status.version,
    ].join(" · ");
    barChart($("exchange-chart"), ex);
  }
  if (history) {
    const rounds = history.filter((e) => e.event === "round");
    const pts = (key) => rounds.filter((e) => finite(e[key]) && finite(e.round)).map((e) => [e.round, e[key]]);
    lineChart($("acc-chart"), [
      { id: "acc-line", cls: "test", name: "test", points: pts("test_accuracy") },
      { id: "acc-val-line", cls: "val", name: "validation", points: pts("val_accuracy") },
    ], 0, 1);
    lineChart($("loss-chart"), [
      { id: "loss-line", cls: "test", name: "test", points: pts("test_loss") },
      { id: "loss-val-line", cls: "val", name: "validation", points: pts("val_loss") },
      { id: "loss-train-line", cls: "train", name: "training", points: pts("train_loss") },
    ], 0, null);
  }
  if (peers) {
    const okWith = {};
    for (const e of history || []) {
      if (e.event === "exchange" && e.outcome === "ok") okWith[e.peer] = (okWith[e.peer] || 0) + 1;
    }
    const body = $("peers-table").tBodies[0];
    body.replaceChildren();
    for (const p of peers) {
      const row = body.insertRow(), info = p.info || {};
      row.dataset.peerId = p.peer_id;
      cell(row, p.peer_id);
      cell(row, String(info.round ?? "-") + (info.done ? " (done)" : ""), "n");
      cell(row, ago(p.last_seen_s) + " ago", "n");
      cell(row, String(okWith[p.peer_id] || 0), "n");
      cell(row, (p.addrs || []).join(" "), "a");
    }
    $("peers-table").dataset.rows = String(peers.length);
    $("no-peers").hidden = peers.length > 0;
  }
}

async function tick() {
  const [status, peers, history] = await Promise.allSettled(["/status", "/peers", "/history"].map(getJSON));
  const value = (r) => (r.status === "fulfilled" ? r.value : null);
  render(value(status), value(peers), value(history));
  const failed = [status, peers, history].filter((r) => r.status === "rejected").map((r) => r.reason.message);
  $("error").textContent = failed.length ? "not answering: " + failed.join("; ") : "";
  document.body.dataset.updated = new Date().toISOString();
  setTimeout(tick, 2000);
}
tick();
"""

_PAGE_BODY = """
<h1>fedswarm node <code id="peer-id"></code></h1>
<p id="summary">waiting for the node…</p>
<p id="error"></p>
<div class="cards">
<figure><figcaption>Accuracy by round</figcaption>
<svg id="acc-chart" data-points="0" viewBox="0 0 520 230" role="img" aria-label="accuracy by round"></svg></figure>
<figure><figcaption>Loss by round</figcaption>
<svg id="loss-chart" data-points="0" viewBox="0 0 520 230" role="img" aria-label="loss by round"></svg></figure>
<figure><figcaption>Exchanges by outcome (since start)</figcaption>
<svg id="exchange-chart" data-total="0" viewBox="0 0 520 230" role="img" aria-label="exchanges"></svg></figure>
</div>
<h2>Peers</h2>
<table id="peers-table" data-rows="0"><thead><tr><th>peer id</th><th>round</th><th>last seen</th>
<th>ok with us (recent)</th><th>addresses</th></tr></thead><tbody></tbody></table>
<p id="no-peers">no live peers</p>
"""

LIVE_PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>fedswarm node</title>'
    f"<style>{_PAGE_STYLE}</style></head><body>{_PAGE_BODY}<script>{_PAGE_SCRIPT}</script></body></html>\n"
)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_PAGE_SCRIPT)}; style-src {_csp_hash(_PAGE_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
