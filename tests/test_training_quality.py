"""benchmarks/training_quality.py runs, with tiny sizes, and its structural claims hold (no timing
assertions; the quality figures in docs/strategies.md come from full runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "training_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("training_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def tiny_rows(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "rows.json"
    threads = ["--threads", str(torch.get_num_threads())]
    rows = bench.main(["--scale", "0.01", "--seeds", "2", "--json", str(path), *threads])
    return rows, json.loads(path.read_text())


def test_every_problem_runs_every_applicable_method(bench, tiny_rows):
    rows, saved = tiny_rows
    assert len(bench.PROBLEMS) >= 6
    expected = {(p.name, m) for p in bench.PROBLEMS.values() for m in p.methods}
    assert {(r["problem"], r["method"]) for r in rows} == expected
    assert saved["rows"] == json.loads(json.dumps(rows))
    for problem in bench.PROBLEMS.values():
        assert problem.methods[0] == "hand"
        assert problem.recommended in problem.methods
        assert set(problem.methods) <= set(bench.METHODS)
    for row in rows:
        assert row["verdict"] in {"baseline", "=", "better", "worse"}
        assert row["final_mean"] == row["final_mean"]  # not NaN: every run finished
        assert row["time_ratio"] > 0


def test_project_is_the_hand_written_clamp_bit_for_bit(tiny_rows):
    """``method="project"`` after the same optimizer step is the clamp: identical trajectories."""
    rows, _ = tiny_rows
    by_key = {(r["problem"], r["method"]): r for r in rows}
    for problem in ("nmf_sparse", "clip_temperature", "policy_log_std"):
        assert by_key[(problem, "project")]["final_mean"] == by_key[(problem, "hand")]["final_mean"]


def test_the_table_names_the_recommended_method(bench, tiny_rows):
    rows, _ = tiny_rows
    table = bench.format_table(rows)
    assert "| wgan_clip | **project** |" in table
    assert "| gp_lbfgs | **reparam** |" in table
