from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: start_node("a", "--join", addr) starts a node with data dir tmp_path/a and waits for it."""
    nodes: list[NodeProcess] = []

    def start(name: str, *args: str, wait: bool = True, **kwargs) -> NodeProcess:
        node = NodeProcess(tmp_path / name, *args, **kwargs)
        nodes.append(node)
        return node.wait_ready() if wait else node

    yield start
    for node in nodes:
        node.cleanup()
