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
    "PositiveMethod",
    "above",
    "above_inverse",
    "below",
    "below_inverse",
    "positive",
    "positive_inverse",
    "sigmoid_box",
    "sigmoid_box_inverse",
]

PositiveMethod = Literal["softplus", "exp"]

#: Where ``softplus(x)`` may be replaced by ``x``: ``log1p(e^-x)`` is below half an ulp of ``x`` in
#: float64 from 37 on. torch's default threshold, 20, is an error of 2e-9 in float64.
_SOFTPLUS_THRESHOLD = 40.0


def sigmoid_box(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``low + (high - low) * sigmoid(x)``, each side computed from its nearer bound.

    ``sigmoid(-|x|)`` is at most 1/2, so ``low + w * s`` (for x < 0) and ``high - w * s`` (for x >= 0)
    never subtract two nearly equal numbers: the result is accurate to an ulp of the nearer bound,
    where the one-sided formula loses everything near ``high``. ``-|x|`` is written as a ``where`` so
    its gradient at 0 is -1, not ``abs``'s subgradient 0 (which would freeze a value at the midpoint).
    """
    width = high - low
    negative = x < 0
    s = torch.sigmoid(torch.where(negative, x, -x))
    return torch.where(negative, low + width * s, high - width * s)


def sigmoid_box_inverse(y: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``log(y - low) - log(high - y)``: exact differences near either bound (Sterbenz), so no
    precision is lost near ``high`` as with ``logit((y - low) / (high - low))``. A value on a bound is
    moved one ulp inside, so the result stays finite."""
    y = torch.clamp(y, step_inside(low, math.inf), step_inside(high, -math.inf))
    return torch.log(y - low) - torch.log(high - y)


def positive(x: Tensor, method: PositiveMethod, out_dtype: torch.dtype) -> Tensor:
    """``softplus(x)`` or ``exp(x)``, kept within the normal, finite numbers of ``out_dtype``.

    The floor at the smallest normal number keeps the value strictly positive after the cast (a
    log or a division downstream stays finite); ``exp``'s argument is capped so it cannot overflow.
    """
    finfo = torch.finfo(out_dtype)
    if method == "exp":
        # Cap a few ulps below log(max) so rounding inside exp cannot reach inf.
        y = torch.exp(x.clamp(max=math.log(finfo.max) * (1 - 8 * finfo.eps)))
    else:
        y = F.softplus(x, threshold=_SOFTPLUS_THRESHOLD)
    return y.clamp(min=finfo.tiny, max=finfo.max)


def positive_inverse(y: Tensor, method: PositiveMethod) -> Tensor:
    """Inverse of :func:`positive` for ``y >= 0``; values below the smallest normal are raised to it."""
    y = y.clamp(min=torch.finfo(y.dtype).tiny)
    return torch.log(y) if method == "exp" else softplus_inverse(y)


def above(x: Tensor, low: Tensor, method: PositiveMethod, out_dtype: torch.dtype) -> Tensor:
    """``low + softplus(x)`` (or ``low + exp(x)``): the half-line above ``low``, increasing in ``x``."""
    return (low + positive(x, method, out_dtype)).clamp(max=torch.finfo(out_dtype).max)


def above_inverse(y: Tensor, low: Tensor, method: PositiveMethod) -> Tensor:
    """Inverse of :func:`above`; a value on ``low`` maps to a finite, very negative number."""
    return positive_inverse(y - low, method)


def below(x: Tensor, high: Tensor, method: PositiveMethod, out_dtype: torch.dtype) -> Tensor:
    """``high - softplus(-x)`` (or ``high - exp(-x)``): the half-line below ``high``, increasing in ``x``."""
    return (high - positive(-x, method, out_dtype)).clamp(min=-torch.finfo(out_dtype).max)


def below_inverse(y: Tensor, high: Tensor, method: PositiveMethod) -> Tensor:
    """Inverse of :func:`below`; a value on ``high`` maps to a finite, very large number."""
    return -positive_inverse(high - y, method)
