"""The elementwise maps behind the interval and one-sided transforms, as pure functions.

Every function takes tensors already in the compute dtype (see ``_numerics.compute_dtype``) and
``out_dtype``, the dtype the caller casts the result to, because the overflow and underflow limits
that matter are those of the stored dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from paramshape.numerics.precision import softplus_inverse, step_inside

__all__ = [
    "DEFAULT_SOFTNESS",
    "PositiveMethod",
    "above",
    "above_inverse",
    "below",
    "below_inverse",
    "box_gain",
    "positive",
    "positive_inverse",
    "sigmoid_box",
    "sigmoid_box_inverse",
]

PositiveMethod = Literal["softplus", "exp"]

#: The default ``softness`` of the one-sided softplus maps (:class:`~paramshape.Positive`,
#: ``GreaterThan``, ``LessThan``, and ``Box`` with one infinite bound): the map is
#: ``low + c softplus(x / c)`` with ``c = 0.25``, whose slope ``1 - exp(-d / c)`` at distance ``d`` from
#: the bound is 0.98 at ``d = 1``, 0.86 at 0.5 and 0.33 at 0.1 (``c = 1``, the plain softplus, gives
#: 0.63, 0.39 and 0.10). Chosen with benchmarks/training_quality.py (docs/strategies.md).
DEFAULT_SOFTNESS = 0.25

#: Where ``softplus(x)`` may be replaced by ``x``: ``log1p(e^-x)`` is below half an ulp of ``x`` in
#: float64 from 37 on. torch's default threshold, 20, is an error of 2e-9 in float64.
_SOFTPLUS_THRESHOLD = 40.0


def box_gain(low: Tensor, high: Tensor, slope: float) -> Tensor:
    """``4 * slope / (high - low)``: the factor that gives :func:`sigmoid_box` the slope ``slope`` at
    the centre (the logistic's slope there is 1/4). Capped at the dtype's largest number, so a box a
    few subnormals wide still gets a finite gain."""
    width = high - low
    return (4.0 * slope / width).clamp(max=torch.finfo(width.dtype).max)


def sigmoid_box(x: Tensor, low: Tensor, high: Tensor, slope: float = 1.0) -> Tensor:
    """``low + (high - low) * sigmoid(g x)`` with ``g = 4 slope / (high - low)`` (slope ``slope`` at
    ``x = 0``, the box's centre), each side computed from its nearer bound.

    It equals ``c + r tanh(slope x / r)`` (centre ``c``, half-width ``r``). ``sigmoid(-|z|)`` is at most
    1/2, so ``low + w * s`` (for z < 0) and ``high - w * s`` (for z >= 0) never subtract two nearly
    equal numbers: the result is accurate to an ulp of the nearer bound, where the one-sided formula
    loses everything near ``high``. ``-|z|`` is written as a ``where`` so its gradient at 0 is -1, not
    ``abs``'s subgradient 0 (which would freeze a value at the midpoint).
    """
    width = high - low
    z = x * box_gain(low, high, slope)
    negative = z < 0
    s = torch.sigmoid(torch.where(negative, z, -z))
    return torch.where(negative, low + width * s, high - width * s)


def sigmoid_box_inverse(y: Tensor, low: Tensor, high: Tensor, slope: float = 1.0) -> Tensor:
    """``(log(y - low) - log(high - y)) / g``: exact differences near either bound (Sterbenz), so no
    precision is lost near ``high`` as with ``logit((y - low) / (high - low))``. A value on a bound is
    moved one ulp inside, so the result stays finite."""
    y = torch.clamp(y, step_inside(low, math.inf), step_inside(high, -math.inf))
    return (torch.log(y - low) - torch.log(high - y)) / box_gain(low, high, slope)


def positive(
    x: Tensor, method: PositiveMethod, out_dtype: torch.dtype, softness: float = DEFAULT_SOFTNESS
) -> Tensor:
    """``c softplus(x / c)`` (``c = softness``) or ``exp(x)``, kept within the normal, finite numbers
    of ``out_dtype``.

    The floor at the smallest normal number keeps the value strictly positive after the cast (a
    log or a division downstream stays finite); ``exp``'s argument is capped so it cannot overflow.
    """
    finfo = torch.finfo(out_dtype)
    if method == "exp":
        # Cap a few ulps below log(max) so rounding inside exp cannot reach inf.
        y = torch.exp(x.clamp(max=math.log(finfo.max) * (1 - 8 * finfo.eps)))
    else:
        # softplus(x, beta) is log(1 + e^{beta x}) / beta, and x itself past beta x = threshold.
        y = F.softplus(x, beta=1.0 / softness, threshold=_SOFTPLUS_THRESHOLD)
    return y.clamp(min=finfo.tiny, max=finfo.max)


def positive_inverse(y: Tensor, method: PositiveMethod, softness: float = DEFAULT_SOFTNESS) -> Tensor:
    """Inverse of :func:`positive` for ``y >= 0``; values below the smallest normal are raised to it.

    ``c softplus^{-1}(y / c)`` equals ``y`` to working precision once ``y / c`` is past
    ``softplus_inverse``'s upper threshold; that branch returns ``y`` itself, so ``y / c`` never
    overflows for ``c < 1`` (a double where feeds the other branch a harmless ``c``)."""
    y = y.clamp(min=torch.finfo(y.dtype).tiny)
    if method == "exp":
        return torch.log(y)
    large = y > -softness * (math.log(torch.finfo(y.dtype).eps) + 2.0)
    safe = torch.where(large, torch.full_like(y, softness), y)
    return torch.where(large, y, softness * softplus_inverse(safe / softness))


def above(
    x: Tensor,
    low: Tensor,
    method: PositiveMethod,
    out_dtype: torch.dtype,
    softness: float = DEFAULT_SOFTNESS,
) -> Tensor:
    """``low + c softplus(x / c)`` (or ``low + exp(x)``): the half-line above ``low``, increasing in ``x``."""
    return (low + positive(x, method, out_dtype, softness)).clamp(max=torch.finfo(out_dtype).max)


def above_inverse(
    y: Tensor, low: Tensor, method: PositiveMethod, softness: float = DEFAULT_SOFTNESS
) -> Tensor:
    """Inverse of :func:`above`; a value on ``low`` maps to a finite, very negative number."""
    return positive_inverse(y - low, method, softness)


def below(
    x: Tensor,
    high: Tensor,
    method: PositiveMethod,
    out_dtype: torch.dtype,
    softness: float = DEFAULT_SOFTNESS,
) -> Tensor:
    """``high - c softplus(-x / c)`` (or ``high - exp(-x)``): the half-line below ``high``, increasing
    in ``x``."""
    return (high - positive(-x, method, out_dtype, softness)).clamp(min=-torch.finfo(out_dtype).max)


def below_inverse(
    y: Tensor, high: Tensor, method: PositiveMethod, softness: float = DEFAULT_SOFTNESS
) -> Tensor:
    """Inverse of :func:`below`; a value on ``high`` maps to a finite, very large number."""
    return -positive_inverse(high - y, method, softness)
