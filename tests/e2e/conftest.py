"""e2e: attach the node logs and the event timeline of the namespace swarm to a failing test's report."""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    swarm = item.funcargs.get("swarm")
    describe = getattr(swarm, "describe", None)
    if describe is not None:
        report.sections.append(("fedswarm e2e: timeline and node logs", describe()))
