"""benchmarks/compare_strategies.py runs, with tiny sizes, and its claims hold (no timing assertions)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_strategies.py"
TINY = ["--steps", "6", "--batch", "16", "--hidden", "8", "--test-size", "64"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compare_strategies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def run(bench, tmp_path, *extra):
    threads = ["--threads", str(torch.get_num_threads())]  # leave the process's setting alone
    return bench.main([*TINY, *threads, "--json", str(tmp_path / "results.json"), *extra])


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    """One tiny run shared by the tests below: (results, printed output, saved JSON)."""
    folder = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        everything = run(bench, folder, "--no-plot")
    return everything, printed.getvalue(), json.loads((folder / "results.json").read_text())


def test_every_strategy_runs_and_reports(tiny_run):
    everything, printed, saved = tiny_run
    results = everything["strategies"]
    names = [result["strategy"] for result in results]
    assert names[0] == "baseline (none)"
    assert results[0]["time_ratio"] == 1.0
    assert {"reparam (Box)", "project", "penalty (w=1)", "output HardClamp (ST)"} <= set(names)
    assert any(name.startswith("clip_grad") for name in names)
    for result in results:
        assert f"| {result['strategy']} |" in printed
        assert len(result["losses"]) == 6
        # The ratio is the row's median step time over the baseline's, measured in the same run
        # (a timing itself is never asserted).
        assert result["time_ratio"] == pytest.approx(result["step_ms"] / results[0]["step_ms"], rel=1e-9)
        assert 0 <= result["at_bound"] <= 1
        assert 0 <= result["dead_gradient"] <= 1
    assert [r["strategy"] for r in saved["strategies"]] == names
    assert "torch" in saved["machine"]
    heads = everything["heads"]
    assert {r["task"] for r in heads} == {"positive", "probabilities"}
    assert {"ReLU", "Positive (softplus)", "TemperatureSoftmax, no bounds"} <= {r["strategy"] for r in heads}
    for result in heads:
        assert f"| {result['task']} | {result['strategy']} |" in printed
        assert len(result["losses"]) == 6


def test_the_hard_guarantees_hold_after_every_step(tiny_run):
    everything = tiny_run[0]
    results = {result["strategy"]: result for result in everything["strategies"]}
    for name, result in results.items():
        if name.startswith(("reparam", "project")):
            assert result["weights_feasible_steps"] == 1.0, name
            assert result["final_weight_violation"] == 0.0, name
        if result["bounds"] == "outputs":
            assert result["outputs_feasible_steps"] == 1.0, name
            assert result["test_outputs_inside"] == 1.0, name
    assert results["output HardClamp (ST)"]["dead_gradient"] == 0.0
    for result in everything["heads"]:
        if result["strategy"] != "none":
            assert result["outputs_feasible_steps"] == 1.0, result["strategy"]
        if result["strategy"].startswith("TemperatureSoftmax, bounds (0.5, 2)"):
            assert 0.5 <= float(result["note"].removeprefix("T = ")) <= 2.0


def test_the_plot_is_optional_and_written_when_matplotlib_is_there(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    run(bench, tmp_path, "--steps", "2")
    assert "matplotlib is not installed: no plot" in capsys.readouterr().out

    calls = []

    class Axes:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append(name)

    class Figure(Axes):
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"png")

    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda *args, **kwargs: (Figure(), (Axes(), Axes()))
    pyplot.close = lambda figure: None
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = lambda backend: None
    matplotlib.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    target = tmp_path / "plot.png"
    run(bench, tmp_path, "--steps", "2", "--plot", str(target))
    assert target.read_bytes() == b"png"
    assert "plot" in calls
    assert f"plot written to {target}" in capsys.readouterr().out
