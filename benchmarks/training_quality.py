"""Does the constrained model train as well as the hand-written technique it replaces?

Six small training problems, each rebuilt as popular open-source code writes it, are trained with
the hand-written technique (the baseline) and with every applicable paramshape method, from the same
seed, data, initial weights and optimizer:

========================  ==================================  =====================================
problem                   constraint                          hand-written baseline
========================  ==================================  =====================================
wgan_clip                 critic weights in [-0.01, 0.01]     ``p.data.clamp_(-c, c)`` after step
nmf_sparse                factors >= 0, sparse solution       ``clamp_(min=0)`` after step
clip_temperature          logit scale in [0, log 100]         ``clamp_(0, 4.6052)`` after step
gp_lbfgs (float64)        GP hyperparameters > 0 (L-BFGS)     ``softplus(raw)`` (+1e-4 for noise)
ordinal_cutpoints         cutpoints increasing                cumulative max after step
policy_log_std            log-std in [-20, 2]                 ``log_std.clamp(-20, 2)`` in forward
========================  ==================================  =====================================

Methods: ``hand``; ``reparam`` (the default map: unit slope at the centre, ``init="project"`` at a
quarter of the largest slope); ``reparam_logistic`` (the pre-0.2 map, ``Box(..., slope=(h-l)/4)``
or ``softness=1``, for the decision); on the WGAN critic, two attempted fixes of the default:
``reparam_small_slope`` (``Box(-c, c, slope=0.1)``: slower into the tails) and
``reparam_inbox_init`` (PyTorch's default init shrunk to half the box, so nothing starts at the
quarter-slope line); ``soft_clip`` (``SoftClip``, identity inside); ``project``
(``method="project"``); ``penalty`` (``method="penalty"``, ``loss + ps.penalty(model)``). Not every
method applies everywhere: L-BFGS evaluates points off the optimizer's steps, where a projection or
a penalty does not hold, and ``Ordered`` has no projection.

For each problem and method, over ``--seeds`` seeds (default 3; never tune to one), it reports the
final quality (lower is better: sliced Wasserstein distance, relative reconstruction error, test
loss or NLL) as mean +- standard deviation, the verdict against the baseline (``=`` within seed
noise, that is within two standard deviations of the difference; ``better``; ``worse``), the steps
needed to reach the baseline's final quality of the same seed (within 2% of its scale, median over
seeds; ``-`` when never), and the training time relative to the baseline, median over seeds, with
all methods run in turn in one process. Results feed the tables of docs/strategies.md.

Run from the repository root (a few minutes on 2 CPU cores)::

    python benchmarks/training_quality.py                    # all problems, 3 seeds
    python benchmarks/training_quality.py --problems nmf_sparse wgan_clip --json out.json
    python benchmarks/training_quality.py --scale 0.05 --seeds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import paramshape as ps

# A sibling file, not a package: this script runs by path (see _tables.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import markdown_table

METHODS = (
    "hand",
    "reparam",
    "reparam_logistic",
    "reparam_small_slope",
    "reparam_inbox_init",
    "soft_clip",
    "project",
    "penalty",
)
PENALTY_WEIGHT = 1e3


@dataclass
class Run:
    """One training run: quality at each evaluation, and the seconds spent in training steps."""

    steps: list[int] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def record(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.quality.append(value)


@dataclass(frozen=True)
class Problem:
    name: str
    constraint: str
    baseline: str
    metric: str
    methods: tuple[str, ...]
    recommended: str
    train: Callable[[str, int, float], Run]


def _constrain(
    model: nn.Module, names: list[str], method: str, make: dict[str, Callable[[], ps.Transform]]
) -> None:
    """Attach the problem's transform for ``method`` (``make`` maps method names to transforms)."""
    if method == "hand":
        return
    transform_method = {"project": "project", "penalty": "penalty"}.get(method, "reparam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)  # "init='project' moved n values"
        for name in names:
            ps.constrain(
                model,
                name,
                make.get(method, make["reparam"])(),
                init="project",
                method=transform_method,
                weight=PENALTY_WEIGHT if method == "penalty" else None,
            )


def _penalty(model: nn.Module, method: str) -> Tensor | float:
    return ps.penalty(model) if method == "penalty" else 0.0


def _timed(run: Run, step: Callable[[], None]) -> None:
    start = time.perf_counter()
    step()
    run.seconds += time.perf_counter() - start


def _steps(base: int, scale: float) -> int:
    return max(2, round(base * scale))


# ------------------------------------------------------------------------------------ WGAN clipping
def _ring(n: int, generator: torch.Generator) -> Tensor:
    angles = torch.randint(0, 8, (n,), generator=generator) * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    return centres + 0.05 * torch.randn(n, 2, generator=generator)


def _sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).abs().mean())


def train_wgan(method: str, seed: int, scale: float) -> Run:
    """WGAN with weight clipping (Arjovsky et al. 2017; the PyTorch reference implementation):
    RMSprop, 5 critic steps per generator step, every critic parameter clipped to [-0.01, 0.01]."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)
    clip = 0.01
    gen = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    critic = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    names = [n for n, _ in critic.named_parameters()]
    if method == "reparam_inbox_init":  # the default init shrunk into the box, each tensor's shape kept
        with torch.no_grad():
            for p in critic.parameters():
                p.mul_(0.5 * clip / p.abs().max())
    _constrain(
        critic,
        names,
        method,
        {
            "reparam": lambda: ps.Box(-clip, clip),
            "reparam_logistic": lambda: ps.Box(-clip, clip, slope=2 * clip / 4),
            "reparam_small_slope": lambda: ps.Box(-clip, clip, slope=0.1),
            "soft_clip": lambda: ps.SoftClip(-clip, clip),
            "project": lambda: ps.Box(-clip, clip),
            "penalty": lambda: ps.Box(-clip, clip),
        },
    )
    opt_g = torch.optim.RMSprop(gen.parameters(), lr=5e-4)
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=5e-4)
    directions = F.normalize(torch.randn(2, 64, generator=data), dim=0)
    real_test = _ring(2000, data)
    noise_test = torch.randn(2000, 2, generator=data)
    run = Run()
    steps = _steps(300, scale)

    def step() -> None:
        for _ in range(5):
            real = _ring(128, data)
            fake = gen(torch.randn(128, 2, generator=data)).detach()
            opt_c.zero_grad()
            (critic(fake).mean() - critic(real).mean() + _penalty(critic, method)).backward()
            opt_c.step()
            if method == "hand":
                with torch.no_grad():
                    for p in critic.parameters():
                        p.clamp_(-clip, clip)
        opt_g.zero_grad()
        (-critic(gen(torch.randn(128, 2, generator=data))).mean()).backward()
        opt_g.step()

    for i in range(1, steps + 1):
        _timed(run, step)
        if i % max(1, steps // 20) == 0 or i == steps:
            with torch.no_grad():
                run.record(i, _sliced_wasserstein(gen(noise_test), real_test, directions))
    if method.startswith("reparam") or method == "soft_clip":
        run.extra["saturated"] = statistics.fmean(ps.saturation(critic).values())
    return run


# -------------------------------------------------------------------------------------------- NMF
def train_nmf(method: str, seed: int, scale: float) -> Run:
    """Non-negative matrix factorization by projected gradient (Adam, then ``clamp_(min=0)``), with
    a sparse ground truth: half of the true factors' entries are exactly 0."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rank = 5
    w_true = torch.rand(60, rank, generator=g) * (torch.rand(60, rank, generator=g) < 0.5)
    h_true = torch.rand(rank, 40, generator=g) * (torch.rand(rank, 40, generator=g) < 0.5)
    v = w_true @ h_true + 0.01 * torch.rand(60, 40, generator=g)
    model = nn.Module()
    model.w = nn.Parameter(torch.rand(60, rank, generator=g) * 0.5)
    model.h = nn.Parameter(torch.rand(rank, 40, generator=g) * 0.5)
    _constrain(
        model,
        ["w", "h"],
        method,
        {"reparam": ps.Positive, "reparam_logistic": lambda: ps.Positive(softness=1.0)},
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    run = Run()
    steps = _steps(1000, scale)

    def step() -> None:
        optimizer.zero_grad()
        (((v - model.w @ model.h) ** 2).mean() + _penalty(model, method)).backward()
        optimizer.step()
        if method == "hand":
            with torch.no_grad():
                model.w.clamp_(min=0)
                model.h.clamp_(min=0)

    for i in range(1, steps + 1):
        _timed(run, step)
        if i % max(1, steps // 20) == 0 or i == steps:
            with torch.no_grad():
                run.record(i, float(torch.linalg.norm(v - model.w @ model.h) / torch.linalg.norm(v)))
    with torch.no_grad():
        run.extra["exact_zeros"] = float((model.w == 0).float().mean())
    return run


# ------------------------------------------------------------------------------ CLIP temperature
def train_clip(method: str, seed: int, scale: float) -> Run:
    """CLIP's learned logit scale, ``logit_scale.data.clamp_(0, 4.6052)`` after each step (scale at
    most 100), with linear image and text projections on paired synthetic embeddings. The data are
    nearly separable, so the optimal scale is on the cap."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cap = math.log(100.0)
    latent = torch.randn(1024, 16, generator=g)
    images = latent @ torch.randn(16, 32, generator=g) + 0.1 * torch.randn(1024, 32, generator=g)
    texts = latent @ torch.randn(16, 24, generator=g) + 0.1 * torch.randn(1024, 24, generator=g)
    model = nn.Module()
    model.image = nn.Linear(32, 16, bias=False)
    model.text = nn.Linear(24, 16, bias=False)
    model.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    _constrain(
        model,
        ["logit_scale"],
        method,
        {"reparam": lambda: ps.Box(0.0, cap), "reparam_logistic": lambda: ps.Box(0.0, cap, slope=cap / 4)},
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_on(rows: slice) -> Tensor:
        a = F.normalize(model.image(images[rows]), dim=1)
        b = F.normalize(model.text(texts[rows]), dim=1)
        logits = model.logit_scale.exp() * a @ b.T
        target = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    run = Run()
    steps = _steps(500, scale)

    def step() -> None:
        start = int(torch.randint(0, 6, (), generator=g)) * 128
        optimizer.zero_grad()
        (loss_on(slice(start, start + 128)) + _penalty(model, method)).backward()
        optimizer.step()
        if method == "hand":
            with torch.no_grad():
                model.logit_scale.clamp_(0, cap)

    for i in range(1, steps + 1):
        _timed(run, step)
        if i % max(1, steps // 20) == 0 or i == steps:
            with torch.no_grad():
                run.record(i, float(loss_on(slice(768, 1024))))
    run.extra["logit_scale"] = float(model.logit_scale.detach())
    return run


# ----------------------------------------------------------------------------- GP with L-BFGS
def train_gp(method: str, seed: int, scale: float) -> Run:
    """Exact GP regression in float64, RBF kernel, hyperparameters by L-BFGS on the negative marginal
    log-likelihood; the baseline is GPyTorch's parametrization: ``softplus(raw)``, plus 1e-4 for
    the noise variance."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(80, 1, generator=g, dtype=torch.float64) * 6
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(80, generator=g, dtype=torch.float64)
    model = nn.Module()
    start = torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)  # lengthscale, outputscale, noise
    if method == "hand":
        model.raw = nn.Parameter(torch.log(torch.expm1(start - torch.tensor([0, 0, 1e-4]))))
    else:
        model.lengthscale = nn.Parameter(start[0].clone())
        model.outputscale = nn.Parameter(start[1].clone())
        model.noise = nn.Parameter(start[2].clone())
        softness = 1.0 if method == "reparam_logistic" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.ParamshapeWarning)
            for name in ("lengthscale", "outputscale"):
                ps.constrain(model, name, ps.Positive(softness=softness))
            ps.constrain(
                model, "noise", ps.GreaterThan(torch.tensor(1e-4, dtype=torch.float64), softness=softness)
            )

    def hyper() -> tuple[Tensor, Tensor, Tensor]:
        if method == "hand":
            values = F.softplus(model.raw) + torch.tensor([0, 0, 1e-4], dtype=torch.float64)
            return values[0], values[1], values[2]
        return model.lengthscale, model.outputscale, model.noise

    def nll() -> Tensor:
        lengthscale, outputscale, noise = hyper()
        k = outputscale * torch.exp(-0.5 * torch.cdist(x, x) ** 2 / lengthscale**2)
        chol = torch.linalg.cholesky(k + noise * torch.eye(80, dtype=torch.float64))
        alpha = torch.cholesky_solve(y[:, None], chol)
        return (0.5 * (y[:, None] * alpha).sum() + chol.diagonal().log().sum()) / 80 + 0.5 * math.log(
            2 * math.pi
        )

    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    run = Run()
    for i in range(1, _steps(20, scale) + 1):
        _timed(run, lambda: optimizer.step(closure))
        with torch.no_grad():
            run.record(i, float(nll()))
    return run


# ------------------------------------------------------------------------------ ordinal cutpoints
def train_ordinal(method: str, seed: int, scale: float) -> Run:
    """Ordinal logistic regression (spacecutter's ``OrdinalLogisticModel``): a linear score and
    ``K - 1`` cutpoints, kept increasing by its ``AscensionCallback`` (a cumulative maximum after
    each step), which lets cutpoints tie; the likelihood is floored at 1e-15 as there."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    classes, features = 6, 8
    beta = torch.randn(features, generator=g)
    true_cuts = torch.tensor([-3.0, -1.0, -0.8, 0.5, 2.5])
    x = torch.randn(1200, features, generator=g)
    u = torch.rand(1200, generator=g).clamp(1e-6, 1 - 1e-6)
    latent = x @ beta + torch.log(u) - torch.log1p(-u)  # plus standard logistic noise
    labels = (latent[:, None] > true_cuts).sum(1)
    model = nn.Module()
    model.score = nn.Linear(features, 1, bias=False)
    model.cutpoints = nn.Parameter(torch.arange(classes - 1).float() - classes / 2)
    _constrain(model, ["cutpoints"], method, {"reparam": ps.Ordered})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def nll(rows: slice) -> Tensor:
        s = model.score(x[rows])
        cdf = torch.sigmoid(model.cutpoints - s)
        probs = torch.cat([cdf[:, :1], cdf[:, 1:] - cdf[:, :-1], 1 - cdf[:, -1:]], 1)
        return -probs.gather(1, labels[rows, None]).clamp_min(1e-15).log().mean()

    run = Run()
    steps = _steps(300, scale)

    def step() -> None:
        optimizer.zero_grad()
        (nll(slice(0, 900)) + _penalty(model, method)).backward()
        optimizer.step()
        if method == "hand":
            with torch.no_grad():
                model.cutpoints.copy_(model.cutpoints.cummax(0).values)

    for i in range(1, steps + 1):
        _timed(run, step)
        if i % max(1, steps // 20) == 0 or i == steps:
            with torch.no_grad():
                run.record(i, float(nll(slice(900, 1200))))
    return run


# ---------------------------------------------------------------------------- policy log-std
def train_policy(method: str, seed: int, scale: float) -> Run:
    """A Gaussian policy's state-independent log-std (PPO, SAC implementations), clamped to
    [-20, 2] in the forward pass, fit by maximum likelihood to actions whose true log-stds
    (-3, -1.2, 0) lie inside: the optimum is interior."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(2048, 6, generator=g)
    true_std = torch.tensor([0.05, 0.3, 1.0])
    actions = states @ torch.randn(6, 3, generator=g) + true_std * torch.randn(2048, 3, generator=g)
    model = nn.Module()
    model.mean = nn.Linear(6, 3)
    model.log_std = nn.Parameter(torch.zeros(3))
    _constrain(
        model,
        ["log_std"],
        method,
        {
            "reparam": lambda: ps.Box(-20.0, 2.0),
            "reparam_logistic": lambda: ps.Box(-20.0, 2.0, slope=22 / 4),
            "soft_clip": lambda: ps.SoftClip(-20.0, 2.0),
        },
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def nll(rows: slice) -> Tensor:
        log_std = model.log_std.clamp(-20, 2) if method == "hand" else model.log_std
        dist = torch.distributions.Normal(model.mean(states[rows]), log_std.exp())
        return -dist.log_prob(actions[rows]).sum(1).mean()

    run = Run()
    steps = _steps(1500, scale)

    def step() -> None:
        start = int(torch.randint(0, 12, (), generator=g)) * 128
        optimizer.zero_grad()
        (nll(slice(start, start + 128)) + _penalty(model, method)).backward()
        optimizer.step()

    for i in range(1, steps + 1):
        _timed(run, step)
        if i % max(1, steps // 20) == 0 or i == steps:
            with torch.no_grad():
                run.record(i, float(nll(slice(1536, 2048))))
    return run


PROBLEMS = {
    p.name: p
    for p in (
        Problem(
            "wgan_clip",
            "critic weights in [-0.01, 0.01]",
            "clamp_ after step",
            "sliced W. distance",
            (
                "hand",
                "project",
                "reparam",
                "reparam_logistic",
                "reparam_small_slope",
                "reparam_inbox_init",
                "soft_clip",
                "penalty",
            ),
            "project",
            train_wgan,
        ),
        Problem(
            "nmf_sparse",
            "factors >= 0, sparse optimum",
            "clamp_(min=0) after step",
            "rel. error",
            ("hand", "project", "reparam", "reparam_logistic", "penalty"),
            "project",
            train_nmf,
        ),
        Problem(
            "clip_temperature",
            "logit scale in [0, log 100]",
            "clamp_ after step",
            "test loss",
            ("hand", "project", "reparam", "reparam_logistic", "penalty"),
            "project",
            train_clip,
        ),
        Problem(
            "gp_lbfgs",
            "GP hyperparameters > 0, L-BFGS, float64",
            "softplus(raw) (+1e-4)",
            "NLL per point",
            ("hand", "reparam", "reparam_logistic"),
            "reparam",
            train_gp,
        ),
        Problem(
            "ordinal_cutpoints",
            "cutpoints increasing",
            "cummax after step",
            "test NLL",
            ("hand", "reparam", "penalty"),
            "reparam",
            train_ordinal,
        ),
        Problem(
            "policy_log_std",
            "log-std in [-20, 2], interior optimum",
            "clamp in forward",
            "test NLL",
            ("hand", "reparam", "reparam_logistic", "soft_clip", "project", "penalty"),
            "soft_clip",
            train_policy,
        ),
    )
}


def _steps_to_reach(run: Run, target: float, tolerance: float) -> int | None:
    return next((s for s, q in zip(run.steps, run.quality, strict=True) if q <= target + tolerance), None)


def evaluate(
    problem: Problem, seeds: list[int], scale: float, methods: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """Every method of ``problem`` (or those of ``methods`` that apply; the baseline always) for
    every seed, the methods in turn within each seed."""
    chosen = [m for m in problem.methods if methods is None or m == "hand" or m in methods]
    runs: dict[str, list[Run]] = {m: [] for m in chosen}
    for seed in seeds:
        for method in chosen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ps.SaturationWarning)  # measured, not warned, here
                runs[method].append(problem.train(method, seed, scale))
    hand = runs["hand"]
    spread = statistics.pstdev([r.quality[-1] for r in hand]) if len(hand) > 1 else 0.0
    rows = []
    for method, method_runs in runs.items():
        finals = [r.quality[-1] for r in method_runs]
        diffs = [r.quality[-1] - h.quality[-1] for r, h in zip(method_runs, hand, strict=True)]
        noise = 2 * max(statistics.pstdev(diffs) if len(diffs) > 1 else 0.0, spread, 1e-12)
        mean_diff = statistics.fmean(diffs)
        verdict = "=" if abs(mean_diff) <= noise else ("better" if mean_diff < 0 else "worse")
        reach = []
        for r, h in zip(method_runs, hand, strict=True):
            target = h.quality[-1]
            reach.append(_steps_to_reach(r, target, 0.02 * max(abs(target), 1e-3)))
        reached = [s for s in reach if s is not None]
        ratios = [r.seconds / h.seconds for r, h in zip(method_runs, hand, strict=True) if h.seconds > 0]
        extras = {k: statistics.fmean(r.extra[k] for r in method_runs) for k in method_runs[0].extra}
        rows.append(
            {
                "problem": problem.name,
                "method": method,
                "recommended": method == problem.recommended,
                "final_mean": statistics.fmean(finals),
                "final_sd": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
                "verdict": "baseline" if method == "hand" else verdict,
                "steps_to_baseline": statistics.median(reached) if len(reached) == len(reach) else None,
                "total_steps": method_runs[0].steps[-1],
                "time_ratio": statistics.median(ratios) if ratios else float("nan"),
                **extras,
            }
        )
    return rows


#: The columns of :func:`format_table`, the table in docs/strategies.md.
TABLE_COLUMNS = ("problem", "method", "final quality (mean +- sd)", "vs hand", "steps to hand's quality")
TABLE_COLUMNS += ("time ratio", "notes")


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        method = f"**{r['method']}**" if r["recommended"] else r["method"]
        reach = (
            "-" if r["steps_to_baseline"] is None else f"{r['steps_to_baseline']:.0f} / {r['total_steps']}"
        )
        notes = ", ".join(f"{k} {r[k]:.2f}" for k in ("saturated", "exact_zeros", "logit_scale") if k in r)
        quality = f"{r['final_mean']:.4g} +- {r['final_sd']:.2g}"
        cells.append([r["problem"], method, quality, r["verdict"], reach, f"{r['time_ratio']:.2f}", notes])
    return markdown_table(TABLE_COLUMNS, cells)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every problem's step count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.seeds} seeds, scale {args.scale}, {cpu}", flush=True)
    try:
        rows: list[dict[str, Any]] = []
        for name in args.problems:
            problem_rows = evaluate(PROBLEMS[name], list(range(args.seeds)), args.scale)
            print(format_table(problem_rows), flush=True)  # as each problem ends: long runs show progress
            rows.extend(problem_rows)
    finally:
        torch.set_num_threads(previous_threads)
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"seeds": args.seeds, "scale": args.scale, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
