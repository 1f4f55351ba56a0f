"""benchmarks/compare_problems.py runs end to end with a few steps, with and without geoopt (no timing
or quality assertions: a three-step run means nothing, only that the script keeps working)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_problems.py"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_compare_problems", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_every_problem_reports_its_strategies(bench, capsys):
    results = bench.main(["--steps", "3"])
    problems = {r["problem"] for r in results}
    assert len(problems) == 4
    strategies = {r["strategy"] for r in results}
    assert {
        "paramshape riemannian",
        "paramshape lagrangian",
        "cooper-style GDA",
        "unconstrained",
    } <= strategies
    assert ("geoopt RiemannianAdam" in strategies) == (bench.geoopt is not None)
    assert "| problem | strategy |" in capsys.readouterr().out


def test_a_missing_peer_is_skipped(bench, monkeypatch):
    monkeypatch.setattr(bench, "geoopt", None)
    results = bench.main(["--steps", "2", "--problems", "eigenvector"])
    assert not any(r["strategy"].startswith("geoopt") for r in results)
