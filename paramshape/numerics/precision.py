"""Numerical building blocks shared by the transform families.

Every tolerance and margin here is derived from ``torch.finfo`` of the dtype at hand; nothing is a
fixed epsilon. Half-precision tensors are computed in float32 and cast back (see
:func:`compute_dtype`), because the maps below lose most of their accuracy in 8 or 11 bits of
mantissa and float16 overflows ``exp`` past 11.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "INTERIOR_FRACTION",
    "INTERIOR_SLOPE",
    "compute_dtype",
    "excess_above",
    "excess_below",
    "interior_distance",
    "widest",
    "interior_margin",
    "membership_tolerance",
    "softplus_inverse",
    "step_inside",
]

#: Where ``to_interior`` puts a value that was outside the set: this fraction of the set's scale
#: inside the nearest bound. It is a design choice for gradient health, not an epsilon: there the
#: sigmoid's slope is still about 4e-3 of its maximum (1e-3 of the softplus slope far from the bound),
#: so the value can move again. Low-precision dtypes get at least 8 ulps (see interior_margin).
INTERIOR_FRACTION = 1e-3

#: Where the elementwise maps' ``to_interior`` (``init="project"`` under reparametrisation) puts a value
#: that was outside the set or too close to its boundary: the point where the map's slope is this
#: fraction of its largest slope. For the unit-slope box that is 6.7% of the width inside the nearer
#: bound (87% of the half-width from the centre); for a one-sided softplus of softness ``c`` it is
#: ``c log(4/3)`` from the bound; for SoftClip about ``0.29 softness (high - low)``. A quarter of the
#: full slope: the moved values still learn at a quarter of the rate of the values inside, where
#: INTERIOR_FRACTION's 1e-3 of the width left the logistic box at 4e-3 of its slope, so 92% of a
#: clipped critic's weights started saturated (issue 11). Vector and matrix sets keep
#: INTERIOR_FRACTION.
INTERIOR_SLOPE = 0.25

_HALF_TYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype a transform computes in for tensors of ``dtype`` (float32 for halves)."""
    return torch.float32 if dtype in _HALF_TYPES else dtype


def membership_tolerance(dtype: torch.dtype, scale: Tensor | float) -> Tensor | float:
    """Tolerance for membership tests: four ulps of ``scale`` in ``dtype`` (at least four of 1e-30).

    Four ulps absorb the rounding of the forward map (computed in float32 for halves and cast back)
    and of a value computed in a wider dtype and cast to this one.
    """
    finfo = torch.finfo(dtype)
    if isinstance(scale, Tensor):
        return 4 * finfo.eps * scale.abs().clamp_min(finfo.tiny)
    return 4 * finfo.eps * max(abs(scale), finfo.tiny)


def interior_margin(dtype: torch.dtype, scale: Tensor, bound: Tensor) -> Tensor:
    """Distance from ``bound`` where ``to_interior`` places values: ``INTERIOR_FRACTION`` of the set's
    ``scale``, and never fewer than 8 ulps of ``bound`` in ``dtype``, so the result does not round
    back onto the bound when stored."""
    finfo = torch.finfo(dtype)
    return torch.maximum(INTERIOR_FRACTION * scale, 8 * finfo.eps * bound.abs().clamp_min(finfo.tiny))


def interior_distance(dtype: torch.dtype, distance: Tensor, bound: Tensor) -> Tensor:
    """``distance`` from ``bound``, but never fewer than 8 ulps of ``bound`` in ``dtype``, so a value
    placed there does not round back onto the bound when stored."""
    finfo = torch.finfo(dtype)
    return torch.maximum(distance, 8 * finfo.eps * bound.abs().clamp_min(finfo.tiny))


def step_inside(bound: Tensor, toward: float) -> Tensor:
    """The representable number next to ``bound`` in the direction of ``toward`` (``nextafter``)."""
    return torch.nextafter(bound, torch.full_like(bound, toward))


def excess_below(y: Tensor, low: Tensor) -> Tensor:
    """How far ``y`` lies below ``low`` beyond the membership tolerance, in float64 (0 when not)."""
    y64, low64 = y.double(), low.double()
    tol = membership_tolerance(y.dtype, low64)
    return (low64 - tol - y64).clamp_min(0.0)


def excess_above(y: Tensor, high: Tensor) -> Tensor:
    """How far ``y`` lies above ``high`` beyond the membership tolerance, in float64 (0 when not)."""
    y64, high64 = y.double(), high.double()
    tol = membership_tolerance(y.dtype, high64)
    return (y64 - high64 - tol).clamp_min(0.0)


def softplus_inverse(y: Tensor) -> Tensor:
    """Inverse of softplus, ``log(expm1(y))``, finite and accurate for ``y`` from the dtype's smallest
    normal number up to its largest finite one.

    Three regimes, switched at ``exp(log(eps) + 2)`` and ``-(log(eps) + 2)`` as in TensorFlow
    Probability: below, ``log(expm1(y)) = log(y)`` to working precision; above, it equals ``y``; in
    between, ``y + log(-expm1(-y))`` never overflows. The middle branch is fed a harmless 1 where it is
    not selected (a "double where"), so no ``inf`` reaches it and no NaN reaches the gradient.
    """
    threshold = math.log(torch.finfo(y.dtype).eps) + 2.0
    is_small = y < math.exp(threshold)
    is_large = y > -threshold
    unused = is_small | is_large
    safe = torch.where(unused, torch.ones_like(y), y)
    middle = safe + torch.log(-torch.expm1(-safe))
    small = torch.log(torch.where(is_small, y, torch.ones_like(y)))
    return torch.where(is_small, small, torch.where(is_large, y, middle))


def widest(tensor: Tensor) -> Tensor:
    """``tensor`` in float64, or in complex128 when it is complex (``.double()`` would drop the
    imaginary part): the dtype membership checks and references compute in."""
    return tensor.to(torch.complex128 if tensor.is_complex() else torch.float64)
