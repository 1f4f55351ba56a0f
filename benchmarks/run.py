"""How fast paramshape is, side by side with the unconstrained model and with peers doing the same job.

One command (from the repository root; 1 to 3 minutes on 2 CPU cores, compilation included)::

    python benchmarks/run.py                       # tables and targets; JSON and plot in benchmarks/results/
    python benchmarks/run.py --json out.json --plot out.png --threads 1

Sections, each timed in one process with every variant of a table run in interleaved rounds (the
order rotates each round) and medians reported, so all rows of a table share the machine's state:

1. the transform alone (``Box(-1, 1)`` over 1M and 16M float32 values), forward and
   forward+backward: paramshape eager (hand-fused), fused (one compiled kernel), the unfused map the
   compiled kernel is traced from, the peers' one-sided map, the floor, ``clone`` (and its
   backward), and a bound: ``sigmoid`` forward, recomputed and multiplied in backward, the least
   arithmetic any exact sigmoid map does on top of the floor's allocations;
2. a training step of a 3 x Linear(512, 512) MLP with Adam, batch 32 and 256: unconstrained,
   paramshape eager / fused / whole model compiled / ``method="project"``, and the peers -- a
   hand-written ``torch.distributions.biject_to`` parametrization, a GPyTorch-style raw parameter
   transformed in ``forward``, a hand-written ``clamp_`` after the step, and a bound: the
   unconstrained step plus one ``sigmoid`` of each weight and one product with its gradient, the
   least arithmetic a sigmoid reparametrization does per step, even computed once per step;
2a. a training step of the small model of issue 12 (4 x Linear 2-64-64-64-1, all 8 tensors in
   ``Box(-0.01, 0.01)``, batch 64, Adam): unconstrained, the hand ``clamp_``, paramshape
   ``method="project"`` and reparametrized (with the saturation check on, the default, and off), a
   plain ``register_parametrization`` of ``low + w sigmoid(x)`` and GPyTorch-style raw parameters;
2b. one constrained tensor read and differentiated, by size (64 to 4M values), against the bare
   tensor and the peer's map: where the fixed cost per tensor ends;
3. geotorch, where it has the constraint (sphere, orthogonal, positive definite), against paramshape's
   transform for the same set, on the same MLP (skipped with a note when geotorch is not installed);
3b. ``Orthogonal()`` on one 30000 x 50 weight: registration and step time (and peak memory on CUDA);
4. ``constrain()`` on a model with 200 tensors (registration cost), a table by number of tensors
   (and, with ``--big-tensor N``, one tensor of N values), and inference after ``ps.unconstrain``
   against the never-constrained model;
5. per kernel, the size above which the fused kernel beats eager (how ``"auto"``'s thresholds,
   ``AUTO_MIN_ELEMENTS`` and ``Fusable.auto_min_elements``, were chosen).

``--device cuda`` creates every model and tensor on the GPU and synchronizes around each timed
round; ``--quick`` shortens every section (a smoke run, not figures to quote). The machine (CPU
model, GPU name, threads, torch) is recorded with the results: the ratios depend on it.

``pip install -e ".[bench]"`` installs matplotlib (the plot) and geotorch (section 3); both are optional.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import biject_to, constraints
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.fusion.compiled import AUTO_MIN_ELEMENTS, _backend

# A sibling file, not a package: this script runs by path (see _tables.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import markdown_table

HERE = Path(__file__).resolve().parent

SECTIONS = ("transform", "small", "mlp", "geotorch", "orthogonal", "registration", "sweep", "threshold")

#: The targets of issues 5 and 12, checked at the end of a run.
TARGETS = {
    "fused_box_vs_floor_16M": 1.3,
    "mlp_best_b256": 1.05,
    "mlp_best_b32": 1.15,
    "constrain_200_ms": 50.0,
    "small_reparam": 1.3,
    "project_vs_clamp": 0.03,
}

#: The device the run measures on (``--device``); models and tensors are created there.
DEVICE = [torch.device("cpu")]


def _sync() -> None:
    """Wait for the device: a GPU runs asynchronously, so a timer must not stop before it has."""
    if DEVICE[0].type == "cuda":
        torch.cuda.synchronize(DEVICE[0])


# ------------------------------------------------------------------------------------ timing
def interleaved(
    variants: dict[str, Callable[[], Any]], rounds: int, reps: int, baseline: str | None = None
) -> dict[str, dict[str, float]]:
    """Time every variant ``reps`` calls per round, ``rounds`` rounds, rotating the order each round.

    Returns, per variant, the median milliseconds per call and, when ``baseline`` is given, the
    median over rounds of the ratio to the baseline's time in the same round.
    """
    names = list(variants)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            _sync()
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync()
            per_round[name].append((time.perf_counter() - start) / reps * 1e3)
    results = {}
    for name in names:
        entry = {"ms": statistics.median(per_round[name])}
        if baseline is not None:
            ratios = [a / b for a, b in zip(per_round[name], per_round[baseline], strict=True)]
            entry["ratio"] = statistics.median(ratios)
        results[name] = entry
    return results


def interleaved_rows(
    variants: dict[str, Callable[[], Any]], rounds: int, reps: int, baseline: str, **labels: Any
) -> list[dict[str, Any]]:
    """:func:`interleaved`, as table rows: per variant ``{**labels, "variant": name, "ms": ..., ...}``."""
    timed = interleaved(variants, rounds, reps, baseline=baseline)
    return [{**labels, "variant": name, **entry} for name, entry in timed.items()]


@contextmanager
def fusion_mode(mode: str | None) -> Iterator[None]:
    with ps.fusion(mode) if mode is not None else nullcontext():
        yield


# ------------------------------------------------------------------------------------ 1. transform alone
def _forward(fn: Callable[[Tensor], Tensor], mode: str | None, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with fusion_mode(mode), torch.no_grad():
            fn(x)

    return run


def _forward_backward(
    fn: Callable[[Tensor], Tensor], mode: str | None, x: Tensor, grad: Tensor
) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        with fusion_mode(mode):
            fn(x).backward(grad)

    return run


def _one_sided_box(x: Tensor) -> Tensor:
    """What GPyTorch's Interval and biject_to(interval) compute: -1 + 2 sigmoid(x), three ops, which
    loses the precision near the upper bound that Box keeps."""
    return -1.0 + 2.0 * torch.sigmoid(x)


class _SigmoidRecomputed(torch.autograd.Function):
    """The bound of section 1: the logistic ``sigmoid(x)`` forward (one exp pass into a new tensor)
    and its derivative in backward, ``sigmoid(x)`` recomputed into the gradient's new tensor and
    turned into ``g s (1 - s)`` in place.
    Any exact map built on the logistic computes an exp per value forward and either recomputes it
    backward or saves a tensor, whose new memory costs more than the pass on CPU (page faults):
    what it takes beyond the floor (clone, and the copy of the gradient) is at least this."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return torch.ops.aten.sigmoid_backward.grad_input(grad, s, grad_input=s)


def transform_alone(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    box = ps.Box(-1.0, 1.0).to(DEVICE[0])
    maps: dict[str, tuple[Callable[[Tensor], Tensor], str | None]] = {
        "floor (clone)": (torch.clone, None),
        "paramshape eager (hand-fused)": (box, "off"),
        "paramshape fused (compiled)": (box, "on"),
        "unfused map (Box.forward)": (box.forward, None),
        "peer: one-sided low + w sigmoid(x), eager": (_one_sided_box, None),
        TRANSFORM_BOUND: (_SigmoidRecomputed.apply, None),
    }
    for size in sizes:
        x = torch.randn(size, device=DEVICE[0], requires_grad=True)
        grad = torch.randn(size, device=DEVICE[0])
        reps = max(1, min(50, int(2e7 // (size * 4))))
        for kind in ("forward", "forward+backward"):
            if kind == "forward":
                variants = {name: _forward(fn, mode, x) for name, (fn, mode) in maps.items()}
            else:
                variants = {name: _forward_backward(fn, mode, x, grad) for name, (fn, mode) in maps.items()}
            for run in variants.values():  # warm-up; compiles the fused kernel
                run()
            rows += interleaved_rows(variants, rounds, reps, "floor (clone)", size=size, kind=kind)
    return rows


# ------------------------------------------------------------------------------------ 2. MLP step
def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
    )


class _Bijector(nn.Module):
    """The hand-written way with torch alone: ``biject_to(constraint)`` as a parametrization."""

    def __init__(self, constraint: constraints.Constraint) -> None:
        super().__init__()
        self.bijector = biject_to(constraint)

    def forward(self, x: Tensor) -> Tensor:
        return self.bijector(x)

    def right_inverse(self, y: Tensor) -> Tensor:
        return self.bijector.inv(y)


class _RawLinear(nn.Module):
    """GPyTorch style: the module stores ``raw_weight`` and transforms it in its own forward."""

    def __init__(self, layer: nn.Linear, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high
        with torch.no_grad():
            unit = (layer.weight - low) / (high - low)
            self.raw_weight = nn.Parameter(torch.logit(unit))
        self.bias = layer.bias

    def forward(self, x: Tensor) -> Tensor:
        weight = self.low + (self.high - self.low) * torch.sigmoid(self.raw_weight)
        return F.linear(x, weight, self.bias)


class Step:
    """One training-step variant: a model, its Adam optimizer, and what wraps the step."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str | None = None,
        compile_backend: str | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
    ) -> None:
        self.model = model
        self.mode = mode
        self.after_step = after_step
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.forward = torch.compile(model, backend=compile_backend) if compile_backend else model

    def __call__(self, x: Tensor, y: Tensor) -> None:
        with fusion_mode(self.mode):
            self.optimizer.zero_grad(set_to_none=True)
            F.mse_loss(self.forward(x), y).backward()
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step(self.model)


def _clamp_weights(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.clamp_(-1.0, 1.0)


def _bound_passes() -> Callable[[nn.Module], None]:
    """The MLP's bound: after each step, one ``sigmoid`` of every weight and one product with its
    gradient, into kept tensors (no allocation), as a folded reparametrization would do at best."""
    kept: dict[int, Tensor] = {}

    def passes(model: nn.Module) -> None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    weight = module.weight
                    out = kept.setdefault(id(module), torch.empty_like(weight))
                    torch.sigmoid(weight, out=out).mul_(weight.grad)

    return passes


def _box_all_weights(model: nn.Module, **options: Any) -> nn.Module:
    return ps.constrain(model, "*.weight", ps.Box(-1.0, 1.0), **options)


def mlp_variants(width: int, backend: str) -> dict[str, Step]:
    torch.manual_seed(0)
    base = mlp(width).to(DEVICE[0])

    def fresh() -> nn.Sequential:
        return copy.deepcopy(base)

    bijected = fresh()
    for layer in bijected[::2]:
        parametrize.register_parametrization(layer, "weight", _Bijector(constraints.interval(-1.0, 1.0)))
    raw = fresh()
    for index in (0, 2, 4):
        raw[index] = _RawLinear(raw[index], -1.0, 1.0)
    return {
        "unconstrained": Step(fresh()),
        "paramshape eager": Step(_box_all_weights(fresh()), mode="off"),
        "paramshape fused": Step(_box_all_weights(fresh()), mode="on"),
        "paramshape + torch.compile(model)": Step(_box_all_weights(fresh()), compile_backend=backend),
        "paramshape fold=True": Step(_box_all_weights(fresh(), fold=True)),
        'paramshape method="project"': Step(_box_all_weights(fresh(), method="project")),
        "peer: clamp_ after step (by hand)": Step(fresh(), after_step=_clamp_weights),
        "peer: torch biject_to parametrization": Step(bijected),
        "peer: GPyTorch-style raw parameter": Step(raw),
        MLP_BOUND: Step(fresh(), after_step=_bound_passes()),
    }


#: The bounds' rows (see _SigmoidRecomputed and _bound_passes): what any exact sigmoid map costs.
TRANSFORM_BOUND = "bound: sigmoid forward, recomputed x gradient backward"
MLP_BOUND = "bound: unconstrained + sigmoid and product per weight, once per step"

REPARAM_MODES = (
    "paramshape eager",
    "paramshape fused",
    "paramshape + torch.compile(model)",
    "paramshape fold=True",
)
PEERS_OF_REPARAM = ("peer: torch biject_to parametrization", "peer: GPyTorch-style raw parameter")


def training_step(
    width: int, batches: list[int], rounds: int, steps: int, backend: str
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        variants = mlp_variants(width, backend)
        x, y = torch.randn(batch, width, device=DEVICE[0]), torch.randn(batch, width, device=DEVICE[0])
        for step in variants.values():  # warm-up: compiles, allocator, Adam state
            for _ in range(3):
                step(x, y)
        steps_on_xy = {name: functools.partial(step, x, y) for name, step in variants.items()}
        rows += interleaved_rows(steps_on_xy, rounds, steps, "unconstrained", batch=batch)
    return rows


# ------------------------------------------------------------------------------------ 2b. small model
#: The small model of issue 12: 4 x Linear (2-64-64-64-1), every weight and bias in Box(-0.01, 0.01)
#: (a WGAN critic's clipping range), Adam, batch 64. A constraint's fixed cost per tensor dominates.
SMALL_BOX = (-0.01, 0.01)


def small_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2, 64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.Tanh(),
        nn.Linear(64, 1),
    )


class _SigmoidBox(nn.Module):
    """The four lines paramshape replaces: ``low + (high - low) sigmoid(x)`` as a parametrization."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.width = low, high - low

    def forward(self, x: Tensor) -> Tensor:
        return self.low + self.width * torch.sigmoid(x)

    def right_inverse(self, y: Tensor) -> Tensor:
        return torch.logit((y - self.low) / self.width)


class _RawSmall(nn.Module):
    """GPyTorch style for every weight and bias: raw parameters, mapped in ``forward``."""

    def __init__(self, model: nn.Sequential, low: float, high: float) -> None:
        super().__init__()
        self.low, self.width = low, high - low
        self.acts = [model[i] for i in range(1, len(model), 2)]
        self.raw = nn.ParameterList()
        for layer in model[::2]:
            for tensor in (layer.weight, layer.bias):
                with torch.no_grad():
                    self.raw.append(nn.Parameter(torch.logit((tensor - low) / self.width)))

    def forward(self, x: Tensor) -> Tensor:
        values = [self.low + self.width * torch.sigmoid(raw) for raw in self.raw]
        for index in range(0, len(values), 2):
            x = F.linear(x, values[index], values[index + 1])
            if index // 2 < len(self.acts):
                x = self.acts[index // 2](x)
        return x


def _clamp_all(low: float, high: float) -> Callable[[nn.Module], None]:
    def clamp(model: nn.Module) -> None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.clamp_(low, high)

    return clamp


class _SaturationCheckOff:
    """A step with the saturation check (``ps.set_saturation_warning``) switched off around it: the
    check's cost is the difference to the same step with it on (it runs on the optimizer's 10th
    step and every 100th)."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def __call__(self, x: Tensor, y: Tensor) -> None:
        previous = ps.set_saturation_warning(False)
        try:
            self.step(x, y)
        finally:
            ps.set_saturation_warning(previous)


def small_variants() -> dict[str, Callable[[Tensor, Tensor], None]]:
    torch.manual_seed(0)
    low, high = SMALL_BOX
    base = small_model().to(DEVICE[0])
    with torch.no_grad():
        for parameter in base.parameters():  # inside the box, so every variant starts alike
            parameter.mul_(0.9 * high / parameter.abs().max())

    def fresh() -> nn.Sequential:
        return copy.deepcopy(base)

    plain = fresh()
    for layer in plain[::2]:
        for name in ("weight", "bias"):
            parametrize.register_parametrization(layer, name, _SigmoidBox(low, high))
    return {
        "unconstrained": Step(fresh()),
        "peer: clamp_ after step (by hand)": Step(fresh(), after_step=_clamp_all(low, high)),
        'paramshape method="project"': Step(ps.constrain(fresh(), "*", ps.Box(low, high), method="project")),
        "paramshape reparam (default)": Step(ps.constrain(fresh(), "*", ps.Box(low, high))),
        "paramshape reparam, saturation check off": _SaturationCheckOff(
            Step(ps.constrain(fresh(), "*", ps.Box(low, high)))
        ),
        "paramshape reparam, fold=True": Step(ps.constrain(fresh(), "*", ps.Box(low, high), fold=True)),
        "peer: plain register_parametrization, low + w sigmoid(x)": Step(plain),
        "peer: GPyTorch-style raw parameter": Step(_RawSmall(fresh(), low, high)),
    }


SMALL_REPARAM_MODES = ("paramshape reparam (default)", "paramshape reparam, fold=True")
SMALL_REPARAM_PEERS = (
    "peer: plain register_parametrization, low + w sigmoid(x)",
    "peer: GPyTorch-style raw parameter",
)


def small_step(batch: int, rounds: int, steps: int) -> list[dict[str, Any]]:
    variants = small_variants()
    x, y = torch.randn(batch, 2, device=DEVICE[0]), torch.randn(batch, 1, device=DEVICE[0])
    for step in variants.values():
        for _ in range(5):
            step(x, y)
    steps_on_xy = {name: functools.partial(step, x, y) for name, step in variants.items()}
    return interleaved_rows(steps_on_xy, rounds, steps, "unconstrained", batch=batch)


# ------------------------------------------------------------------------------------ 2b. size sweep
def _sweep_variants(size: int) -> dict[str, Callable[[], None]]:
    low, high = SMALL_BOX
    holder = nn.Module()
    holder.weight = nn.Parameter(torch.zeros(size, device=DEVICE[0]))
    ps.constrain(holder, "weight", ps.Box(low, high))
    raw = torch.zeros(size, device=DEVICE[0], requires_grad=True)
    bare = torch.zeros(size, device=DEVICE[0], requires_grad=True)
    box = ps.Box(low, high).to(DEVICE[0])
    grad = torch.randn(size, device=DEVICE[0])

    def floor() -> None:
        bare.grad = None
        (bare * 1.0).backward(grad)

    def through_parametrize() -> None:
        holder.zero_grad(set_to_none=True)
        holder.weight.backward(grad)

    def direct() -> None:
        raw.grad = None
        box(raw).backward(grad)

    def peer() -> None:
        raw.grad = None
        (low + (high - low) * torch.sigmoid(raw)).backward(grad)

    return {
        "floor (x * 1.0)": floor,
        "paramshape, layer.weight": through_parametrize,
        "paramshape, Box(x)": direct,
        "peer: low + w sigmoid(x)": peer,
    }


def size_sweep(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """One constrained tensor read and differentiated with a fixed gradient, by size: where a
    constraint's fixed cost ends and its per-element cost begins. Variants: the bare tensor (floor:
    ``x * 1.0`` and its gradient), paramshape's Box through parametrize (``layer.weight``), the same
    transform called directly, and the peer's one-sided map ``low + w sigmoid(x)``."""
    rows = []
    for size in sizes:
        variants = _sweep_variants(size)
        for fn in variants.values():
            fn()
        reps = max(3, min(400, int(4e6 // max(size, 1))))
        rows += interleaved_rows(variants, rounds, reps, "floor (x * 1.0)", size=size)
    return rows


# ------------------------------------------------------------------------------------ 3. geotorch
def _moved_into(layer: nn.Linear, transform: ps.Transform) -> None:
    """Constrain the weight, moving the default initialization into the set (intended: no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        ps.constrain(layer, "weight", transform, init="project")


def geotorch_comparison(width: int, batch: int, rounds: int, steps: int) -> tuple[list[dict[str, Any]], str]:
    try:
        import geotorch  # ty: ignore[unresolved-import]
    except ImportError:
        return [], 'geotorch is not installed (pip install -e ".[bench]"): its rows are skipped.'
    torch.manual_seed(0)
    base = mlp(width).to(DEVICE[0])
    pairs: dict[str, tuple[Callable[[nn.Module], None], Callable[[nn.Module], None]]] = {
        "sphere (unit rows)": (
            lambda layer: _moved_into(layer, ps.UnitNorm(dim=-1)),
            lambda layer: geotorch.sphere(layer, "weight"),
        ),
        "orthogonal": (
            lambda layer: _moved_into(layer, ps.Orthogonal()),
            lambda layer: geotorch.orthogonal(layer, "weight"),
        ),
        "positive definite": (
            lambda layer: _moved_into(layer, ps.PositiveDefinite()),
            lambda layer: geotorch.positive_definite(layer, "weight"),
        ),
    }
    rows = []
    x, y = torch.randn(batch, width, device=DEVICE[0]), torch.randn(batch, width, device=DEVICE[0])
    for constraint, (ours, theirs) in pairs.items():
        variants = {"unconstrained": Step(copy.deepcopy(base))}
        for label, attach in (("paramshape", ours), ("geotorch", theirs)):
            model = copy.deepcopy(base)
            for layer in model[::2]:
                attach(layer)
            variants[label] = Step(model)
        for step in variants.values():
            step(x, y)
        steps_on_xy = {name: functools.partial(step, x, y) for name, step in variants.items()}
        rows += interleaved_rows(steps_on_xy, rounds, steps, "unconstrained", constraint=constraint)
    return rows, ""


# ------------------------------------------------------------------------------------ 4. registration, unconstrain
def registration(tensors: int, repeats: int) -> dict[str, Any]:
    """``constrain()`` of every weight and bias of ``tensors / 2`` small Linear layers, in one call."""
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    times = []
    for _ in range(repeats):
        model = nn.Sequential(*(nn.Linear(8, 8) for _ in range(tensors // 2))).to(DEVICE[0])
        gc.collect()
        _sync()
        start = time.perf_counter()
        ps.constrain(model, "*", ps.Box(-1.0, 1.0))
        _sync()
        times.append((time.perf_counter() - start) * 1e3)
        assert len(ps.constraints(model)) == 2 * (tensors // 2)
    return {
        "tensors": 2 * (tensors // 2),
        "ms": statistics.median(times),
        "compiled_graphs": counters["stats"]["unique_graphs"] - graphs_before,
    }


def registration_vs_baseline(tensors: int, rounds: int) -> dict[str, Any]:
    """``constrain()`` of ``tensors`` small tensors in one call against the bare minimum it builds on,
    a ``register_parametrization`` loop with a plain sigmoid map, timed in alternating rounds so a
    loaded machine slows both alike: the ratio, not the milliseconds, is what to compare."""

    def fresh() -> nn.Sequential:
        return nn.Sequential(*(nn.Linear(8, 8) for _ in range(tensors // 2))).to(DEVICE[0])

    def with_paramshape() -> float:
        model = fresh()
        gc.collect()
        start = time.perf_counter()
        ps.constrain(model, "*", ps.Box(-1.0, 1.0))
        return (time.perf_counter() - start) * 1e3

    def register_bare(model: nn.Sequential) -> None:
        for layer in model:
            for name in ("weight", "bias"):
                parametrize.register_parametrization(layer, name, _SigmoidBox(-1.0, 1.0), unsafe=True)

    def bare() -> float:
        model = fresh()
        gc.collect()
        start = time.perf_counter()
        register_bare(model)
        return (time.perf_counter() - start) * 1e3

    times: dict[str, list[float]] = {"paramshape": [], "bare": []}
    for index in range(rounds):
        order = [("paramshape", with_paramshape), ("bare", bare)]
        for name, fn in order if index % 2 == 0 else order[::-1]:
            times[name].append(fn())
    ratios = [a / b for a, b in zip(times["paramshape"], times["bare"], strict=True)]
    return {
        "tensors": 2 * (tensors // 2),
        "ms": statistics.median(times["paramshape"]),
        "bare_ms": statistics.median(times["bare"]),
        "ratio": statistics.median(ratios),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # Machine- and load-independent: the Python calls of one run of each, counted by cProfile.
        "calls": _python_calls(lambda model: ps.constrain(model, "*", ps.Box(-1.0, 1.0)), fresh()),
        "bare_calls": _python_calls(register_bare, fresh()),
    }


def _python_calls(run: Callable[[nn.Sequential], object], model: nn.Sequential) -> int:
    """How many function calls (Python's and C's, as cProfile counts them) ``run(model)`` makes."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    run(model)
    profile.disable()
    return int(pstats.Stats(profile).total_calls)


def registration_table(counts: list[int], big: int, repeats: int) -> list[dict[str, Any]]:
    """``constrain()`` time by number of tensors, and for one tensor of ``big`` values (0: skipped),
    with the peak of memory allocated beyond the tensor itself on CUDA (CPU: not measured)."""
    rows = [
        {"what": f"{n} tensors (Linear(8, 8) weights and biases)", **registration(n, repeats)} for n in counts
    ]
    if big:
        holder = nn.Module()
        holder.weight = nn.Parameter(torch.rand(big, device=DEVICE[0]) * 1.8 - 0.9)
        extra = None
        if DEVICE[0].type == "cuda":
            torch.cuda.reset_peak_memory_stats(DEVICE[0])
            before = torch.cuda.memory_allocated(DEVICE[0])
        _sync()
        start = time.perf_counter()
        ps.constrain(holder, "weight", ps.Box(-1.0, 1.0))
        _sync()
        ms = (time.perf_counter() - start) * 1e3
        if DEVICE[0].type == "cuda":
            extra = (torch.cuda.max_memory_allocated(DEVICE[0]) - before) / (4 * big)
        rows.append({"what": f"1 tensor of {big:,} values", "tensors": 1, "ms": ms, "extra_copies": extra})
        del holder
        gc.collect()
    return rows


def orthogonal_at_scale(rows: int, cols: int, steps: int) -> dict[str, Any]:
    """``Orthogonal()`` (``"auto"``: the thin map) on one ``rows x cols`` weight: ``constrain()`` with
    ``init="project"`` and an Adam step (batch 32), and on CUDA the peak memory beyond the weight, in
    weight sizes. The square maps would build a ``rows x rows`` matrix (7.2 GB at 30000 x 50)."""
    layer = nn.Linear(cols, rows, bias=False).to(DEVICE[0])
    if DEVICE[0].type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE[0])
        before = torch.cuda.memory_allocated(DEVICE[0])
    _sync()
    start = time.perf_counter()
    _moved_into(layer, ps.Orthogonal())
    _sync()
    register_s = time.perf_counter() - start
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    x = torch.randn(32, cols, device=DEVICE[0])
    times = []
    for _ in range(steps + 1):
        _sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
        optimizer.step()
        _sync()
        times.append(time.perf_counter() - start)
    extra = None
    if DEVICE[0].type == "cuda":
        extra = (torch.cuda.max_memory_allocated(DEVICE[0]) - before) / (4 * rows * cols)
    return {
        "shape": [rows, cols],
        "register_s": register_s,
        "step_s": statistics.median(times[1:]),
        "peak_extra_weight_sizes": extra,
    }


def inference_after_unconstrain(
    width: int, batch: int, rounds: int, reps: int
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    plain = mlp(width).to(DEVICE[0]).eval()
    constrained = _box_all_weights(copy.deepcopy(plain))
    ps.unconstrain(constrained)
    x = torch.randn(batch, width, device=DEVICE[0])

    def infer(model: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    return interleaved(
        {"never constrained": infer(plain), "after ps.unconstrain": infer(constrained)},
        rounds,
        reps,
        baseline="never constrained",
    )


# ------------------------------------------------------------------------------------ 5. threshold
#: One transform per kernel, for the threshold section.
THRESHOLD_FAMILIES = {
    "box": lambda: ps.Box(-1.0, 1.0),
    "positive": lambda: ps.Positive(),
    "soft_clip": lambda: ps.SoftClip(-1.0, 1.0),
    "simplex": lambda: ps.Simplex(),
}


def auto_threshold(families: list[str], sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Forward+backward, eager against fused, by size: where fusing starts to pay, per kernel.
    Tensors are (size / 64, 64), so the simplex has rows of 64."""
    rows = []
    for family in families:
        transform = THRESHOLD_FAMILIES[family]().to(DEVICE[0])
        for size in sizes:
            x = torch.randn(max(1, size // 64), 64, device=DEVICE[0], requires_grad=True)
            grad = torch.randn(x.shape, device=DEVICE[0])
            variants = {
                "eager": _forward_backward(transform, "off", x, grad),
                "fused": _forward_backward(transform, "on", x, grad),
            }
            for fn in variants.values():
                fn()
            reps = max(2, min(200, int(4e6 // size)))
            timed = interleaved(variants, rounds, reps, baseline="eager")
            rows.append({"family": family, "size": x.numel(), "eager_ms": timed["eager"]["ms"],
                         "fused_ms": timed["fused"]["ms"], "fused_over_eager": timed["fused"]["ratio"]})  # fmt: skip
    return rows


def crossover(rows: list[dict[str, Any]], margin: float = 0.95) -> dict[str, int | None]:
    """Per kernel, the smallest size from which on fused takes at most ``margin`` of eager's time at
    every larger size measured (None: at no size)."""
    found: dict[str, int | None] = {}
    for family in dict.fromkeys(row["family"] for row in rows):
        best = None
        for row in reversed([r for r in rows if r["family"] == family]):
            if row["fused_over_eager"] > margin:
                break
            best = row["size"]
        found[family] = best
    return found


# ------------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(DEVICE[0]) if DEVICE[0].type == "cuda" else None
    return {
        "cpu": cpu,
        "device": str(DEVICE[0]),
        "gpu": gpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


table = markdown_table


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def report(results: dict[str, Any]) -> str:
    out = [f"machine: {results['machine']}"]
    if "transform" in results:
        out.append(
            "\n## 1. Box(-1, 1) alone, float32 (ratio to the floor: clone, and clone + its backward)\n"
        )
        out.append(
            table(
                ["size", "pass", "variant", "ms", "vs floor"],
                [
                    [f"{r['size']:,}", r["kind"], r["variant"], f"{r['ms']:.3f}", _ratio(r["ratio"])]
                    for r in results["transform"]
                ],
            )
        )
    if "small" in results:
        low, high = SMALL_BOX
        out.append(
            f"\n## 2a. Small model: 4 x Linear (2-64-64-64-1), 8 tensors in Box({low}, {high}), "
            f"batch {results['small'][0]['batch']}, Adam\n"
        )
        out.append(
            table(
                ["variant", "ms/step", "vs unconstrained"],
                [[r["variant"], f"{r['ms']:.3f}", _ratio(r["ratio"])] for r in results["small"]],
            )
        )
    if "mlp" in results:
        out.append("\n## 2. Training step, 3 x Linear(512, 512) + Adam, all weights in [-1, 1]\n")
        out.append(
            table(
                ["batch", "variant", "ms/step", "vs unconstrained"],
                [
                    [str(r["batch"]), r["variant"], f"{r['ms']:.3f}", _ratio(r["ratio"])]
                    for r in results["mlp"]
                ],
            )
        )
    if "geotorch" in results:
        out.append(f"\n## 3. geotorch, same MLP, batch {results['geotorch_batch']}\n")
        if results["geotorch"]:
            out.append(
                table(
                    ["constraint", "variant", "ms/step", "vs unconstrained"],
                    [
                        [r["constraint"], r["variant"], f"{r['ms']:.3f}", _ratio(r["ratio"])]
                        for r in results["geotorch"]
                    ],
                )
            )
        else:
            out.append(results["geotorch_note"])
    if "orthogonal" in results:
        big = results["orthogonal"]
        memory = big["peak_extra_weight_sizes"]
        out.append(
            f"\n## 3b. Orthogonal() on one {big['shape'][0]} x {big['shape'][1]} weight\n\n"
            f"constrain(init='project'): {big['register_s']:.2f} s; Adam step (batch 32): "
            f"{big['step_s'] * 1e3:.0f} ms"
            + ("" if memory is None else f"; peak memory beyond the weight: {memory:.1f} weight sizes")
        )
    if "registration" in results:
        reg = results["registration"]
        inference = results["inference"]["after ps.unconstrain"]
        out.append(
            f"\n## 4. Registration and unconstrain\n\nconstrain() of {reg['tensors']} tensors in one call: "
            f"{reg['ms']:.1f} ms (graphs compiled meanwhile: {reg['compiled_graphs']})\n"
            f"inference after ps.unconstrain: {_ratio(inference['ratio'])} of the never-constrained model"
        )
        bare = results.get("registration_vs_bare")
        if bare is not None:
            out.append(
                f"against a bare register_parametrization loop (sigmoid map, no checks), alternating "
                f"rounds: {bare['ms']:.1f} ms vs {bare['bare_ms']:.1f} ms, {_ratio(bare['ratio'])} "
                f"(load average {bare['load_average']}); Python calls: {bare.get('calls')} vs "
                f"{bare.get('bare_calls')}"
            )
    if "registration_table" in results:
        out.append("\n## 4b. constrain() by size (one call, Box(-1, 1) on every tensor)\n")
        out.append(
            table(
                ["what", "ms", "graphs compiled", "extra memory (tensor sizes)"],
                [
                    [
                        r["what"],
                        f"{r['ms']:.1f}",
                        str(r.get("compiled_graphs", "")),
                        "" if r.get("extra_copies") is None else f"{r['extra_copies']:.2f}",
                    ]
                    for r in results["registration_table"]
                ],
            )
        )
    if "sweep" in results:
        out.append("\n## 2b. One constrained tensor, read + backward, by size (ratio to x * 1.0)\n")
        out.append(
            table(
                ["elements", "variant", "ms", "vs floor"],
                [
                    [f"{r['size']:,}", r["variant"], f"{r['ms']:.4f}", _ratio(r["ratio"])]
                    for r in results["sweep"]
                ],
            )
        )
    if "threshold" in results:
        out.append("\n## 5. Where fusing pays: forward+backward, eager vs fused, by kernel\n")
        out.append(
            table(
                ["kernel", "elements", "eager ms", "fused ms", "fused / eager"],
                [
                    [r["family"], f"{r['size']:,}", f"{r['eager_ms']:.3f}", f"{r['fused_ms']:.3f}",
                     _ratio(r["fused_over_eager"])]
                    for r in results["threshold"]
                ],
            )
        )  # fmt: skip
        for family, size in results["crossover"].items():
            where = f"from {size:,} elements on" if size else "at no measured size"
            out.append(f"{family}: fused takes <= 0.95x of eager's time {where}")
        out.append(f"(paramshape.fusion.AUTO_MIN_ELEMENTS = {AUTO_MIN_ELEMENTS:,})")
    out.append("\n## Targets\n")
    out.append(
        table(
            ["target", "measured", "met"],
            [[t["target"], t["measured"], "yes" if t["met"] else "no"] for t in results["targets"]],
        )
    )
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    if "transform" in results:
        largest = max(r["size"] for r in results["transform"])
        (fused,) = [
            r["ratio"]
            for r in results["transform"]
            if r["size"] == largest
            and r["kind"] == "forward+backward"
            and r["variant"].endswith("(compiled)")
        ]
        bound = [
            r["ratio"]
            for r in results["transform"]
            if r["size"] == largest and r["kind"] == "forward+backward" and r["variant"] == TRANSFORM_BOUND
        ]
        limit = TARGETS["fused_box_vs_floor_16M"]
        checks.append(
            {
                "target": f"fused Box forward+backward at {largest:,} within {limit}x of the floor",
                "measured": _ratio(fused) + "".join(f" (bound {_ratio(b)})" for b in bound),
                "met": fused <= limit,
            }
        )
    if "small" in results:
        ratios = {r["variant"]: r["ratio"] for r in results["small"]}
        # The best reparametrising mode: the default or the opt-in step-folded one.
        best = min(SMALL_REPARAM_MODES, key=lambda name: ratios.get(name, math.inf))
        reparam = ratios[best]
        fastest_peer = min(SMALL_REPARAM_PEERS, key=ratios.__getitem__)
        checks.append(
            {
                "target": f"small model: reparam <= {TARGETS['small_reparam']}x the unconstrained step",
                "measured": f"{_ratio(reparam)} ({best})",
                "met": reparam <= TARGETS["small_reparam"],
            }
        )
        checks.append(
            {
                "target": "small model: reparam no slower than the fastest reparametrizing peer",
                "measured": f"{_ratio(reparam)} vs {_ratio(ratios[fastest_peer])} ({fastest_peer})",
                "met": reparam <= ratios[fastest_peer],
            }
        )
        project, clamp = ratios['paramshape method="project"'], ratios["peer: clamp_ after step (by hand)"]
        checks.append(
            {
                "target": f'small model: method="project" within {TARGETS["project_vs_clamp"]} of the hand clamp',
                "measured": f"{_ratio(project)} vs {_ratio(clamp)}",
                "met": project - clamp <= TARGETS["project_vs_clamp"],
            }
        )
    by_batch: dict[int, dict[str, float]] = {}
    for r in results.get("mlp", []):
        by_batch.setdefault(r["batch"], {})[r["variant"]] = r["ratio"]
    for batch, ratios in sorted(by_batch.items()):
        limit = TARGETS["mlp_best_b256"] if batch >= 256 else TARGETS["mlp_best_b32"]
        # The target is for the best reparametrised mode; projection is shown beside it.
        best_reparam = min(REPARAM_MODES, key=ratios.__getitem__)
        fastest_peer = min(PEERS_OF_REPARAM, key=ratios.__getitem__)
        project = ratios.get('paramshape method="project"')
        checks.append(
            {
                "target": f"MLP step, batch {batch}, best reparametrised mode <= {limit}x",
                "measured": f"{_ratio(ratios[best_reparam])} ({best_reparam})"
                + ("" if project is None else f'; method="project" {_ratio(project)}')
                + ("" if MLP_BOUND not in ratios else f"; bound {_ratio(ratios[MLP_BOUND])}"),
                "met": ratios[best_reparam] <= limit,
            }
        )
        checks.append(
            {
                "target": f"MLP step, batch {batch}: reparametrization faster than every reparametrizing peer",
                "measured": f"{_ratio(ratios[best_reparam])} ({best_reparam}) vs fastest peer "
                f"{_ratio(ratios[fastest_peer])} ({fastest_peer})",
                "met": ratios[best_reparam] < ratios[fastest_peer],
            }
        )
    geo: dict[str, dict[str, float]] = {}
    for r in results.get("geotorch", []):
        geo.setdefault(r["constraint"], {})[r["variant"]] = r["ratio"]
    for constraint, ratios in geo.items():
        checks.append(
            {
                "target": f"{constraint}: faster than geotorch",
                "measured": f"{_ratio(ratios['paramshape'])} vs {_ratio(ratios['geotorch'])}",
                "met": ratios["paramshape"] < ratios["geotorch"],
            }
        )
    if "registration" in results:
        reg = results["registration"]
        limit = TARGETS["constrain_200_ms"]
        checks.append(
            {
                "target": f"constrain() of {reg['tensors']} tensors < {limit:.0f} ms, no compilation",
                "measured": f"{reg['ms']:.1f} ms, {reg['compiled_graphs']} graphs",
                "met": reg["ms"] < limit and reg["compiled_graphs"] == 0,
            }
        )
        inference = results["inference"]["after ps.unconstrain"]["ratio"]
        checks.append(
            {
                "target": "inference after ps.unconstrain 1.00x of the unconstrained model",
                "measured": _ratio(inference),
                "met": round(inference, 2) <= 1.01,
            }
        )
    return checks


def plot(results: dict[str, Any], path: Path) -> bool:
    """Bar charts of the ratios; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (alone, steps) = plt.subplots(1, 2, figsize=(14, 5))
    labels, values = [], []
    for r in results.get("transform", []):
        if r["kind"] == "forward+backward":
            labels.append(f"{r['variant']}\n{r['size']:,}")
            values.append(r["ratio"])
    alone.barh(labels, values)
    alone.set_xscale("log")
    alone.axvline(1.0, color="black", linewidth=0.8)
    alone.set_xlabel("forward+backward time / floor (clone + backward), log scale")
    alone.set_title("Box(-1, 1) alone, float32")
    labels, values = [], []
    for r in results.get("mlp", []):
        labels.append(f"{r['variant']} (b{r['batch']})")
        values.append(r["ratio"])
    steps.barh(labels, values)
    steps.axvline(1.0, color="black", linewidth=0.8)
    steps.set_xlabel("step time / unconstrained step")
    steps.set_title("3 x Linear(512, 512) + Adam")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24], help="transform sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--width", type=int, default=512, help="the MLP's width")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per table")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and round")
    parser.add_argument("--geotorch-batch", type=int, default=256)
    parser.add_argument("--tensors", type=int, default=200, help="tensors to constrain in section 4")
    parser.add_argument("--registration-counts", type=int, nargs="+", default=[20, 200, 1000])
    parser.add_argument(
        "--big-tensor", type=int, default=0, help="also constrain one tensor of this many values (0: no)"
    )
    parser.add_argument("--small-batch", type=int, default=64, help="batch of the small model")
    parser.add_argument(
        "--orthogonal-shape", type=int, nargs=2, default=[30000, 50], help="the long weight of section 3b"
    )
    parser.add_argument(
        "--sweep-sizes", type=int, nargs="+", default=[64, 1024, 16384, 262144, 1 << 22], help="section 2c"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (models and tensors are created there)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and smaller sizes: about a minute, for a smoke run"
    )
    parser.add_argument(
        "--threshold-sizes",
        type=int,
        nargs="+",
        default=[1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 19, 1 << 20, 1 << 22],
    )
    parser.add_argument(
        "--families", nargs="+", default=list(THRESHOLD_FAMILIES), help="kernels in section 5"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--backend", default="inductor", help="compiler backend (tests use aot_eager to skip C++ builds)"
    )
    parser.add_argument("--json", type=Path, default=HERE / "results" / "run.json")
    parser.add_argument("--plot", type=Path, default=HERE / "results" / "run.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = min(args.rounds, 5), min(args.steps, 5)
        args.sizes = [min(size, 1 << 20) for size in args.sizes]
        args.sweep_sizes = [size for size in args.sweep_sizes if size <= 1 << 18]
        args.registration_counts = [n for n in args.registration_counts if n <= 200]
        args.threshold_sizes = [size for size in args.threshold_sizes if size <= 1 << 20]

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    previous_backend, previous_device = _backend[0], DEVICE[0]
    _backend[0] = args.backend
    DEVICE[0] = torch.device(args.device)
    started = time.perf_counter()
    try:
        results: dict[str, Any] = {"machine": machine(), "arguments": vars(args) | {"json": str(args.json)}}
        results["arguments"]["plot"] = str(args.plot)
        sections = set(args.sections)
        if "transform" in sections:
            results["transform"] = transform_alone(args.sizes, args.rounds)
        if "small" in sections:
            results["small"] = small_step(args.small_batch, args.rounds, args.steps * 5)
        if "mlp" in sections:
            results["mlp"] = training_step(args.width, args.batches, args.rounds, args.steps, args.backend)
        if "geotorch" in sections:
            results["geotorch_batch"] = args.geotorch_batch
            results["geotorch"], results["geotorch_note"] = geotorch_comparison(
                args.width, args.geotorch_batch, max(3, args.rounds // 3), max(1, args.steps // 3)
            )
        if "orthogonal" in sections:
            results["orthogonal"] = orthogonal_at_scale(*args.orthogonal_shape, steps=3)
        if "registration" in sections:
            results["registration"] = registration(args.tensors, repeats=5)
            results["registration_vs_bare"] = registration_vs_baseline(
                args.tensors, rounds=max(5, args.rounds)
            )
            results["registration_table"] = registration_table(args.registration_counts, args.big_tensor, 3)
            results["inference"] = inference_after_unconstrain(
                args.width, max(args.batches), args.rounds, args.steps
            )
        if "sweep" in sections:
            results["sweep"] = size_sweep(args.sweep_sizes, max(3, args.rounds // 2))
        if "threshold" in sections:
            rounds = max(3, args.rounds // 2)
            results["threshold"] = auto_threshold(args.families, args.threshold_sizes, rounds)
            results["crossover"] = crossover(results["threshold"])
        results["targets"] = targets(results)
    finally:
        _backend[0], DEVICE[0] = previous_backend, previous_device
    results["seconds"] = time.perf_counter() - started
    print(report(results))
    print(f"\n({results['seconds']:.0f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"results written to {args.json}")
    if not args.no_plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        if plot(results, args.plot):
            print(f"plot written to {args.plot}")
        else:
            print('matplotlib is not installed: no plot (pip install -e ".[bench]")')
    return results


if __name__ == "__main__":
    main()
