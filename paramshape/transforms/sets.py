"""Sets torch.distributions has no constraint for (ordered vectors, the unit sphere, sum-to-zero
vectors), as :class:`torch.distributions.constraints.Constraint` objects, and the float64 distances
outside them that the transforms' ``_excess`` use.

Every check tolerates rounding: a few ulps of the dtype plus, for sums and norms over a slice, a
term growing with the slice's length in the compute dtype (the accumulated rounding of the map).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.numerics.precision import compute_dtype, membership_tolerance, widest

__all__ = [
    "ordered_excess",
    "ordered_vector",
    "positive_ordered_vector",
    "slice_tolerance",
    "sphere",
    "sphere_excess",
    "sum_to_zero",
    "sum_to_zero_excess",
]


def slice_tolerance(dtype: torch.dtype, size: int) -> float:
    """Relative tolerance of a sum or norm over a slice of ``size`` entries stored in ``dtype``:
    rounding each entry to the dtype (half an ulp each, 4 ulps allowed) plus the accumulated
    rounding of the map in its compute dtype, growing with the length."""
    return 4 * torch.finfo(dtype).eps + 2 * size * torch.finfo(compute_dtype(dtype)).eps


def ordered_excess(y: Tensor, dim: int, positive: bool = False) -> Tensor:
    """How far each slice along ``dim`` is from non-decreasing (and, with ``positive``, from a
    non-negative first entry), beyond a few ulps of the entries compared; float64, keepdim."""
    y64 = y.double().movedim(dim, -1)
    before, after = y64[..., :-1], y64[..., 1:]
    scale = torch.maximum(before.abs(), after.abs())
    drops = (before - after - membership_tolerance(y.dtype, scale)).clamp_min(0.0)
    excess = drops.amax(-1, keepdim=True) if drops.shape[-1] else y64[..., :1] * 0.0
    if positive:
        first = y64[..., :1]
        excess = excess + (-first - membership_tolerance(y.dtype, 1.0)).clamp_min(0.0)
    return torch.nan_to_num(excess, nan=torch.inf).movedim(-1, dim)


def sphere_excess(y: Tensor, dim: int) -> Tensor:
    """How far the Euclidean norm of each slice along ``dim`` is from 1, beyond the slice tolerance."""
    # |z| for complex entries: the norm of a complex128 copy (double() would drop the imaginary part).
    norm = torch.linalg.vector_norm(widest(y), dim=dim, keepdim=True)
    excess = ((norm - 1.0).abs() - slice_tolerance(y.dtype, y.shape[dim])).clamp_min(0.0)
    return torch.nan_to_num(excess, nan=torch.inf)


def sum_to_zero_excess(y: Tensor, dim: int) -> Tensor:
    """How far the sum of each slice along ``dim`` is from 0, beyond the slice tolerance relative to
    the sum of the entries' magnitudes (a sum can be no more accurate than its largest terms)."""
    y64 = y.double()
    total = y64.sum(dim, keepdim=True).abs()
    scale = y64.abs().sum(dim, keepdim=True)
    tolerance = slice_tolerance(y.dtype, y.shape[dim]) * scale + torch.finfo(y.dtype).tiny
    excess = (total - tolerance).clamp_min(0.0)
    return torch.nan_to_num(torch.where(torch.isfinite(scale), excess, torch.inf), nan=torch.inf)


class _SliceConstraint(constraints.Constraint):
    """A set of vectors along the last dimension, checked with dtype-aware tolerances."""

    event_dim = 1
    name = "slice"

    def _excess(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, value: Tensor) -> Tensor:
        return (self._excess(value) == 0).squeeze(-1) & torch.isfinite(value).all(-1)

    def __repr__(self) -> str:
        return self.name


class _OrderedVector(_SliceConstraint):
    """Vectors whose entries increase along the last dimension (ties within a few ulps allowed)."""

    name = "OrderedVector()"

    def _excess(self, value: Tensor) -> Tensor:
        return ordered_excess(value, -1)


class _PositiveOrderedVector(_SliceConstraint):
    """Increasing vectors with positive entries."""

    name = "PositiveOrderedVector()"

    def _excess(self, value: Tensor) -> Tensor:
        return ordered_excess(value, -1, positive=True)


class _Sphere(_SliceConstraint):
    """Vectors of Euclidean norm 1 along the last dimension."""

    name = "Sphere()"

    def _excess(self, value: Tensor) -> Tensor:
        return sphere_excess(value, -1)


class _SumToZero(_SliceConstraint):
    """Vectors whose entries sum to 0 along the last dimension."""

    name = "SumToZero()"

    def _excess(self, value: Tensor) -> Tensor:
        return sum_to_zero_excess(value, -1)


ordered_vector = _OrderedVector()
positive_ordered_vector = _PositiveOrderedVector()
sphere = _Sphere()
sum_to_zero = _SumToZero()
