"""Client side of the control API, for `fedswarm status` and `fedswarm peers`.

Standard library only (no aiohttp, hivemind or torch) so those commands start in milliseconds.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.request
from typing import Any

_HINT = "is `fedswarm run` running, and is --control right?"

# The order and labels of the status keys we know; any other key follows, under its own name.
_STATUS_LABELS = {
    "peer_id": "peer id",
    "swarm": "swarm",
    "version": "version",
    "uptime_s": "uptime",
    "peers": "live peers",
    "round": "round",
    "weight": "weight",
    "train": "train",
    "exchanges": "exchanges",
    "addrs": "addresses",
}


class ControlUnavailable(Exception):
    """The node's control API did not give a usable answer; the message is one line for the user."""


def fetch_json(host: str, port: int, path: str, timeout_s: float = 5.0, *, action: bool = False) -> Any:
    """GET http://host:port/path (POST for an `action`, such as /members/reload) and decode the JSON body.

    Raises ControlUnavailable when nothing listens, the node does not answer in time, answers with
    a status other than 200, or answers something that is not JSON.
    """
    where = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if not path.startswith("/"):
        path = "/" + path
    headers = {"Accept": "application/json"}
    if action:
        headers["X-Fedswarm-Action"] = "1"  # node.control.ACTION_HEADER (not imported: this module stays light)
    request = urllib.request.Request(
        f"http://{where}{path}", headers=headers, method="POST" if action else "GET", data=b"" if action else None
    )
    # No proxies: urllib would send even loopback requests to one named in http_proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        raise ControlUnavailable(f"fedswarm node at {where} answered {path} with HTTP {exc.code}{detail}") from None
    except urllib.error.URLError as exc:
        raise ControlUnavailable(f"no fedswarm node answers at {where} ({_reason(exc.reason)}); {_HINT}") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise ControlUnavailable(f"no fedswarm node answers at {where} ({_reason(exc)}); {_HINT}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise ControlUnavailable(
            f"the server at {where} answered {path} with something that is not JSON; "
            "is --control pointing at a fedswarm node?"
        ) from None


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return _one_line(str(exc)) or type(exc).__name__


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """': <error>' from the node's JSON error body, or '' when there is none."""
    try:
        error = json.loads(exc.read(4096)).get("error")
    except Exception:
        return ""
    return f": {_one_line(str(error))}" if error else ""


# -- formatting ------------------------------------------------------------------------------------


def format_status(status: dict) -> str:
    """A node's status as aligned "key: value" lines; known keys first, then any others."""
    if not isinstance(status, dict):
        return _value(status)
    if not status:
        return "no status reported"
    rows: list[tuple[str, list[str]]] = []
    for key, label in _STATUS_LABELS.items():
        if key in status:
            rows.append((label, _status_lines(key, status[key])))
    for key, value in status.items():
        if key not in _STATUS_LABELS:
            rows.append((_clean(str(key)).replace("_", " "), _status_lines(key, value)))
    width = max(len(label) for label, _ in rows) + 2  # "label:" and one space at least
    out = []
    for label, lines in rows:
        out.append(f"{label + ':':<{width}}{lines[0]}".rstrip())
        out.extend(f"{'':<{width}}{line}" for line in lines[1:])
    return "\n".join(out)


def _status_lines(key: str, value: Any) -> list[str]:
    if key == "uptime_s" and _is_number(value):
        return [_duration(value)]
    if isinstance(value, list | tuple):
        return [_value(item) for item in value] or ["none"]
    return [_value(value)]


def format_peers(peers: list[dict]) -> str:
    """Live peers as an aligned table: PEER ID, LAST SEEN, ADDRESSES (first one, "+N more")."""
    if not peers:
        return "no peers"
    rows = [("PEER ID", "LAST SEEN", "ADDRESSES")]
    for peer in peers:
        if not isinstance(peer, dict):
            rows.append((_value(peer), "-", "-"))
            continue
        seen = peer.get("last_seen_s")
        rows.append(
            (
                _value(peer.get("peer_id", "?")),
                f"{_short_duration(seen)} ago" if _is_number(seen) else "-",
                _addresses(peer.get("addrs")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows]
    n = len(peers)
    lines.append(f"{n} peer{'s' if n != 1 else ''}")
    return "\n".join(lines)


def _addresses(addrs: Any) -> str:
    if isinstance(addrs, str):
        return _clean(addrs)
    if not isinstance(addrs, list | tuple) or not addrs:
        return "-"
    more = f" (+{len(addrs) - 1} more)" if len(addrs) > 1 else ""
    return _value(addrs[0]) + more


def _value(value: Any) -> str:
    """One line for any JSON value: dicts as "a=1 b=2" (nested as "a.b=1"), lists comma-separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in _flatten(value)) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_value(item) for item in value) or "-"
    return _clean(str(value))


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{_clean(str(key))}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            items.append((name, ",".join(_value(item) for item in value) or "-"))
        else:
            items.append((name, _value(value)))
    return items


def _number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _duration(seconds: float) -> str:
    """Uptime: "42.0s", "5m 03s", "2h 07m 09s", "3d 04h 10m"."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s"


def _short_duration(seconds: float) -> str:
    """Time since last seen: "1.2s", "3m 04s", "2h 05m", "3d 04h"."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"


def _one_line(text: str) -> str:
    return " ".join(_clean(text).split())


def _clean(text: str) -> str:
    """Escape control characters: peer IDs and addresses come from other peers, and an escape
    sequence printed raw could rewrite the user's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
