"""The node's local control API: read-only HTTP on loopback for `fedswarm status`, `fedswarm peers`
and Prometheus.

Endpoints (GET only):
    /         a live page: accuracy, loss, exchanges and peers, redrawn every 2 s from the JSON below
    /status   JSON snapshot of this node (the daemon's status() callable)
    /peers    JSON list of live peers (the daemon's peers() callable)
    /history  JSON list of the node's recent metrics.jsonl events (the daemon's history() callable)
    /metrics  Prometheus text exposition of the node's registry

It binds to loopback only and answers only requests addressed to a loopback name, so neither
another host nor a web page (through DNS rebinding) can read the node's peers or metrics. The page
is self-contained (inline script and style, pinned by hash in its Content-Security-Policy) and
loads nothing from anywhere but this server.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import ipaddress
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import prometheus_client
from aiohttp import web

log = logging.getLogger("fedswarm.control")

ENDPOINTS = ("/", "/status", "/peers", "/history", "/metrics")
_READ_METHODS = ("GET", "HEAD")
_STOP_TIMEOUT_S = 0.5  # how long stop() lets a request in flight finish


class ControlStartError(Exception):
    """The control API could not bind its address (port in use, address not on this host, ...)."""


def _loopback_ip(host: str) -> str:
    """The loopback IP literal to bind for host; ValueError for anything that is not loopback."""
    if host.lower() == "localhost":
        return "127.0.0.1"  # one address, so port 0 means one port
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"control API host must be a loopback IP address, got {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(
            f"control API refuses to listen on {host}: it is not a loopback address "
            "(the control API has no authentication; use 127.0.0.1 or ::1)"
        )
    return str(ip)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(_json_safe(data), separators=(",", ":"), allow_nan=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class ControlServer:
    """HTTP control API, bound to loopback only. Read-only endpoints."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        status: Callable[[], dict],
        peers: Callable[[], list[dict]],
        registry: prometheus_client.CollectorRegistry,
        history: Callable[[], list[dict]] | None = None,
    ) -> None:
        """`history` returns recent metrics events; it may read a file, so it runs in a worker thread."""
        self._host = host
        self._port = port
        self._status = status
        self._peers = peers
        self._registry = registry
        self._history = history or list
        self._bind_ip: str | None = None
        self._bound_port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """http://HOST:PORT of the running server (the real port when started with port 0)."""
        if self._bind_ip is None or self._bound_port is None:
            raise RuntimeError("control API not started")
        return f"http://{_hostport(self._bind_ip, self._bound_port)}"

    async def start(self) -> int:
        """Bind and serve; returns the port actually bound.

        Raises ValueError for a non-loopback host, ControlStartError when the bind fails.
        """
        if self._runner is not None:
            raise RuntimeError("control API already started")
        ip = _loopback_ip(self._host)
        if not 0 <= self._port <= 65535:
            raise ValueError(f"control API port must be 0-65535, got {self._port}")

        app = web.Application(middlewares=[self._guard])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_STOP_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, ip, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ControlStartError(self._bind_error_message(ip, exc)) from exc
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bind_ip = ip
        self._bound_port = runner.addresses[0][1]
        log.info("control API listening on %s", self.url)
        return self._bound_port

    async def stop(self) -> None:
        """Stop serving. Idempotent; returns within about a second even with clients connected."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        log.info("control API stopped")

    def _bind_error_message(self, ip: str, exc: OSError) -> str:
        where = _hostport(ip, self._port)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = "address not available on this host"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        else:
            reason = (exc.strerror or str(exc)).lower()
        return f"control API cannot listen on {where}: {reason}; pick another with --control or FEDSWARM_CONTROL"

    # -- request handling -------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        # A browser page can reach 127.0.0.1 through a DNS name it controls (DNS rebinding); such a
        # request carries that name in Host. Clients that talk to us directly name a loopback host.
        host_header = request.headers.get("Host")
        if host_header is not None and not _is_loopback_name(_strip_port(host_header)):
            return _json({"error": "forbidden: the control API answers only loopback host names"}, 403)
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.method not in _READ_METHODS:
            return _json(
                {"error": f"method {request.method} not allowed; the control API is read-only"},
                405,
                headers={"Allow": ", ".join(_READ_METHODS)},
            )
        path = request.path
        if path == "/":
            return web.Response(text=LIVE_PAGE, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)
        if path == "/history":
            return await self._history_response()
        if path == "/status":
            return self._snapshot("status", self._status)
        if path == "/peers":
            return self._snapshot("peers", self._peers)
        if path == "/metrics":
            return self._metrics()
        return _json({"error": "not found", "endpoints": list(ENDPOINTS)}, 404)

    def _snapshot(self, what: str, source: Callable[[], Any]) -> web.Response:
        try:
            body = json.dumps(source(), separators=(",", ":"))
        except Exception as exc:
            log.exception("control API: building /%s failed", what)
            return _json({"error": f"{what} unavailable: {type(exc).__name__}: {exc}"}, 500)
        return web.Response(text=body, content_type="application/json")

    async def _history_response(self) -> web.Response:
        def build() -> str:
            return json.dumps(_json_safe(self._history()), separators=(",", ":"), allow_nan=False)

        try:
            body = await asyncio.to_thread(build)
        except Exception as exc:
            log.exception("control API: building /history failed")
            return _json({"error": f"history unavailable: {type(exc).__name__}: {exc}"}, 500)
        return web.Response(text=body, content_type="application/json")

    def _metrics(self) -> web.Response:
        try:
            body = prometheus_client.generate_latest(self._registry)
        except Exception as exc:
            log.exception("control API: collecting /metrics failed")
            return _json({"error": f"metrics unavailable: {type(exc).__name__}: {exc}"}, 500)
        # CONTENT_TYPE_LATEST carries its own charset parameter, so set the raw header.
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def _strip_port(host_header: str) -> str:
    """The host part of a Host header: "127.0.0.1:8470" -> "127.0.0.1", "[::1]:8470" -> "::1"."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    if host_header.count(":") > 1:  # a bare IPv6 address (not valid in Host, but unambiguous)
        return host_header
    return host_header.split(":", 1)[0]


def _is_loopback_name(host: str) -> bool:
    host = host.strip().rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_safe(value: Any) -> Any:
    """NaN and Infinity (a diverging loss) as null: they are not JSON, and a browser refuses the whole answer."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


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


_PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_PAGE_SCRIPT)}; style-src {_csp_hash(_PAGE_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
