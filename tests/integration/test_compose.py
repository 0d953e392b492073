"""The docker compose testnet, without a Docker engine: the compose file must validate, and the exact
commands and environment of its services, run as local processes, must form one swarm and train.

Only what cannot exist outside a container is translated (see `localize`): the container paths
/data and /shared become temporary directories, the fixed port 31337 a free port per node, and the
bootstrap's DNS name 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.nodeproc import NodeProcess, free_port
from tests.polling import wait_until

pytestmark = pytest.mark.integration
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.mark.timeout(60)
def test_the_compose_file_validates():
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose package")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    done = subprocess.run([tool, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr


def localize(value: str, *, data_dir: Path, shared: Path, port: int, bootstrap_port: int) -> str:
    """A container-side string, as it reads on this host."""
    value = value.replace("/ip4/0.0.0.0/tcp/31337", f"/ip4/127.0.0.1/tcp/{port}")
    value = value.replace("/dns4/bootstrap/tcp/31337", f"/ip4/127.0.0.1/tcp/{bootstrap_port}")
    value = value.replace("127.0.0.1:8470", "127.0.0.1:0")  # one control API per host, not per container
    if value == "/data" or value.startswith("/data/"):
        value = str(data_dir) + value[len("/data") :]
    if value == "/shared" or value.startswith("/shared/"):
        value = str(shared) + value[len("/shared") :]
    return value


@pytest.mark.timeout(240)
def test_the_compose_services_form_one_swarm_and_train(tmp_path):
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    workers = services["node"].get("deploy", {}).get("replicas", 1)
    shared, bootstrap_port = tmp_path / "shared", free_port()
    nodes: list[NodeProcess] = []
    try:
        plan = [("bootstrap", services["bootstrap"], bootstrap_port)]
        plan += [(f"node-{i}", services["node"], free_port()) for i in range(workers)]
        for name, service, port in plan:
            where = dict(data_dir=tmp_path / name, shared=shared, port=port, bootstrap_port=bootstrap_port)
            env = {k: localize(str(v), **where) for k, v in service["environment"].items()}
            command = [localize(str(arg), **where) for arg in service["command"]]
            data_dir = Path(env["FEDSWARM_DATA_DIR"])
            nodes.append(NodeProcess(data_dir, command=command, env=env))
        for node in nodes:
            node.wait_ready()
        peer_ids = {n.peer_id for n in nodes}
        for node in nodes:
            wait_until(
                lambda n=node: n.peer_ids() == peer_ids - {n.peer_id},
                timeout_s=60,
                what=f"{node.data_dir.name} to list every other service",
            )
        claims = sorted(p.read_text().strip() for p in (shared / "claims").iterdir())
        assert sorted(claims) == sorted(peer_ids), "each service claims its own part of the data"
        for node in nodes:  # digits from scratch scores ~0.1; the swarm gets past 0.9
            wait_until(
                lambda n=node: (s := n.status())["test"].get("accuracy", 0) >= 0.8 and s["exchanges"]["ok"] >= 5,
                timeout_s=90,
                what=f"{node.data_dir.name} to learn and exchange",
            )
    finally:
        for node in nodes:
            node.cleanup()
