"""Log-slopes (elementwise log-det-Jacobians) of the maps in ``_maps``, in stable forms.

Each is the log of the derivative of the smooth map; the floors and caps the maps apply at the ends
of the dtype's range (``positive`` never returns less than the smallest normal number) are rounding
guards, not part of the map, and are ignored here, so the result stays finite where the clamped map
is flat.

They use :func:`softplus` below rather than ``softplus``, which returns ``x`` itself above 20: an
error of up to ``e^{-20}``, a million float64 ulps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from paramshape.numerics.maps import DEFAULT_SOFTNESS, PositiveMethod, box_gain

__all__ = ["above_log_slope", "below_log_slope", "sigmoid_box_log_slope", "softplus", "to_dtype"]


def to_dtype(value: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast a log-det-Jacobian to ``dtype``, capped at its largest finite magnitude: a sum of
    thousands of log-slopes can exceed float16's 65504."""
    largest = torch.finfo(dtype).max
    return value.clamp(-largest, largest).to(dtype)


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)``, accurate to an ulp for every ``x`` in every dtype (``logaddexp(x, 0)``), with
    gradient ``sigmoid(x)``."""
    return torch.logaddexp(x, torch.zeros_like(x))


def sigmoid_box_log_slope(x: Tensor, width: Tensor, slope: float = 1.0) -> Tensor:
    """``log(w g sigmoid(z) sigmoid(-z)) = log(w) + log(g) - softplus(-z) - softplus(z)`` with
    ``g = 4 slope / w`` and ``z = g x`` (``log(w g)`` is ``log(4 slope)`` unless the gain was capped):
    no product of two sigmoids underflowing to 0, so it is finite (about ``-|z|``) for every finite x."""
    gain = box_gain(torch.zeros_like(width), width, slope)
    z = x * gain
    return torch.log(width) + torch.log(gain) - softplus(-z) - softplus(z)


def above_log_slope(x: Tensor, method: PositiveMethod, softness: float = DEFAULT_SOFTNESS) -> Tensor:
    """Log-derivative of ``low + c softplus(x / c)`` (``log sigmoid(x / c) = -softplus(-x / c)``) or of
    ``low + exp(x)`` (``x``)."""
    return x.clone() if method == "exp" else -softplus(-x / softness)


def below_log_slope(x: Tensor, method: PositiveMethod, softness: float = DEFAULT_SOFTNESS) -> Tensor:
    """Log-derivative of ``high - c softplus(-x / c)`` (``log sigmoid(-x / c) = -softplus(x / c)``) or
    of ``high - exp(-x)`` (``-x``)."""
    return -x if method == "exp" else -softplus(x / softness)
