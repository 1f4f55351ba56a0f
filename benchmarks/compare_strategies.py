"""Compare the ways of keeping a network's weights and outputs bounded, on one small task.

Every strategy trains the same student network (same initial weights, same batches, same optimizer)
on the same regression task, and all of them step in turn inside one loop, so their timings share
the machine's state. Two requirements are compared:

* the hidden weights must lie in ``[-B, B]``: ``ps.constrain(..., method="reparam" | "project" |
  "penalty")``, and ``ps.clip_grad`` (which bounds steps, not values);
* the outputs must lie in ``[-1, 1]``: a smooth ``Box`` layer, ``SoftClip``, ``HardClamp`` and the
  straight-through ``HardClamp``.

The baseline has neither. A second table compares the output layers for two other sets on their
own tasks: positive outputs (``ReLU``, ``BoundedReLU``, ``Positive`` with softplus or exp, a
straight-through clamp at 0) and probabilities (softmax, ``Simplex``, ``TemperatureSoftmax`` with and
without bounds on its learned temperature).

In the first table each row reports, after every optimizer step, whether the weights and the
outputs of the batch were inside their sets; the final test error; which fraction of the bounded
quantities (weights or outputs) sits at a bound, and which fraction has a dead gradient (the slope of
the value with respect to what the optimizer or the previous layer controls is below 1e-3 of its
value in the middle of the set); and the median time of a training step relative to the baseline.

Run from the repository root (about a minute on 2 CPU cores)::

    python benchmarks/compare_strategies.py             # table; a plot too if matplotlib is there
    python benchmarks/compare_strategies.py --steps 200 --json results.json --plot strategies.png

``pip install -e ".[bench]"`` installs matplotlib for the plot. ``method="riemannian"`` and
``method="lagrangian"`` are compared with their peers (geoopt, a cooper-style loop) on problems of
their own in ``benchmarks/compare_problems.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
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

WEIGHT_BOUND = 0.25  # B: the box of every hidden weight, [-B, B]
OUTPUT_BOUND = 1.0  # the outputs' box, [-1, 1]
DEAD_SLOPE = 1e-3  # a slope below this fraction of the slope in the middle of the set counts as dead
AT_BOUND = 1e-3  # within this fraction of the box's width of a bound counts as "at the bound"


@dataclass
class Config:
    steps: int = 1000
    batch: int = 128
    inputs: int = 16
    hidden: int = 64
    lr: float = 3e-3
    test_size: int = 2048
    seed: int = 0
    penalty_weight: float = 1.0
    clip_norm: float = 0.05
    threads: int = 1  # one thread: the model is small, and timings are steadier on a shared machine


@dataclass
class Strategy:
    """One row: a student, its optimizer, what it bounds, and what happened at each step."""

    name: str
    bounds: str  # "weights", "outputs" or "-"
    model: nn.Module
    output: nn.Module
    extra_loss: Callable[[nn.Module], Tensor] | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = field(default=lambda p, y: (p - y).square().mean())
    inside_fn: Callable[[Tensor], Tensor] = field(default=lambda p: p.abs() <= OUTPUT_BOUND)
    optimizer: torch.optim.Optimizer = field(init=False)
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    violations: list[float] = field(default_factory=list)
    weights_inside: int = 0
    outputs_inside: int = 0

    def forward(self, x: Tensor) -> Tensor:
        return _squeeze(self.output(self.model(x)))


def _squeeze(out: Tensor) -> Tensor:
    return out.squeeze(-1) if out.shape[-1] == 1 else out


def make_student(config: Config, outputs: int = 1) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(config.inputs, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, outputs),
    )
    with torch.no_grad():  # start well inside the weight box, the same start for every strategy
        for layer in net[::2]:
            layer.weight.mul_(0.5)
    return net


def make_task(config: Config) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """A teacher whose weights reach 1.5 times the box (a third of them lie outside it), with its
    outputs standardised and clipped to [-1, 1]: a student with boxed weights cannot match it exactly,
    and about a third of the targets sit on an output bound."""
    teacher = standardised_teacher(config)

    def target(x: Tensor) -> Tensor:
        return torch.clamp(teacher(x), -OUTPUT_BOUND, OUTPUT_BOUND)

    return teacher, target


class Teacher(nn.Module):
    """A fixed random network with weights up to 1.5 times the box, its outputs standardised (mean 0,
    standard deviation 1 over the input distribution) and multiplied by ``scale``."""

    def __init__(self, config: Config, outputs: int = 1, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        self.net = make_student(config, outputs)
        generator = torch.Generator().manual_seed(config.seed + seed)
        with torch.no_grad():
            for layer in self.net[::2]:
                layer.weight.uniform_(-1.5 * WEIGHT_BOUND, 1.5 * WEIGHT_BOUND, generator=generator)
                layer.bias.uniform_(-0.5, 0.5, generator=generator)
            calibration = self.net(torch.randn(8192, config.inputs, generator=generator))
        self.register_buffer("mean", calibration.mean(0))
        self.register_buffer("std", calibration.std(0) / scale)

    def forward(self, x: Tensor) -> Tensor:
        return (self.net(x) - self.mean) / self.std


def standardised_teacher(config: Config, outputs: int = 1, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """:class:`Teacher` as a target function (no gradient)."""
    teacher = Teacher(config, outputs, seed)

    def standardised(x: Tensor) -> Tensor:
        with torch.no_grad():
            return _squeeze(teacher(x))

    return standardised


def make_strategies(config: Config) -> list[Strategy]:
    student = make_student(config)
    box = ps.Box(-WEIGHT_BOUND, WEIGHT_BOUND)
    weights = {"*.weight": box}

    def fresh() -> nn.Module:
        return copy.deepcopy(student)

    rows = [
        Strategy("baseline (none)", "-", fresh(), nn.Identity()),
        Strategy("reparam (Box)", "weights", ps.constrain(fresh(), weights), nn.Identity()),
        Strategy(
            "reparam (SoftClip)",
            "weights",
            ps.constrain(fresh(), {"*.weight": ps.SoftClip(-WEIGHT_BOUND, WEIGHT_BOUND)}),
            nn.Identity(),
        ),
        Strategy("project", "weights", ps.constrain(fresh(), weights, method="project"), nn.Identity()),
        Strategy(
            f"penalty (w={config.penalty_weight:g})",
            "weights",
            ps.constrain(fresh(), weights, method="penalty", weight=config.penalty_weight),
            nn.Identity(),
            extra_loss=ps.penalty,
        ),
        Strategy(
            f"penalty (w={100 * config.penalty_weight:g})",
            "weights",
            ps.constrain(fresh(), weights, method="penalty", weight=100 * config.penalty_weight),
            nn.Identity(),
            extra_loss=ps.penalty,
        ),
        Strategy(f"clip_grad (norm {config.clip_norm:g})", "-", _clipped(fresh(), config), nn.Identity()),
        Strategy("output Box (sigmoid)", "outputs", fresh(), ps.Box(-OUTPUT_BOUND, OUTPUT_BOUND)),
        Strategy("output SoftClip", "outputs", fresh(), ps.SoftClip(-OUTPUT_BOUND, OUTPUT_BOUND)),
        Strategy("output HardClamp", "outputs", fresh(), ps.HardClamp(-OUTPUT_BOUND, OUTPUT_BOUND)),
        Strategy(
            "output HardClamp (ST)",
            "outputs",
            fresh(),
            ps.HardClamp(-OUTPUT_BOUND, OUTPUT_BOUND, straight_through=True),
        ),
    ]
    for row in rows:
        row.optimizer = torch.optim.Adam(row.model.parameters(), lr=config.lr)
    return rows


def _clipped(model: nn.Module, config: Config) -> nn.Module:
    for name, _ in list(model.named_parameters()):
        if name.endswith("weight"):
            ps.clip_grad(model, name, max_norm=config.clip_norm)
    return model


# --------------------------------------------------------------------- other output sets
@dataclass
class HeadTask:
    """Output layers compared on their own task: the same trunk, a different last layer."""

    name: str
    outputs: int
    target: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    inside: Callable[[Tensor], Tensor]  # which outputs (or rows) lie in the set
    at_bound: Callable[[Tensor], Tensor]  # which outputs sit on the set's boundary
    reference: float | None  # a pre-activation where every head's slope is alive; None: not measured
    heads: list[tuple[str, nn.Module]]
    trunk: nn.Module | None = None  # a fixed network feeding the heads; None: a trainable student
    head_lr: float | None = None  # the heads' learning rate (default: the trunk's)


def make_head_tasks(config: Config) -> list[HeadTask]:
    positive_target = standardised_teacher(config, seed=10)
    probability_target = standardised_teacher(config, outputs=5, seed=20)
    # An over-confident "pretrained" classifier: the right logits times 4. Only the head learns, as in
    # temperature scaling; the best temperature is 4.
    overconfident = Teacher(config, outputs=5, seed=20, scale=4.0).requires_grad_(False)
    tiny = torch.finfo(torch.float32).tiny
    return [
        HeadTask(
            "positive",
            1,
            lambda x: F.softplus(2 * positive_target(x)),  # > 0, a third of them below 0.1
            lambda p, y: (p - y).square().mean(),
            lambda p: p >= 0,
            lambda p: p <= tiny,
            1.0,
            [
                ("none", nn.Identity()),
                ("ReLU", nn.ReLU()),
                ("BoundedReLU(4)", ps.BoundedReLU(4.0)),
                ("HardClamp(0, inf) (ST)", ps.HardClamp(0.0, math.inf, straight_through=True)),
                ("Positive (softplus)", ps.Positive()),
                ("Positive (exp)", ps.Positive(method="exp")),
            ],
        ),
        HeadTask(
            "probabilities",
            5,
            lambda x: torch.softmax(probability_target(x), -1),  # soft labels over 5 classes
            lambda p, y: -(y * torch.log(p.clamp_min(tiny))).sum(-1).mean(),  # cross-entropy
            lambda p: (p >= 0).all(-1) & ((p.sum(-1) - 1).abs() <= 1e-5),
            lambda p: p <= 1e-6,
            None,  # the slope of a sum of probabilities is 0 whatever the head
            [
                ("nn.Softmax (T = 1)", nn.Softmax(dim=-1)),
                ("Simplex (T = 1)", ps.Simplex(dim=-1)),
                ("TemperatureSoftmax, no bounds", ps.TemperatureSoftmax(init=1.0)),
                ("TemperatureSoftmax, bounds (0.25, 8)", ps.TemperatureSoftmax(init=1.0, bounds=(0.25, 8.0))),
                ("TemperatureSoftmax, bounds (0.5, 2)", ps.TemperatureSoftmax(init=1.0, bounds=(0.5, 2.0))),
                (
                    "TemperatureSoftmax, project (0.5, 2)",
                    ps.TemperatureSoftmax(init=1.0, bounds=(0.5, 2.0), method="project"),
                ),
            ],
            trunk=overconfident,
            head_lr=0.05,
        ),
    ]


def run_head_task(task: HeadTask, config: Config) -> list[dict[str, Any]]:
    student = make_student(config, task.outputs) if task.trunk is None else task.trunk
    rows = []
    for name, head in task.heads:
        model = copy.deepcopy(student)
        output = copy.deepcopy(head)
        row = Strategy(name, "outputs", model, output, loss_fn=task.loss, inside_fn=task.inside)
        groups = [{"params": [*model.parameters()]}, {"params": [*output.parameters()], "lr": task.head_lr}]
        groups = [g for g in groups if g["params"] and all(p.requires_grad for p in g["params"])]
        for group in groups:
            if group.get("lr") is None:
                group["lr"] = config.lr
        # A row with nothing to learn still steps (and is timed) through an empty optimizer.
        row.optimizer = torch.optim.Adam(groups or [{"params": [torch.zeros((), requires_grad=True)]}])
        rows.append(row)
    train(rows, task.target, config)
    generator = torch.Generator().manual_seed(config.seed + 2)
    x = torch.randn(config.test_size, config.inputs, generator=generator)
    y = task.target(x)
    baseline = statistics.median(rows[0].times)
    results = []
    for row in rows:
        with torch.no_grad():
            pre = row.model(x)
            out = _squeeze(row.output(pre))
        dead = float("nan")
        if task.reference is not None:
            slope = _slope(row.output, pre.flatten())
            reference = _slope(row.output, torch.full((1,), task.reference))
            dead = (slope < DEAD_SLOPE * reference).float().mean().item()
        temperature = getattr(row.output, "temperature", None)
        results.append(
            {
                "task": task.name,
                "strategy": row.name,
                "outputs_feasible_steps": row.outputs_inside / config.steps,
                "test_outputs_inside": task.inside(out).float().mean().item(),
                "test_loss": task.loss(out, y).item(),
                "at_bound": task.at_bound(out).float().mean().item(),
                "dead_gradient": dead,
                "note": "" if temperature is None else f"T = {temperature.item():.3g}",
                "step_ms": 1e3 * statistics.median(row.times),
                "time_ratio": statistics.median(row.times) / baseline,
                "losses": row.losses,
            }
        )
    return results


# ------------------------------------------------------------------------------------- training
def step(row: Strategy, x: Tensor, y: Tensor) -> None:
    start = time.perf_counter()
    row.optimizer.zero_grad(set_to_none=True)
    prediction = row.forward(x)
    loss = row.loss_fn(prediction, y)
    total = loss + row.extra_loss(row.model) if row.extra_loss is not None else loss
    if total.requires_grad:  # a fixed head on a fixed trunk has nothing to learn
        total.backward()
    row.optimizer.step()  # projection, if any, runs here (optimizer step post-hook)
    row.times.append(time.perf_counter() - start)
    row.losses.append(loss.item())
    violation = weight_violation(row.model)
    row.violations.append(violation)
    row.weights_inside += violation == 0.0
    row.outputs_inside += bool(row.inside_fn(prediction.detach()).all())


def train(rows: list[Strategy], target: Callable[[Tensor], Tensor], config: Config) -> None:
    generator = torch.Generator().manual_seed(config.seed + 1)
    for index in range(config.steps):
        x = torch.randn(config.batch, config.inputs, generator=generator)
        y = target(x)
        # Rotate the order every step so no strategy always runs first (cache, allocator, turbo).
        shift = index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            step(row, x, y)


# ------------------------------------------------------------------------------------- measuring
def hidden_weights(model: nn.Module) -> list[Tensor]:
    return [layer.weight.detach() for layer in model.modules() if isinstance(layer, nn.Linear)]


def weight_violation(model: nn.Module) -> float:
    """Largest distance of a weight outside [-B, B], or 0 when all are inside (within the 4 ulps of
    the bound that Box.contains allows)."""
    tolerance = 4 * torch.finfo(torch.float32).eps * WEIGHT_BOUND
    worst = max(float(weight.abs().max()) for weight in hidden_weights(model)) - WEIGHT_BOUND
    return worst if worst > tolerance else 0.0


def weight_stats(model: nn.Module) -> tuple[float, float]:
    """(fraction at a bound, fraction with a dead gradient) of the hidden weights."""
    values = torch.cat([w.flatten() for w in hidden_weights(model)])
    at_bound = (values.abs() >= WEIGHT_BOUND - AT_BOUND * 2 * WEIGHT_BOUND).float().mean().item()
    info = ps.constraint_info(model)
    if not info or next(iter(info.values())).method != "reparam":
        return at_bound, 0.0  # a plain parameter's value is what the optimizer moves: slope 1
    slopes = []
    for layer in model[::2]:  # type: ignore[index]
        transform = layer.parametrizations.weight[0]
        slopes.append(_slope(transform, layer.parametrizations.weight.original.detach().flatten()))
    # Relative to the slope at the stored value of the box's centre (0).
    centre = _slope(transform, transform.inverse(torch.zeros(1)))
    return at_bound, (torch.cat(slopes) < DEAD_SLOPE * centre).float().mean().item()


def _slope(transform: nn.Module, stored: Tensor) -> Tensor:
    """Elementwise d transform(u) / du at ``stored``."""
    with torch.enable_grad():
        stored = stored.clone().requires_grad_(True)
        (slope,) = torch.autograd.grad(transform(stored).sum(), stored)
    return slope.abs()


def output_stats(row: Strategy, x: Tensor) -> tuple[float, float, float]:
    """(fraction inside [-1, 1], fraction at a bound, fraction with a dead gradient) of test outputs."""
    with torch.no_grad():
        pre = row.model(x).squeeze(-1)
    pre = pre.clone().requires_grad_(True)
    out = row.output(pre)
    (slope,) = torch.autograd.grad(out.sum(), pre)
    centre = torch.zeros(1, requires_grad=True)
    (centre_slope,) = torch.autograd.grad(row.output(centre).sum(), centre)
    out = out.detach()
    inside = (out.abs() <= OUTPUT_BOUND).float().mean().item()
    at_bound = (out.abs() >= OUTPUT_BOUND - AT_BOUND * 2 * OUTPUT_BOUND).float().mean().item()
    dead = (slope.abs() < DEAD_SLOPE * centre_slope.abs()).float().mean().item()
    return inside, at_bound, dead


def summarize(
    rows: list[Strategy], target: Callable[[Tensor], Tensor], config: Config
) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(config.seed + 2)
    x = torch.randn(config.test_size, config.inputs, generator=generator)
    y = target(x)
    baseline = statistics.median(rows[0].times)
    results = []
    for row in rows:
        with torch.no_grad():
            test_mse = (row.forward(x) - y).square().mean().item()
        at_bound, dead = weight_stats(row.model)
        test_inside, output_at_bound, output_dead = output_stats(row, x)
        if row.bounds == "outputs":
            at_bound, dead = output_at_bound, output_dead
        results.append(
            {
                "strategy": row.name,
                "bounds": row.bounds,
                "weights_feasible_steps": row.weights_inside / config.steps,
                "outputs_feasible_steps": row.outputs_inside / config.steps,
                "final_weight_violation": row.violations[-1],
                "test_outputs_inside": test_inside,
                "final_train_loss": statistics.fmean(row.losses[-max(1, config.steps // 20) :]),
                "test_mse": test_mse,
                "at_bound": at_bound,
                "dead_gradient": dead,
                "step_ms": 1e3 * statistics.median(row.times),
                "time_ratio": statistics.median(row.times) / baseline,
                "losses": row.losses,
                "violations": row.violations,
            }
        )
    return results


# ------------------------------------------------------------------------------------- reporting
COLUMNS = [
    ("strategy", "strategy", "{}"),
    ("bounds", "bounds", "{}"),
    ("weights in box after step", "weights_feasible_steps", "{:.0%}"),
    ("batch outputs in [-1,1]", "outputs_feasible_steps", "{:.0%}"),
    ("final max weight violation", "final_weight_violation", "{:.3g}"),
    ("test MSE", "test_mse", "{:.4f}"),
    ("at a bound", "at_bound", "{:.1%}"),
    ("dead gradient", "dead_gradient", "{:.1%}"),
    ("ms/step", "step_ms", "{:.2f}"),
    ("time vs baseline", "time_ratio", "{:.2f}x"),
]


HEAD_COLUMNS = [
    ("task", "task", "{}"),
    ("output layer", "strategy", "{}"),
    ("batch outputs in the set", "outputs_feasible_steps", "{:.0%}"),
    ("test loss", "test_loss", "{:.4f}"),
    ("on the boundary", "at_bound", "{:.1%}"),
    ("dead gradient", "dead_gradient", "{:.1%}"),
    ("note", "note", "{}"),
    ("ms/step", "step_ms", "{:.2f}"),
    ("time vs first row", "time_ratio", "{:.2f}x"),
]


def table(results: list[dict[str, Any]], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """The results as a Markdown table."""
    rows = [[_cell(fmt, result[key]) for _, key, fmt in columns] for result in results]
    return markdown_table([title for title, _, _ in columns], rows)


def _cell(fmt: str, value: Any) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


def machine() -> str:
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Training loss and weight violation per step; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (losses, violations) = plt.subplots(1, 2, figsize=(12, 4.5))
    window = 25
    for result in results:
        smooth = _moving_average(result["losses"], window)
        style = "--" if result["bounds"] == "outputs" else "-"
        losses.plot(smooth, style, label=result["strategy"])
        if result["bounds"] != "outputs":
            violations.plot(result["violations"], style, label=result["strategy"])
    losses.set(yscale="log", xlabel="step", ylabel=f"training MSE (moving average, {window} steps)")
    violations.set(xlabel="step", ylabel="max weight violation (|w| - B)")
    losses.legend(fontsize=7)
    violations.legend(fontsize=7)
    figure.suptitle(f"paramshape strategies ({machine()})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def run(config: Config) -> dict[str, list[dict[str, Any]]]:
    """Both comparisons: ``{"strategies": [...], "heads": [...]}``, one dictionary per row."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    _, target = make_task(config)
    rows = make_strategies(config)
    train(rows, target, config)
    strategies = summarize(rows, target, config)
    heads = [result for task in make_head_tasks(config) for result in run_head_task(task, config)]
    return {"strategies": strategies, "heads": heads}


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"), help="plot file")
    parser.add_argument("--no-plot", action="store_true", help="do not write the plot")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    config = Config(**{name: getattr(args, name) for name in vars(defaults)})
    start = time.perf_counter()
    results = run(config)
    elapsed = time.perf_counter() - start
    strategies = results["strategies"]
    print(f"{config.steps} steps of batch {config.batch}, each table's rows interleaved; {machine()}")
    print(f"{elapsed:.1f} s in all\n")
    print(f"Weights bounded to [-{WEIGHT_BOUND}, {WEIGHT_BOUND}] or outputs to [-1, 1], on one task:\n")
    print(table(strategies))
    print("\nOutput layers for positive outputs and probabilities, each on its own task:\n")
    print(table(results["heads"], HEAD_COLUMNS))
    if args.json is not None:
        args.json.write_text(json.dumps({"config": vars(config), "machine": machine(), **results}))
    if not args.no_plot:
        if plot(strategies, args.plot):
            print(f"\nplot written to {args.plot}")
        else:
            print('\nmatplotlib is not installed: no plot (pip install -e ".[bench]")')
    return results


if __name__ == "__main__":
    main()
