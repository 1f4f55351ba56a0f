"""benchmarks/run.py runs end to end with tiny sizes and reports every section (no timing assertions:
the numbers of a tiny run mean nothing, only that the script keeps working)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import paramshape as ps
from paramshape.fusion.compiled import _backend, _reset

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
TINY = [
    "--sizes", "4096", "--batches", "4", "8", "--width", "16", "--rounds", "2", "--steps", "1",
    "--tensors", "20", "--threshold-sizes", "256", "1024", "--families", "box", "simplex",
    "--geotorch-batch", "4", "--backend", "aot_eager", "--no-plot", "--small-batch", "4",
    "--sweep-sizes", "64", "256", "--registration-counts", "4", "8", "--big-tensor", "1000",
    "--orthogonal-shape", "40", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def results(bench, tmp_path_factory):
    torch.compiler.reset()
    threads = torch.get_num_threads()
    path = tmp_path_factory.mktemp("bench") / "results.json"
    try:
        results = bench.main([*TINY, "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
        _reset()
    return results, path


def test_every_section_reports(bench, results, capsys):
    results, path = results
    assert {r["variant"] for r in results["transform"]} == {
        "floor (clone)", "paramshape eager (hand-fused)", "paramshape fused (compiled)", "unfused map (Box.forward)",
        "peer: one-sided low + w sigmoid(x), eager", bench.TRANSFORM_BOUND,
    }  # fmt: skip
    assert {r["kind"] for r in results["transform"]} == {"forward", "forward+backward"}
    variants = {r["variant"] for r in results["mlp"]}
    assert {
        "unconstrained",
        "paramshape eager",
        "paramshape fused",
        'paramshape method="project"',
    } <= variants
    assert {"peer: torch biject_to parametrization", "peer: GPyTorch-style raw parameter"} <= variants
    assert bench.MLP_BOUND in variants
    assert {r["batch"] for r in results["mlp"]} == {4, 8}
    assert results["geotorch"] or "geotorch is not installed" in results["geotorch_note"]
    assert results["registration"]["tensors"] == 20
    assert results["registration"]["compiled_graphs"] == 0
    assert {r["family"] for r in results["threshold"]} == {"box", "simplex"}
    assert {r["variant"] for r in results["small"]} == {
        "unconstrained", "peer: clamp_ after step (by hand)", 'paramshape method="project"',
        "paramshape reparam (default)", "paramshape reparam, saturation check off",
        "paramshape reparam, fold=True",
        "peer: plain register_parametrization, low + w sigmoid(x)", "peer: GPyTorch-style raw parameter",
    }  # fmt: skip
    assert "paramshape fold=True" in variants
    assert results["registration_vs_bare"]["tensors"] == 20
    assert math.isfinite(results["registration_vs_bare"]["ratio"])
    # Counted, not timed: constrain() does more than the bare loop it builds on.
    assert results["registration_vs_bare"]["calls"] > results["registration_vs_bare"]["bare_calls"] > 0
    assert {r["size"] for r in results["sweep"]} == {64, 256}
    assert [r["tensors"] for r in results["registration_table"]] == [4, 8, 1]
    assert results["machine"]["device"] == "cpu"
    assert results["orthogonal"]["shape"] == [40, 3]
    assert math.isfinite(results["orthogonal"]["step_s"])
    assert results["machine"]["cpu"]
    for row in results["small"] + results["sweep"]:
        assert math.isfinite(row["ratio"])
        assert math.isfinite(row["ms"])
    # Ratios are taken against a baseline timed in the same rounds: the baseline's own is exactly 1
    # (the median of t / t), one per size and pass (or batch); the others are finite numbers.
    for section, baseline, key in (
        ("transform", "floor (clone)", ("size", "kind")),
        ("mlp", "unconstrained", ("batch",)),
    ):
        groups = {tuple(row[k] for k in key) for row in results[section]}
        floors = [row for row in results[section] if row["variant"] == baseline]
        assert len(floors) == len(groups), f"{section}: one {baseline!r} row per {key}"
        assert all(row["ratio"] == 1.0 for row in floors)
        assert all(math.isfinite(row["ratio"]) and math.isfinite(row["ms"]) for row in results[section])
    saved = json.loads(path.read_text())
    assert saved["targets"] == results["targets"]
    assert "torch" in saved["machine"]


def test_targets_cover_every_goal_of_the_issue(results):
    results, _ = results
    names = " / ".join(t["target"] for t in results["targets"])
    for goal in (
        "fused Box forward+backward",
        "best reparametrised mode",
        "faster than every",
        "constrain() of",
        "small model: reparam <=",
        "fastest reparametrizing peer",
        "within 0.03 of the hand clamp",
    ):
        assert goal in names
    assert all(isinstance(t["met"], bool) for t in results["targets"])
    # The targets that the bounds concern show them beside the measured ratio.
    measured = {t["target"]: t["measured"] for t in results["targets"]}
    assert "bound" in next(m for name, m in measured.items() if name.startswith("fused Box forward+backward"))
    assert all("bound" in m for name, m in measured.items() if "best reparametrised mode" in name)


def test_the_bounds_compute_what_they_stand_for(bench):
    """The transform bound is the logistic with its true derivative (so its backward does the work
    of an exact map), and the MLP bound leaves the model as an unconstrained step would."""
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(bench._SigmoidRecomputed.apply, (x,))
    grad = torch.randn(64, dtype=torch.float64)
    bench._SigmoidRecomputed.apply(x).backward(grad)
    s = 1 / (1 + torch.exp(-x.detach()))
    torch.testing.assert_close(x.grad, grad * s * (1 - s))
    model = torch.nn.Linear(4, 4)
    model.weight.grad = torch.ones(4, 4)
    before = model.weight.detach().clone()
    bench._bound_passes()(model)
    assert torch.equal(model.weight, before)


def test_the_run_leaves_the_fusion_settings_alone(results):
    assert ps.get_fusion() == "auto"
    assert _backend[0] == "inductor"
