"""Compare method="riemannian" and method="lagrangian" with their peers on four small problems.

The problems, each with a known optimum computed independently (an eigendecomposition, an SVD, the
sample covariance, a long float64 projected-gradient run):

* top eigenvector on the sphere: minimise ``-v^T A v`` over unit vectors (64 x 64 ``A``);
* orthogonal Procrustes: minimise ``||Q A - B||^2`` over orthogonal 16 x 16 ``Q``;
* PD covariance fit: minimise the Gaussian NLL ``log det P + tr(P^-1 S)`` over 8 x 8 positive
  definite ``P`` (optimum ``P = S``);
* boxed least squares: minimise ``||X w - y||^2 / n`` over ``w`` in ``[-1, 1]^32``, where the
  unconstrained optimum lies outside.

The strategies: paramshape's ``riemannian`` and ``reparam`` (and geoopt's ``RiemannianAdam`` on
geoopt's manifold, when geoopt is installed: ``pip install -e ".[bench]"``) for the first three;
paramshape's ``lagrangian``, ``penalty`` (weight 1), ``project`` and a cooper-style loop (Adam on the
Lagrangian ``f + lambda . g`` of the inequality constraints ``w - 1 <= 0``, ``-1 - w <= 0``, and
projected gradient ascent on ``lambda >= 0`` with its own learning rate, the loop cooper's
``SimultaneousOptimizer`` runs) for the last. Every problem also has an unconstrained row, the time
baseline. All rows of a problem use Adam with the same learning rate and start from the same point;
they step in turn inside one loop (the order rotates every step), so their timings share the
machine's state.

Columns: the gap to the optimum's loss at the end (relative to ``|f*|``), the distance to the set at
the end (norm error, ``|Q^T Q - I|``, negative eigenvalue, box excess), the median time of a step and
its ratio to the unconstrained row's.

Run from the repository root::

    python benchmarks/compare_problems.py
    python benchmarks/compare_problems.py --steps 100 --json problems.json
"""

from __future__ import annotations

import argparse
import json
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
from torch import Tensor, nn

import paramshape as ps

# A sibling file, not a package: this script runs by path (see _tables.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import markdown_table

try:
    with warnings.catch_warnings():
        # geoopt 0.5 scripts functions with torch.jit.script, which torch 2.13 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        import geoopt
except ImportError:  # the peer rows are skipped
    geoopt = None


@dataclass
class Row:
    problem: str
    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[nn.Module], Tensor]
    after: Callable[[], None] | None = None
    times: list[float] = field(default_factory=list)

    def step(self) -> None:
        start = time.perf_counter()
        self.optimizer.zero_grad()
        loss = self.loss(self.module)
        loss.backward()
        self.optimizer.step()
        if self.after is not None:
            self.after()
        self.times.append(time.perf_counter() - start)


def _holder(value: Tensor, geo: Any = None) -> nn.Module:
    module = nn.Module()
    module.x = (
        geoopt.ManifoldParameter(value.clone(), manifold=geo)
        if geo is not None
        else nn.Parameter(value.clone())
    )
    return module


def _manifold_rows(
    problem: str,
    start: Tensor,
    spec: ps.Transform,
    geo: Callable[[], Any] | None,
    loss: Callable[[Tensor], Tensor],
    lr: float,
    sgd: bool = False,
) -> list[Row]:
    stock = torch.optim.SGD if sgd else torch.optim.Adam
    rows = []
    plain = _holder(start)
    rows.append(Row(problem, "unconstrained", plain, stock(plain.parameters(), lr=lr), lambda m: loss(m.x)))
    riemannian = ps.constrain(_holder(start), "x", spec, method="riemannian")
    rows.append(
        Row(
            problem,
            "paramshape riemannian",
            riemannian,
            stock(riemannian.parameters(), lr=lr),
            lambda m: loss(m.x),
        )
    )
    reparam = ps.constrain(_holder(start), "x", spec)
    rows.append(
        Row(problem, "paramshape reparam", reparam, stock(reparam.parameters(), lr=lr), lambda m: loss(m.x))
    )
    if geoopt is not None and geo is not None:
        peer = _holder(start, geo())
        peer_optimizer = geoopt.optim.RiemannianSGD if sgd else geoopt.optim.RiemannianAdam
        rows.append(
            Row(
                problem,
                f"geoopt {peer_optimizer.__name__}",
                peer,
                peer_optimizer(peer.parameters(), lr=lr),
                lambda m: loss(m.x),
            )
        )
    return rows


Problem = tuple[list[Row], float, Callable[[Tensor], float], Callable[[Tensor], Tensor]]


def eigenvector() -> Problem:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=generator)
    a = a @ a.T / 64
    start = nn.functional.normalize(torch.randn(64, generator=generator), dim=0)
    optimum = -float(torch.linalg.eigvalsh(a.double())[-1])

    def task(v: Tensor) -> Tensor:
        return -(v @ a @ v)

    rows = _manifold_rows(
        "top eigenvector (sphere, 64)", start, ps.UnitNorm(), lambda: geoopt.Sphere(), task, lr=0.02
    )
    return rows, optimum, lambda v: abs(float(v.double().norm()) - 1), task


def procrustes() -> Problem:
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 256, generator=generator), torch.randn(16, 256, generator=generator)
    u, _, vh = torch.linalg.svd((b @ a.T).double())
    optimum = float(((u @ vh) @ a.double() - b.double()).square().sum() / 256)

    def task(q: Tensor) -> Tensor:
        return (q @ a - b).square().sum() / 256

    rows = _manifold_rows(
        "orthogonal Procrustes (16 x 16)",
        torch.eye(16),
        ps.Orthogonal(),
        lambda: geoopt.EuclideanStiefel(),
        task,
        lr=0.01,
    )

    def distance(q: Tensor) -> float:
        q = q.double()
        return float(torch.linalg.matrix_norm(q.T @ q - torch.eye(16, dtype=torch.float64), ord=2))

    return rows, optimum, distance, task


def covariance() -> Problem:
    generator = torch.Generator().manual_seed(2)
    mix = torch.randn(8, 8, generator=generator) * torch.logspace(-1, 0.5, 8)
    x = torch.randn(400, 8, generator=generator) @ mix
    s = x.T @ x / 400
    optimum = float(torch.logdet(s.double()) + 8)

    def nll(p: Tensor) -> Tensor:
        return torch.logdet(p) + torch.trace(torch.linalg.solve(p, s))

    # Plain SGD for every row: the affine-invariant gradient P - S of this loss is what makes the
    # Riemannian step work, and Adam's per-entry scaling would undo it.
    rows = _manifold_rows(
        "PD covariance fit (8 x 8, SGD)",
        torch.eye(8),
        ps.PositiveDefinite(),
        lambda: geoopt.SymmetricPositiveDefinite(),
        nll,
        lr=0.1,
        sgd=True,
    )
    return rows, optimum, lambda p: max(0.0, -float(torch.linalg.eigvalsh(_sym(p.double()))[0])), nll


def _sym(m: Tensor) -> Tensor:
    return (m + m.T) / 2


def boxed_least_squares() -> Problem:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(256, 32, generator=generator)
    truth = 2.5 * torch.randn(32, generator=generator)
    target = features @ truth + 0.1 * torch.randn(256, generator=generator)

    def loss(w: Tensor) -> Tensor:
        return (features @ w - target).square().mean()

    optimum = _boxed_reference(features.double(), target.double())
    start, lr = torch.zeros(32), 0.05
    rows = []
    for name, method in (
        ("unconstrained", None),
        ("paramshape lagrangian", "lagrangian"),
        ("paramshape penalty (w=1)", "penalty"),
        ("paramshape project", "project"),
    ):
        module = _holder(start)
        if method is not None:
            ps.constrain(module, "x", ps.Box(-1, 1), method=method)
        extra = method in ("lagrangian", "penalty")
        rows.append(
            Row(
                "boxed least squares (32)",
                name,
                module,
                torch.optim.Adam(module.parameters(), lr=lr),
                (lambda m: loss(m.x) + ps.penalty(m)) if extra else (lambda m: loss(m.x)),
            )
        )
    rows.append(_cooper_style(start, loss, lr))
    return rows, optimum, lambda w: float((w.abs() - 1).clamp_min(0).max()), loss


def _cooper_style(start: Tensor, loss: Callable[[Tensor], Tensor], lr: float) -> Row:
    """Simultaneous gradient descent-ascent on f(w) + lambda . g(w), g = (w - 1, -1 - w) <= 0, with a
    separate SGD on the multipliers projected onto lambda >= 0: the loop cooper runs."""
    module = _holder(start)
    module.multipliers = torch.zeros(2, *start.shape)
    dual_lr = 0.05

    def lagrangian(m: nn.Module) -> Tensor:
        g = torch.stack([m.x - 1, -1 - m.x])
        m.violation = g.detach()
        return loss(m.x) + (m.multipliers * g).sum()

    def ascent() -> None:
        module.multipliers = (module.multipliers + dual_lr * module.violation).clamp_min(0)

    return Row(
        "boxed least squares (32)",
        "cooper-style GDA",
        module,
        torch.optim.Adam([module.x], lr=lr),
        lagrangian,
        ascent,
    )


def _boxed_reference(features: Tensor, target: Tensor) -> float:
    """The boxed optimum's loss by accelerated projected gradient (FISTA) in float64, to convergence."""
    n = features.shape[0]
    lipschitz = 2 * float(torch.linalg.matrix_norm(features, ord=2)) ** 2 / n
    w = torch.zeros(features.shape[1], dtype=torch.float64)
    previous, momentum = w, 1.0
    for _ in range(20000):
        grad = 2 * features.T @ (features @ w - target) / n
        nxt = (w - grad / lipschitz).clamp(-1, 1)
        following = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
        w, previous = nxt + (momentum - 1) / following * (nxt - previous), nxt
        momentum = following
    return float((features @ previous - target).square().mean())


PROBLEMS = {
    "eigenvector": eigenvector,
    "procrustes": procrustes,
    "covariance": covariance,
    "boxed": boxed_least_squares,
}


def run(steps: int, problems: list[str]) -> list[dict[str, Any]]:
    results = []
    for key in problems:
        rows, optimum, distance, task = PROBLEMS[key]()
        for index in range(steps):
            shift = index % len(rows)
            for row in rows[shift:] + rows[:shift]:
                row.step()
        baseline = next((r for r in rows if r.name == "unconstrained"), None)
        base_time = statistics.median(baseline.times) if baseline is not None else None
        for row in rows:
            value = row.module.x.detach()
            with torch.no_grad():
                final = float(task(value))  # the task loss alone, without a penalty term
            median = statistics.median(row.times)
            results.append(
                {
                    "problem": row.problem,
                    "strategy": row.name,
                    "loss gap": (final - optimum) / abs(optimum),
                    "distance to set": distance(value),
                    "ms/step": 1e3 * median,
                    "time vs unconstrained": (median / base_time) if base_time else None,
                }
            )
    return results


COLUMNS = (
    "problem",
    "strategy",
    "loss gap (relative)",
    "distance to set",
    "ms/step",
    "time vs unconstrained",
)


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        ratio = "-" if r["time vs unconstrained"] is None else f"{r['time vs unconstrained']:.2f}x"
        gap, distance, ms = f"{r['loss gap']:.1e}", f"{r['distance to set']:.1e}", f"{r['ms/step']:.3f}"
        rows.append([r["problem"], r["strategy"], gap, distance, ms, ratio])
    return markdown_table(COLUMNS, rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run(args.steps, args.problems)
    print(
        f"torch {torch.__version__}, {platform.machine()}, Python {platform.python_version()}, "
        f"geoopt {getattr(geoopt, '__version__', 'not installed')}, {args.steps} steps\n"
    )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
