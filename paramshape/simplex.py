"""The probability simplex: :class:`Simplex`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from ._numerics import INTERIOR_FRACTION, compute_dtype, membership_tolerance
from ._report import format_index, format_scalar, format_shape
from .errors import ShapeMismatchError, SpecError
from .registry import register
from .transform import Transform

__all__ = ["Simplex"]


@register("simplex")
class Simplex(Transform):
    r"""Slices along ``dim`` that are non-negative and sum to one (rows of probabilities).

    .. math::

        f(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}, \qquad
        f^{-1}(y)_i = \log y_i - \frac{1}{K} \sum_j \log y_j

    The stored tensor keeps the parameter's shape (``K`` logits per slice). The logits are
    redundant by one degree of freedom (adding a constant to a slice changes nothing), so the inverse
    picks the centred ones; entries that are exactly 0 are read as the smallest normal number of the
    dtype so the logits stay finite.

    * Domain: :math:`\mathbb{R}^K` along ``dim``.
    * Codomain: the simplex :math:`\{y : y_i \ge 0, \sum_i y_i = 1\}` along ``dim``. Membership
      tolerates a sum off by a few ulps times ``K``, not torch's fixed 1e-6, which float16 and long
      float32 rows cannot meet. :attr:`codomain` is torch's ``constraints.simplex``, which is
      defined along the last dimension.

    Args:
        dim: the dimension that holds each distribution (default: the last one).

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> mix = nn.Module()
        >>> mix.logits = nn.Parameter(torch.full((2, 3), 1 / 3))
        >>> _ = ps.constrain(mix, "logits", ps.Simplex(dim=-1))
        >>> mix.logits.sum(-1)
        tensor([1., 1.], grad_fn=<SumBackward1>)
    """

    event_dim = 1
    element_noun = "slices"

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise SpecError(f"Simplex: dim must be an integer; got {dim!r}.")
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(x.to(compute_dtype(x.dtype)), dim=self.dim).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = y.to(compute_dtype(y.dtype))
        logs = torch.log(work.clamp_min(torch.finfo(work.dtype).tiny))
        return (logs - logs.mean(self.dim, keepdim=True)).to(y.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.simplex

    def _excess(self, y: Tensor) -> Tensor:
        y64 = y.double()
        size = y.shape[self.dim]
        negative = (-y64 - membership_tolerance(y.dtype, 1.0)).clamp_min(0.0).amax(self.dim, keepdim=True)
        off_sum = (y64.sum(self.dim, keepdim=True) - 1.0).abs() - self._sum_tolerance(y.dtype, size)
        return negative + off_sum.clamp_min(0.0)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        dim = self.dim % y.dim()
        where = list(index)
        where[dim] = slice(None)
        row = y.double()[tuple(where)]
        label = "[" + ", ".join(":" if i == dim else str(v) for i, v in enumerate(index)) + "]"
        smallest = row.min().item()
        if smallest < 0:
            position = int(torch.argmin(row))
            return f"the slice {label} has entry {format_scalar(smallest)} at position {position}"
        tolerance = format_scalar(self._sum_tolerance(y.dtype, row.numel()))
        return (
            f"the slice {label} sums to {format_scalar(row.sum().item())} (must sum to 1 within {tolerance})"
        )

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), y.double(), 0.0)
        projected = _project_onto_simplex(finite, self.dim)
        size = y.shape[self.dim]
        weight = max(INTERIOR_FRACTION, 8 * torch.finfo(y.dtype).eps)
        return ((1 - weight) * projected + weight / size).to(y.dtype)

    def check_shape(self, shape: torch.Size) -> None:
        if len(shape) == 0:
            raise ShapeMismatchError(
                "Simplex needs a tensor with at least one dimension; got a 0-d tensor. Constrain a "
                "vector of weights instead of a scalar."
            )
        if not -len(shape) <= self.dim < len(shape):
            raise ShapeMismatchError(
                f"Simplex(dim={self.dim}) is out of range for a tensor of shape {format_shape(shape)}; "
                f"use a dim in [{-len(shape)}, {len(shape) - 1}]."
            )
        if shape[self.dim] == 0:
            raise ShapeMismatchError(
                f"Simplex(dim={self.dim}): the tensor of shape {format_shape(shape)} has no entries "
                f"along dim {self.dim} (at {format_index((self.dim,))})."
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    @staticmethod
    def _sum_tolerance(dtype: torch.dtype, size: int) -> float:
        # The sum's error: rounding each entry to the stored dtype (at most half an ulp of the total)
        # plus the accumulated rounding of the softmax in its compute dtype, growing with the length.
        return 4 * torch.finfo(dtype).eps + 2 * size * torch.finfo(compute_dtype(dtype)).eps


def _project_onto_simplex(values: Tensor, dim: int) -> Tensor:
    """Euclidean projection of each slice along ``dim`` onto the simplex (sort-based, exact)."""
    moved = values.movedim(dim, -1)
    # The projection ignores a common shift; removing the largest entry keeps huge values from
    # cancelling in the cumulative sums below.
    moved = moved - moved.amax(-1, keepdim=True)
    ordered, _ = torch.sort(moved, dim=-1, descending=True)
    excess_sums = ordered.cumsum(-1) - 1.0
    ranks = torch.arange(1, moved.shape[-1] + 1, dtype=moved.dtype, device=moved.device)
    # At least one entry is always in the support; rounding can hide it when values are huge.
    support = (ordered - excess_sums / ranks > 0).sum(-1, keepdim=True).clamp_min(1)
    shift = excess_sums.gather(-1, support - 1) / support
    return (moved - shift).clamp_min(0.0).movedim(-1, dim)
