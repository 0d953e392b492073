"""The control API: a real server on 127.0.0.1 (port 0) and the real stdlib client against it.

No pytest-asyncio: each test drives its own event loop with asyncio.run(), and the blocking
client runs in a worker thread (asyncio.to_thread) so the server keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
import pytest

from node.control import ControlServer, ControlStartError
from node.control_client import ControlUnavailable, fetch_json, format_peers, format_status

PEER_A = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER_B = "12D3KooWGRUVh2ntkXcXHCpbRfK1tz8HTf3PbvJwNAkm8vdUbLKb"

STATUS = {
    "peer_id": PEER_A,
    "swarm": "hospitals-eu",
    "addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.5/tcp/4001"],
    "peers": 1,
    "uptime_s": 3723.4,
    "version": "0.1.0",
}
PEERS = [{"peer_id": PEER_B, "addrs": ["/ip4/10.0.0.7/tcp/4001"], "last_seen_s": 1.23}]


def _registry() -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry()
    rounds = prometheus_client.Counter("fedswarm_rounds", "Averaging rounds completed", registry=registry)
    rounds.inc(3)
    return registry


@contextlib.asynccontextmanager
async def serving(
    status: Callable[[], dict] = lambda: STATUS,
    peers: Callable[[], list[dict]] = lambda: PEERS,
    registry: prometheus_client.CollectorRegistry | None = None,
    port: int = 0,
    history: Callable[[], list[dict]] | None = None,
) -> AsyncIterator[tuple[ControlServer, int]]:
    server = ControlServer(
        host="127.0.0.1", port=port, status=status, peers=peers, registry=registry or _registry(), history=history
    )
    bound = await server.start()
    try:
        yield server, bound
    finally:
        await server.stop()


async def fetch(port: int, path: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fetch_json, "127.0.0.1", port, path, **kwargs)


def _raw(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {} if host is None else {"Host": host}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


async def raw(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    return await asyncio.to_thread(_raw, port, path, method, host)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- server + client ---------------------------------------------------------------------------------


def test_status_peers_and_metrics_round_trip() -> None:
    async def scenario() -> None:
        async with serving() as (server, port):
            assert port > 0
            assert server.url == f"http://127.0.0.1:{port}"
            assert await fetch(port, "/status") == STATUS
            assert await fetch(port, "peers") == PEERS  # a missing leading slash is added

            code, headers, body = await raw(port, "/metrics")
            assert code == 200
            assert headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
            assert "fedswarm_rounds_total 3.0" in body.decode().splitlines()

    asyncio.run(scenario())


def test_status_is_read_on_every_request() -> None:
    calls = []

    def status() -> dict:
        calls.append(1)
        return {"peer_id": PEER_A, "round": len(calls)}

    async def scenario() -> None:
        async with serving(status=status) as (_, port):
            assert (await fetch(port, "/status"))["round"] == 1
            assert (await fetch(port, "/status"))["round"] == 2

    asyncio.run(scenario())


def test_runs_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with serving() as (_, port):
            assert await fetch(port, "/peers") == PEERS

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_unknown_path_is_404_json_listing_endpoints() -> None:
    async def scenario() -> None:
        async with serving() as (_, port):
            code, headers, body = await raw(port, "/nope?x=1")
            assert code == 404
            assert headers["Content-Type"].startswith("application/json")
            assert json.loads(body) == {
                "error": "not found",
                "endpoints": ["/", "/status", "/peers", "/history", "/metrics"],
            }
            with pytest.raises(ControlUnavailable, match=r"answered /nope with HTTP 404: not found"):
                await fetch(port, "/nope")

    asyncio.run(scenario())


def test_history_serves_the_source_with_non_finite_numbers_as_null() -> None:
    events = [
        {"t": 1.0, "event": "start", "peer_id": PEER_A},
        {"t": 2.0, "event": "round", "round": 1, "test_loss": float("nan"), "train_loss": float("inf")},
    ]

    async def scenario() -> None:
        async with serving(history=lambda: events) as (_, port):
            code, headers, body = await raw(port, "/history")
            assert code == 200 and headers["Content-Type"].startswith("application/json")
            assert b"NaN" not in body and b"Infinity" not in body  # a browser refuses those
            assert json.loads(body) == [events[0], {**events[1], "test_loss": None, "train_loss": None}]
        async with serving() as (_, port):  # no source: an empty history, not an error
            assert await fetch(port, "/history") == []

    asyncio.run(scenario())


def test_failing_history_is_500_and_server_keeps_serving() -> None:
    def broken() -> list[dict]:
        raise OSError("disk gone")

    async def scenario() -> None:
        async with serving(history=broken) as (_, port):
            code, _, body = await raw(port, "/history")
            assert code == 500
            assert json.loads(body) == {"error": "history unavailable: OSError: disk gone"}
            assert await fetch(port, "/status") == STATUS

    asyncio.run(scenario())


def _csp_sources(csp: str, directive: str) -> list[str]:
    for part in csp.split(";"):
        name, *sources = part.split()
        if name == directive:
            return sources
    raise AssertionError(f"no {directive} in {csp!r}")


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_live_page_is_self_contained_and_pinned_by_its_csp() -> None:
    async def scenario() -> None:
        async with serving() as (_, port):
            code, headers, body = await raw(port, "/")
            assert code == 200
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            page = body.decode()
            for element in ('id="acc-chart"', 'id="loss-chart"', 'id="exchange-chart"', 'id="peers-table"'):
                assert element in page
            # nothing loaded from elsewhere: the only URL is the SVG namespace name, which is never fetched
            assert re.findall(r"(?:https?:)?//[\w.-]+", page) == ["http://www.w3.org"]
            assert not re.search(r"<(?:link|iframe|img|object|embed)\b|\bsrc=", page)
            csp = headers["Content-Security-Policy"]
            assert _csp_sources(csp, "default-src") == ["'none'"]
            assert _csp_sources(csp, "connect-src") == ["'self'"]
            # the hashes allow exactly the inline blocks served (a stale hash would leave the page dead)
            scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
            styles = re.findall(r"<style>(.*?)</style>", page, re.S)
            assert len(scripts) == len(styles) == 1
            assert _csp_sources(csp, "script-src") == [_sha256_source(scripts[0])]
            assert _csp_sources(csp, "style-src") == [_sha256_source(styles[0])]
            # the page's requests go to routes this server answers
            for path in re.findall(r'"(/[a-z]+)"', scripts[0]):
                assert (await raw(port, path))[0] == 200, path

    asyncio.run(scenario())


def test_non_get_is_405() -> None:
    async def scenario() -> None:
        async with serving() as (_, port):
            for method in ("POST", "PUT", "DELETE"):
                code, headers, body = await raw(port, "/status", method=method)
                assert code == 405, method
                assert "GET" in headers["Allow"]
                assert "read-only" in json.loads(body)["error"]
            code, _, body = await raw(port, "/status", method="HEAD")
            assert (code, body) == (200, b"")

    asyncio.run(scenario())


def test_failing_status_is_500_json_logged_and_server_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict:
        raise RuntimeError("snapshot not ready")

    async def scenario() -> None:
        async with serving(status=broken) as (_, port):
            code, headers, body = await raw(port, "/status")
            assert code == 500
            assert headers["Content-Type"].startswith("application/json")
            assert json.loads(body) == {"error": "status unavailable: RuntimeError: snapshot not ready"}
            with pytest.raises(ControlUnavailable, match="HTTP 500: status unavailable"):
                await fetch(port, "/status")
            assert await fetch(port, "/peers") == PEERS

    with caplog.at_level(logging.ERROR, logger="fedswarm.control"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.name == "fedswarm.control" and r.levelno == logging.ERROR]
    assert failures and failures[0].exc_info and failures[0].exc_info[0] is RuntimeError


def test_unserialisable_peers_is_500_not_a_dead_connection() -> None:
    async def scenario() -> None:
        async with serving(peers=lambda: [{"peer_id": object()}]) as (_, port):
            code, _, body = await raw(port, "/peers")
            assert code == 500
            assert "TypeError" in json.loads(body)["error"]
            assert await fetch(port, "/status") == STATUS

    asyncio.run(scenario())


def test_foreign_host_header_is_refused() -> None:
    # DNS rebinding: a web page reaching 127.0.0.1 through its own name must not read the API.
    async def scenario() -> None:
        async with serving() as (_, port):
            code, _, body = await raw(port, "/peers", host=f"attacker.example:{port}")
            assert code == 403
            assert PEER_B.encode() not in body
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
                code, _, _ = await raw(port, "/peers", host=host)
                assert code == 200, host

    asyncio.run(scenario())


def test_nothing_listening_raises_control_unavailable() -> None:
    port = _free_port()
    with pytest.raises(ControlUnavailable) as info:
        fetch_json("127.0.0.1", port, "/status", timeout_s=2)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert "fedswarm run" in message and "--control" in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_silent_server_times_out_as_control_unavailable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts the TCP handshake, never answers
        port = listener.getsockname()[1]
        with pytest.raises(ControlUnavailable, match=r"\(timed out\)"):
            fetch_json("127.0.0.1", port, "/status", timeout_s=0.1)


def test_non_json_answer_raises_control_unavailable() -> None:
    async def scenario() -> None:
        async with serving() as (_, port):
            with pytest.raises(ControlUnavailable, match="not JSON"):
                await fetch(port, "/metrics")

    asyncio.run(scenario())


def test_http_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not see (or break) loopback control traffic.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    async def scenario() -> None:
        async with serving() as (_, port):
            assert await fetch(port, "/status") == STATUS

    asyncio.run(scenario())


def test_port_in_use_raises_control_start_error() -> None:
    async def scenario() -> None:
        async with serving() as (_, port):
            second = ControlServer(host="127.0.0.1", port=port, status=dict, peers=list, registry=_registry())
            with pytest.raises(ControlStartError) as info:
                await second.start()
            assert str(info.value) == (
                f"control API cannot listen on 127.0.0.1:{port}: address already in use; "
                "pick another with --control or FEDSWARM_CONTROL"
            )
            await second.stop()  # never started: a no-op
            assert await fetch(port, "/status") == STATUS  # the first one is unharmed

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_non_loopback_host_is_refused(host: str) -> None:
    server = ControlServer(host=host, port=0, status=dict, peers=list, registry=_registry())
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(server.start())


def test_localhost_binds_ipv4_loopback() -> None:
    async def scenario() -> None:
        server = ControlServer(host="localhost", port=0, status=dict, peers=list, registry=_registry())
        port = await server.start()
        try:
            assert server.url == f"http://127.0.0.1:{port}"
            assert await fetch(port, "/status") == {}
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_stop_is_fast_with_an_idle_client_and_idempotent() -> None:
    async def scenario() -> None:
        server = ControlServer(host="127.0.0.1", port=0, status=dict, peers=list, registry=_registry())
        port = await server.start()
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # connected, never sends
        writer.write(b"GET /status HTTP/1.1\r\n")  # and one that stalls mid-request
        await writer.drain()
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.5
        await server.stop()
        writer.close()
        with pytest.raises(ControlUnavailable, match="connection refused"):
            await fetch(port, "/status")

    asyncio.run(scenario())


def test_url_before_start_is_an_error() -> None:
    server = ControlServer(host="127.0.0.1", port=0, status=dict, peers=list, registry=_registry())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url


def test_client_module_stays_light() -> None:
    code = (
        "import sys, node.control_client\n"
        "heavy = sorted({'aiohttp', 'hivemind', 'torch'} & {m.split('.')[0] for m in sys.modules})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- formatting --------------------------------------------------------------------------------------


def test_format_status_known_keys_aligned() -> None:
    text = format_status(STATUS)
    lines = text.splitlines()
    assert lines[0].split() == ["peer", "id:", PEER_A]
    assert "swarm:" in text and "hospitals-eu" in text
    assert "1h 02m 03s" in text
    # addresses one per line, values in one column
    addr_lines = [line for line in lines if "/ip4/" in line]
    assert len(addr_lines) == 2
    assert addr_lines[0].startswith("addresses:")
    column = lines[0].index(PEER_A)
    assert all(line.index("/ip4/") == column for line in addr_lines)
    assert all(line[column - 1] == " " and line[column] != " " for line in lines)


def test_format_status_later_keys_and_unknown_extras() -> None:
    status = {
        **STATUS,
        "round": 12,
        "weight": 0.25,
        "train": {"loss": 0.123456, "accuracy": 0.9},
        "exchanges": {"ok": 10, "busy": 2, "failed": 1, "rejected": 0},
        "data_dir": "/var/lib/fedswarm",
        "nested": {"a": {"b": 1}, "c": [1, 2], "d": None},
        "flags": [],
        "enabled": True,
    }
    text = format_status(status)
    assert "loss=0.1235 accuracy=0.9" in text
    assert "ok=10 busy=2 failed=1 rejected=0" in text
    assert "round:" in text and "12" in text
    assert "data dir:" in text and "/var/lib/fedswarm" in text
    assert "a.b=1 c=1,2 d=-" in text
    assert "flags:" in text and "none" in text
    assert "yes" in text


@pytest.mark.parametrize(
    "status",
    [{}, {"peer_id": PEER_A}, {"addrs": []}, {"uptime_s": None, "train": {}, "exchanges": None}],
)
def test_format_status_survives_missing_and_empty_keys(status: dict) -> None:
    text = format_status(status)
    assert text
    if "peer_id" in status:
        assert PEER_A in text


def test_format_peers_table() -> None:
    peers = [
        *PEERS,
        {
            "peer_id": PEER_A,
            "addrs": ["/ip4/10.0.0.8/tcp/4001", "/ip4/1.2.3.4/tcp/4001", "/ip6/::1/tcp/4001"],
            "last_seen_s": 125.0,
            "round": 7,
        },
    ]
    lines = format_peers(peers).splitlines()
    header = lines[0]
    assert header.split("  ")[0] == "PEER ID" and "LAST SEEN" in header and "ADDRESSES" in header
    assert PEER_B in lines[1] and "1.2s ago" in lines[1] and "/ip4/10.0.0.7/tcp/4001" in lines[1]
    assert PEER_A in lines[2] and "2m 05s ago" in lines[2] and "/ip4/10.0.0.8/tcp/4001 (+2 more)" in lines[2]
    # columns line up
    for title in ("LAST SEEN", "ADDRESSES"):
        column = header.index(title)
        assert lines[1][column - 1] == " " and lines[1][column] != " "
        assert lines[2][column - 1] == " " and lines[2][column] != " "
    assert lines[-1] == "2 peers"


def test_format_peers_empty_and_missing_keys() -> None:
    assert format_peers([]) == "no peers"
    text = format_peers([{"peer_id": PEER_B}, {"addrs": []}])
    assert PEER_B in text
    assert text.splitlines()[-1] == "2 peers"


def test_formatting_escapes_terminal_control_characters() -> None:
    # Peer IDs and addresses come from the network; raw escape sequences must not reach the tty.
    evil = "/ip4/1.2.3.4/tcp/1\x1b[2J\x1b]0;pwned\x07"
    for text in (
        format_peers([{"peer_id": "Qm\x1bevil", "addrs": [evil], "last_seen_s": 0}]),
        format_status({"peer_id": "Qm\x1bevil", "addrs": [evil], "extra\n": "x\ry"}),
    ):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert "\\x1b" in text
