"""training/ stands alone: it must never import the network (p2p), the node or hivemind."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

TRAINING = Path(__file__).resolve().parents[2] / "training"
FORBIDDEN = {"p2p", "node", "hivemind"}


def imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_training_imports_no_network_or_node_code() -> None:
    modules = sorted(TRAINING.glob("*.py"))
    assert len(modules) >= 8  # the package is really there
    offenders = {p.name: imported_top_levels(p) & FORBIDDEN for p in modules if imported_top_levels(p) & FORBIDDEN}
    assert offenders == {}
