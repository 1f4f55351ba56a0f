"""The pytest plugin that ``tests/mutation.py`` loads into each mutant's run (``-p tests._mutation_plugin``).

It does two things, configured through environment variables so that a forked child and a fresh
interpreter are set up alike:

* ``PARAMSHAPE_MUTATION_ORDER``: a JSON file ``{"first": [node ids], "durations": {node id: s}}``.
  The collected tests run in that order: the tests that killed a mutant of the same site or module
  before (``first``) lead, then every other test from the fastest to the slowest of the unmutated
  run. With ``-x`` a mutant's run stops at its first failure, so a kill costs the fewest seconds;
  a survivor still runs every test of its subset (nothing is skipped, only reordered).
* ``PARAMSHAPE_MUTATION_RESULT``: a JSON file written at the end of the session: the node id of the
  first test that failed (or of the first module that failed to collect, with ``"collection":
  true``: a mutant that breaks the import), and every test's duration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

#: The duration assumed for a test the unmutated run did not time (a test added since).
UNKNOWN_SECONDS = 0.5

_result: dict[str, Any] = {"killer": None, "collection": False, "durations": {}}


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    path = os.environ.get("PARAMSHAPE_MUTATION_ORDER")
    if not path or not Path(path).exists():
        return
    order = json.loads(Path(path).read_text())
    first = {nodeid: rank for rank, nodeid in enumerate(order.get("first", []))}
    durations: dict[str, float] = order.get("durations", {})
    # A stable sort: equal keys keep pytest's order (parametrized cases stay together).
    items.sort(
        key=lambda item: (
            (0, first[item.nodeid], 0.0)
            if item.nodeid in first
            else (1, 0, durations.get(item.nodeid, UNKNOWN_SECONDS))
        )
    )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed and _result["killer"] is None:
        _result["killer"] = report.nodeid or "<collection>"
        _result["collection"] = True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    durations = _result["durations"]
    durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration
    if report.failed and _result["killer"] is None:
        _result["killer"] = report.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("PARAMSHAPE_MUTATION_RESULT")
    if path:
        Path(path).write_text(json.dumps(_result))
