"""Doubly stochastic matrices, the Birkhoff polytope: :class:`DoublyStochastic`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.numerics.host import host_reads_free
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixSet,
    MatrixTransform,
    finite_float64,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
)
from paramshape.transforms.registry import register

__all__ = ["DoublyStochastic", "doubly_stochastic"]

#: How often (in iterations) the eager loop on a CPU checks whether Sinkhorn has converged (each
#: check is a reduction and a read back, so it is not done every iteration).
_CHECK_EVERY = 10


def _sums_excess(y: Tensor) -> Tensor:
    """Per matrix, ``(*batch, 1, 1)`` float64: the largest deviation of a row or column sum from 1
    and the most negative entry, beyond :func:`matrix_tolerance`; infinite with NaN or infinity."""
    y64 = finite_float64(y)
    tolerance = matrix_tolerance(y.dtype, y.shape[-1])
    rows = (y64.sum(-1) - 1).abs().amax(-1)
    cols = (y64.sum(-2) - 1).abs().amax(-1)
    negative = (-y64).amax((-2, -1))
    worst = torch.maximum(torch.maximum(rows, cols), negative)
    excess = (worst - tolerance).clamp_min(0.0)[..., None, None]
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _balance(p: Tensor) -> Tensor:
    r"""The exact repair after the last Sinkhorn step (whose columns sum to 1): add
    :math:`\delta 1^\top / n`, :math:`\delta = 1 - P 1`, which makes the rows sum to 1 and leaves the
    column sums alone (:math:`\sum_i \delta_i = 0`); where that makes an entry negative (Sinkhorn
    far from converged), mix with the uniform matrix :math:`J / n` just enough to lift it to 0. The
    identity, to rounding, on a converged result."""
    size = p.shape[-1]
    delta = 1 - p.sum(-1, keepdim=True)
    balanced = p + delta / size
    lowest = balanced.amin((-2, -1), keepdim=True)
    # t in [0, 1): the weight of J / n that brings the lowest entry to 0 (0 where none is negative).
    t = (-lowest).clamp_min(0.0) / (1 / size - lowest.clamp_max(0.0))
    return balanced * (1 - t) + t / size


@register("doubly_stochastic")
class DoublyStochastic(MatrixTransform):
    r"""Doubly stochastic matrices: non-negative entries, every row and every column summing to 1
    (the Birkhoff polytope; soft permutations and assignments, optimal-transport plans with uniform
    marginals, mixing matrices).

    .. math::

        f(X) = \operatorname{balance}\bigl(\exp(S^{K}(X))\bigr), \quad
        S = C \circ R,\ R(L) = L - \operatorname{logsumexp}_{\text{row}}(L),\
        C(L) = L - \operatorname{logsumexp}_{\text{col}}(L); \qquad
        f^{-1}(P) = \log \max(P, \text{tiny})

    Sinkhorn's iteration in log space (each step subtracts each row's, then each column's
    log-sum-exp; never an overflow or a division, so any finite input, :math:`\pm 10^4` included,
    gives a finite value and finite gradients; gradients flow through the iterations). At most
    ``max_iterations`` steps; on a CPU, in eager mode, it stops earlier once every row sum is within
    :func:`matrix_tolerance` of 1 (checked every 10 steps; a compiled graph, and any other device,
    runs every step, so a GPU forward never waits to read a value back). The
    last step leaves the columns summing to 1 exactly; ``balance`` then adds
    :math:`(1 - P 1) 1^\top / n`, which makes the rows exact without moving the column sums, and
    where that would leave a negative entry (a matrix Sinkhorn has not converged on: entries more than
    ``max_iterations`` orders of magnitude apart) mixes in just enough of the uniform matrix
    :math:`J / n`. So every value is in the set to rounding, however slowly Sinkhorn converges, and
    on a converged one ``balance`` changes nothing beyond rounding.

    **Not bijective**: adding a constant to a row or a column of :math:`X` does not change the value
    (``2n - 1`` of the ``n^2`` stored numbers are redundant), so there is no log-det-Jacobian. The
    inverse :math:`\log P` is exact for a doubly stochastic :math:`P` (Sinkhorn leaves it as it is);
    zero entries become :math:`\log` of the dtype's smallest normal number. **No projection**: the
    Euclidean projection onto the Birkhoff polytope has no closed form (it is a quadratic program,
    solved iteratively, e.g. by Dykstra's alternating projections, whose result is exact only in the
    limit), so ``method="project"`` and ``"lagrangian"`` are refused with
    :class:`~paramshape.ProjectionUnavailableError`; ``method="penalty"`` uses the membership excess.

    * Domain: :math:`\mathbb{R}^{n \times n}`; leading dimensions are a batch.
    * Codomain: :math:`\{P \ge 0,\ P 1 = 1,\ P^\top 1 = 1\}`. Membership per matrix: every row and
      column sum within ``matrix_tolerance`` (about ``10 n`` epsilons) of 1 and no entry below minus
      that tolerance.

    Args:
        max_iterations: the most Sinkhorn steps (default 100). Sinkhorn converges linearly, the
            slower the farther apart the entries of :math:`e^X` are: for 5 x 5 inputs of scale 2,
            100 steps leave row sums about 1e-8 from 1 in float64 (``balance`` then makes them
            exact, a change of that size), and float32's tolerance is reached in a few dozen.
            Raise it where the value must be the Sinkhorn limit to float64's precision.

    Raises:
        SpecError: ``max_iterations`` is not a positive integer.
        ShapeMismatchError: (from :func:`paramshape.constrain`) the matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(4, 4, bias=False), "weight", ps.DoublyStochastic(), init="sample")
        >>> w = layer.weight.detach()
        >>> bool(torch.allclose(w.sum(0), torch.ones(4))), bool(torch.allclose(w.sum(1), torch.ones(4)))
        (True, True)
        >>> bool((w >= 0).all())
        True
    """

    bijective = False

    def __init__(self, max_iterations: int = 100) -> None:
        super().__init__()
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise SpecError(
                f"DoublyStochastic: max_iterations must be a positive integer; got {max_iterations!r}."
            )
        self.max_iterations = max_iterations

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        size = x.shape[-1]
        # Row sums within this of 1 count as converged: the membership tolerance, of which balance's
        # own rounding then uses a small part.
        tolerance = matrix_tolerance(x.dtype, size) / 4
        # The early exit reads a value back: on a CPU only (on a GPU each read would wait for the
        # device; there the loop runs its max_iterations, which _balance makes exact either way).
        eager = host_reads_free(x)
        log_p = work - torch.logsumexp(work, -2, keepdim=True)
        for step in range(self.max_iterations):
            log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
            log_p = log_p - torch.logsumexp(log_p, -2, keepdim=True)
            if eager and step % _CHECK_EVERY == _CHECK_EVERY - 1:
                rows = torch.exp(log_p.detach()).sum(-1)
                if bool(((rows - 1).abs() <= tolerance).all()):
                    break
        return _balance(torch.exp(log_p)).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        tiny = torch.finfo(y.dtype).tiny
        return torch.log(y.to(compute_dtype(y.dtype)).clamp_min(tiny)).to(y.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return doubly_stochastic

    def _excess(self, y: Tensor) -> Tensor:
        return _sums_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        matrix = y.double()[index[:-2]]
        lowest = float(matrix.min())
        if lowest < 0 and -lowest >= max(
            float((matrix.sum(-1) - 1).abs().max()), float((matrix.sum(-2) - 1).abs().max())
        ):
            return f"{matrix_label(index)} has a negative entry, {format_value(lowest, y.dtype)}"
        rows, cols = matrix.sum(-1), matrix.sum(-2)
        row_gap, col_gap = (rows - 1).abs(), (cols - 1).abs()
        if float(row_gap.max()) >= float(col_gap.max()):
            i = int(row_gap.argmax())
            return (
                f"{matrix_label(index)} has row {i} summing to {format_value(float(rows[i]), y.dtype)}, not 1"
            )
        j = int(col_gap.argmax())
        return (
            f"{matrix_label(index)} has column {j} summing to {format_value(float(cols[j]), y.dtype)}, not 1"
        )

    def to_interior(self, y: Tensor) -> Tensor:
        """The Sinkhorn image of ``y``'s non-negative part (NaN and infinity read as 0, a zero
        matrix as uniform) mixed with a thousandth of the uniform matrix, so every entry is at least
        a thousandth of ``1 / n`` and carries a gradient."""
        y64 = finite_float64(y).clamp(min=0.0)
        largest = y64.amax((-2, -1), keepdim=True)
        y64 = torch.where(largest > 0, y64 / torch.where(largest > 0, largest, 1.0), 1.0)
        logs = torch.log(y64.clamp_min(math.exp(-30.0)))  # entries more than e^30 apart are zeros
        inside: Tensor = DoublyStochastic(max(self.max_iterations, 1000))(logs)
        size = y.shape[-1]
        return ((1 - INTERIOR_FRACTION) * inside + INTERIOR_FRACTION / size).to(y.dtype)

    def extra_repr(self) -> str:
        return "" if self.max_iterations == 100 else f"max_iterations={self.max_iterations}"


#: The Birkhoff polytope as a :class:`torch.distributions.constraints.Constraint` (event_dim 2), with
#: :class:`DoublyStochastic`'s tolerance.
doubly_stochastic = MatrixSet("DoublyStochastic()", _sums_excess)
