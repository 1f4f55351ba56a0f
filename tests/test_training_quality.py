"""benchmarks/training_quality.py runs, with tiny sizes, and its structural claims hold (no timing
assertions; the quality figures in docs/strategies.md come from full runs)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import paramshape as ps

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


# ------------------------------------------------------------------ the recommendation, small versions
@pytest.fixture(scope="module")
def recommended_rows(bench):
    """Each problem's baseline and recommended method, 3 seeds, a tenth of the full length."""
    rows = {}
    for problem in bench.PROBLEMS.values():
        for row in bench.evaluate(problem, [0, 1, 2], 0.1, (problem.recommended,)):
            rows[(row["problem"], row["method"])] = row
    return rows


@pytest.mark.slow
def test_the_recommended_method_matches_the_baseline_within_seed_noise(bench, recommended_rows):
    """docs/strategies.md's definition: the mean difference to the hand-written code, paired by seed,
    is within two standard deviations of the seed noise (the larger of the baseline's own spread
    over seeds and the paired differences' spread), or better."""
    for problem in bench.PROBLEMS.values():
        row = recommended_rows[(problem.name, problem.recommended)]
        hand = recommended_rows[(problem.name, "hand")]
        assert row["verdict"] in {"=", "better"}, (problem.name, row, hand)
        assert math.isfinite(row["final_mean"])


def test_the_verdict_is_within_two_seed_spreads(bench):
    """The verdict rule itself, on runs with known finals (no training)."""

    def runs(finals):
        out = []
        for value in finals:
            run = bench.Run()
            run.record(1, value)
            out.append(run)
        return out

    problem = bench.Problem("toy", "-", "-", "-", ("hand", "project"), "project", lambda m, s, x: None)
    finals = {"hand": [1.0, 1.2, 0.8], "project": [1.1, 1.3, 0.9]}  # hand's sd 0.163: 0.1 is noise
    problem = dataclasses.replace(problem, train=lambda m, s, x: runs(finals[m])[s])
    verdicts = {r["method"]: r["verdict"] for r in bench.evaluate(problem, [0, 1, 2], 1.0)}
    assert verdicts == {"hand": "baseline", "project": "="}
    finals["project"] = [1.4, 1.6, 1.2]  # 0.4 worse: beyond 2 x 0.163
    verdicts = {r["method"]: r["verdict"] for r in bench.evaluate(problem, [0, 1, 2], 1.0)}
    assert verdicts["project"] == "worse"


# --------------------------------------------------------- the saturation warning on these problems
def _saturation_warnings(train, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(*args)
    return [str(w.message) for w in caught if issubclass(w.category, ps.SaturationWarning)]


@pytest.mark.slow
def test_the_warning_points_the_reparametrised_wgan_critic_to_project(bench):
    """The clipped critic's optimum is on the bound: its first and last weights end mostly saturated,
    its 64 x 64 weight a fifth and growing (300 critic steps; the same on seeds 0, 1, 2)."""
    messages = _saturation_warnings(bench.train_wgan, "reparam", 0, 0.2)
    named = {m.split(" of ", 1)[1].split(" ", 1)[0] for m in messages}
    assert named == {"0.weight", "2.weight", "4.weight"}, messages
    growing = next(m for m in messages if "of 2.weight" in m)
    assert "and growing (" in growing
    assert all("method='project'" in m for m in messages)


@pytest.mark.parametrize(
    ("problem", "method", "scale"),
    [
        ("gp_lbfgs", "reparam", 5.0),  # 100 L-BFGS steps: checks at 10 and 100
        ("ordinal_cutpoints", "reparam", 1.0),  # 300 Adam steps
        ("policy_log_std", "reparam", 0.2),
        ("policy_log_std", "soft_clip", 0.2),
        ("clip_temperature", "reparam", 0.6),
    ],
)
def test_no_saturation_warning_on_the_interior_problems(bench, problem, method, scale):
    assert _saturation_warnings(bench.PROBLEMS[problem].train, method, 0, scale) == []


def test_no_saturation_warning_on_a_mixture_density_fit():
    """A 3-component Gaussian mixture fit by maximum likelihood: weights on the simplex, scales
    Positive; the optimum (the true scales 0.3, 0.5, 1) is inside. 300 Adam steps."""
    g = torch.Generator().manual_seed(0)
    component = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 2000, replacement=True, generator=g)
    data = torch.tensor([-2.0, 0.0, 3.0])[component] + torch.tensor([0.3, 0.5, 1.0])[component] * torch.randn(
        2000, generator=g
    )
    model = nn.Module()
    model.weights = nn.Parameter(torch.full((3,), 1 / 3))
    model.means = nn.Parameter(torch.tensor([-1.5, 0.5, 2.5]))  # in order: one basin per component
    model.scales = nn.Parameter(torch.ones(3))
    ps.constrain(model, "weights", ps.Simplex())
    ps.constrain(model, "scales", ps.Positive())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def fit():
        for _ in range(300):
            optimizer.zero_grad()
            log_p = torch.distributions.Normal(model.means, model.scales).log_prob(data[:, None])
            (-(log_p + model.weights.log()).logsumexp(1).mean()).backward()
            optimizer.step()

    assert _saturation_warnings(fit) == []
    assert ps.saturation(model)["scales"] == 0.0
    torch.testing.assert_close(model.scales.detach(), torch.tensor([0.3, 0.5, 1.0]), atol=0.05, rtol=0)
