"""The live page at / of a real node's control API, rendered by headless Chromium.

Two real nodes train together; Chromium loads node a's page, runs its script against the real
/status, /peers and /history, and we read the DOM it leaves: the charts must hold a's rounds and
exchanges, the peers table must list b. Chromium never leaves 127.0.0.1 (CI runs this in a
loopback-only namespace; the flags turn off its own background traffic too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from node.control_client import fetch_json
from tests.polling import wait_until

pytestmark = pytest.mark.integration

CHROMIUM_TIMEOUT_S = 60.0
VIRTUAL_TIME_MS = 5000  # page time Chromium lets pass (timers and polls) before it dumps or shoots
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_binary() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed here (apt-get install chromium); CI installs it and runs this test")


def chromium(binary: str, profile: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd += [f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, f"chromium exited with {result.returncode}:\n{result.stderr[-3000:]}"
    return result


class ElementsById(HTMLParser):
    """Attributes of every element with an id, and the text directly inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.attrs[values["id"]] = {"tag": tag, **values}
        if tag not in ("polyline", "line", "rect", "meta", "br", "input"):  # the void ones the page uses
            self._open.append(values.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.text[self._open[-1]] = self.text.get(self._open[-1], "") + data


def polyline_points(points: str) -> int:
    return len(points.split())


@pytest.mark.timeout(120)
def test_live_page_draws_a_training_node(start_node, tmp_path: Path) -> None:
    binary = chromium_binary()
    a = start_node("a", "--rounds", "30", "--min-peers", "1")
    b = start_node("b", "--rounds", "30", "--min-peers", "1", "--join", a.addrs[0])
    host, port = a.control

    def trained() -> list[dict]:
        events = fetch_json(host, port, "/history")
        rounds = [e for e in events if e["event"] == "round" and e["round"] >= 5]
        ok = [e for e in events if e["event"] == "exchange" and e["outcome"] == "ok"]
        return events if rounds and ok and a.peer_ids() == {b.peer_id} else []

    events = wait_until(trained, timeout_s=60, what="node a to train 5 rounds, average with b and list it")
    assert any(e["event"] == "round" for e in events)

    url = f"http://{host}:{port}/"
    dom = chromium(binary, tmp_path / "profile", url, "--dump-dom").stdout
    page = ElementsById()
    page.feed(dom)
    svg = page.attrs

    assert page.text.get("peer-id") == a.peer_id, dom[:2000]
    assert page.text.get("error", "") == ""
    acc_points = int(svg["acc-chart"]["data-points"])
    assert acc_points >= 6  # round 0 and rounds 1..5 at least
    assert polyline_points(svg["acc-line"]["points"]) == acc_points
    assert int(svg["loss-chart"]["data-points"]) == acc_points
    assert polyline_points(svg["loss-line"]["points"]) == acc_points
    assert int(svg["exchange-chart"]["data-total"]) > 0
    assert int(svg["peers-table"]["data-rows"]) == 1
    assert f'data-peer-id="{b.peer_id}"' in dom

    shot = tmp_path / "live.png"
    chromium(binary, tmp_path / "profile", url, f"--screenshot={shot}", "--window-size=1200,900")
    print(f"live page screenshot: {shot}")
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        stats = ImageStat.Stat(image.convert("L"))
        assert stats.stddev[0] > 10, "the screenshot is (nearly) one colour"
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more than 65536 of them
        assert colours is None or len(colours) > 20
