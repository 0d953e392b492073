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
import errno
import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import prometheus_client
from aiohttp import web

from node.live_page import LIVE_PAGE, PAGE_HEADERS

log = logging.getLogger("fedswarm.control")

ENDPOINTS = ("/", "/status", "/peers", "/history", "/metrics")
_READ_METHODS = ("GET", "HEAD")
ACTION_HEADER = "X-Fedswarm-Action"
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
        actions: Mapping[str, Callable[[], Awaitable[dict]]] | None = None,
    ) -> None:
        """`history` returns recent metrics events; it may read a file, so it runs in a worker thread."""
        self._host = host
        self._port = port
        self._status = status
        self._peers = peers
        self._registry = registry
        self._history = history or list
        self._actions = dict(actions or {})  # POST path -> coroutine (e.g. /members/reload)
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
        if request.method == "POST" and request.path in self._actions:
            # A custom header: a web page cannot send it cross-origin without a CORS preflight we never
            # answer, so a page the operator happens to open cannot trigger actions.
            if request.headers.get(ACTION_HEADER) != "1":
                return _json({"error": f"actions need the header {ACTION_HEADER}: 1"}, 403)
            return _json(await self._actions[request.path]())
        if request.method not in _READ_METHODS:
            return _json(
                {"error": f"method {request.method} not allowed; the control API is read-only"},
                405,
                headers={"Allow": ", ".join(_READ_METHODS)},
            )
        path = request.path
        if path == "/":
            return web.Response(text=LIVE_PAGE, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)
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
            body = json.dumps(_json_safe(source()), separators=(",", ":"), allow_nan=False)
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
