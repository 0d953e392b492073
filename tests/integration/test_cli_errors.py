"""Start-up failures give one line naming what to fix and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from node import exitcodes
from tests.nodeproc import free_port

pytestmark = pytest.mark.timeout(60)


def fedswarm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDSWARM_")}
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=50,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--control", "127.0.0.1:70000"], {}, "'control'"),
        (["--listen", "/ip4/1.2.3/tcp/1"], {}, "'listen'"),
        (["--join", "/ip4/127.0.0.1/tcp/1"], {}, "'join'"),
        ([], {"FEDSWARM_RECORD_TTL_S": "-1"}, "'record_ttl_s'"),
        ([], {"FEDSWARM_SWRAM": "x"}, "FEDSWARM_SWARM"),
    ],
)
def test_invalid_setting_exits_with_config_code(tmp_path, args, env, setting):
    result = fedswarm("run", "--data-dir", str(tmp_path), *args, env=env)
    assert_one_line_error(result, exitcodes.CONFIG, setting)
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_key_in_config_file(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('swarm = "x"\nlisten_addr = "/ip4/127.0.0.1/tcp/0"\n')
    result = fedswarm("run", "--config", str(config), "--data-dir", str(tmp_path))
    assert_one_line_error(result, exitcodes.CONFIG, "listen_addr", str(config))


def test_corrupt_identity_exits_with_identity_code(tmp_path):
    (tmp_path / "identity").write_bytes(b"not a key")
    result = fedswarm("run", "--data-dir", str(tmp_path), "--control", "127.0.0.1:0")
    assert_one_line_error(result, exitcodes.IDENTITY, "identity")


def test_listen_port_in_use_exits_with_network_code(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = fedswarm(
            "run",
            "--data-dir",
            str(tmp_path),
            "--control",
            "127.0.0.1:0",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
        )
    assert_one_line_error(result, exitcodes.NETWORK, "address already in use")


@pytest.mark.parametrize("command", ["status", "peers"])
def test_status_without_a_node_is_one_line(command):
    result = fedswarm(command, "--control", f"127.0.0.1:{free_port()}")
    assert_one_line_error(result, exitcodes.NO_NODE, "no fedswarm node answers")
    assert len(result.stderr.strip().splitlines()) == 1
