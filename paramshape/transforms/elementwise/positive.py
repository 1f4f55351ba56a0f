"""One-sided transforms: :class:`Positive`, :class:`GreaterThan` and :class:`LessThan`."""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.fusion.compiled import Fusable
from paramshape.numerics import maps as _maps
from paramshape.numerics import slopes as _slopes
from paramshape.numerics.maps import PositiveMethod
from paramshape.numerics.precision import compute_dtype, interior_margin
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import (
    BoundedTransform,
    BoundLike,
    describe_bound_violation,
    elementwise_excess,
    ensure_finite,
)
from paramshape.transforms.registry import register

__all__ = ["GreaterThan", "LessThan", "Positive"]

_METHODS: tuple[str, ...] = get_args(PositiveMethod)


# The forward maps as pure functions (the kernels paramshape.fusion compiles). Eager softplus is
# two passes already: compiling pays from about 1M elements (benchmarks/run.py --sections threshold).
_AUTO_MIN = 1 << 20


def _positive_forward(x: Tensor, method: PositiveMethod) -> Tensor:
    return _maps.positive(x.to(compute_dtype(x.dtype)), method, x.dtype).to(x.dtype)


def _above_forward(x: Tensor, low: Tensor, method: PositiveMethod) -> Tensor:
    work = compute_dtype(x.dtype)
    return _maps.above(x.to(work), low.to(work), method, x.dtype).to(x.dtype)


def _below_forward(x: Tensor, high: Tensor, method: PositiveMethod) -> Tensor:
    work = compute_dtype(x.dtype)
    return _maps.below(x.to(work), high.to(work), method, x.dtype).to(x.dtype)


@register("positive")
class Positive(Transform):
    r"""Strictly positive values, elementwise.

    .. math::

        f(x) = \max(\operatorname{softplus}(x), t), \qquad
        f^{-1}(y) = \log(\operatorname{expm1}(y))

    with ``method="exp"``: :math:`f(x) = e^{x}` and :math:`f^{-1}(y) = \log y`. Softplus is the
    default because it grows linearly: a large step on the unconstrained value changes the value by
    about as much, where ``exp`` multiplies it.

    :math:`t` is the smallest normal number of the tensor's dtype, so the value never rounds to 0
    (a ``log`` or a division downstream stays finite). The inverse is finite and accurate from
    :math:`t` to the dtype's largest number: it switches between :math:`\log y`,
    :math:`y + \log(-\operatorname{expm1}(-y))` and :math:`y` at thresholds set by the dtype's
    epsilon, without ever overflowing ``expm1``.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(0, \infty)`; a value of exactly 0 is accepted by :meth:`right_inverse` and
      stored as the unconstrained value of :math:`t`.

    Args:
        method: ``"softplus"`` (default) or ``"exp"``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(3, 2)
        >>> _ = ps.constrain(layer, "bias", ps.Positive(), init="raw")
        >>> bool((layer.bias > 0).all())
        True
    """

    fusable = Fusable(_positive_forward, (), ("method",), auto_min_elements=_AUTO_MIN)

    def __init__(self, method: PositiveMethod = "softplus") -> None:
        super().__init__()
        self.method: PositiveMethod = _check_method(method, type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        return _positive_forward(x, self.method)

    def inverse(self, y: Tensor) -> Tensor:
        return _maps.positive_inverse(y.to(compute_dtype(y.dtype)), self.method).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x)`: :math:`-\operatorname{softplus}(-x)`
        (:math:`x` with ``method="exp"``), finite for every finite ``x``; same shape as ``x``."""
        return _slopes.above_log_slope(x.to(compute_dtype(x.dtype)), self.method).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.positive

    def _excess(self, y: Tensor) -> Tensor:
        return elementwise_excess(y, y.new_zeros(()), None)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_bound_violation(y, index, y.new_zeros(()), None)

    def to_interior(self, y: Tensor) -> Tensor:
        floor = interior_margin(
            y.dtype, torch.ones((), dtype=torch.float64), y.new_zeros((), dtype=torch.float64)
        )
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        return start.clamp(min=floor, max=torch.finfo(y.dtype).max).to(y.dtype)

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto the closed half-line :math:`[0, \infty)`: :math:`P(y) = \max(y, 0)`."""
        return y.clamp_min(0.0)

    def extra_repr(self) -> str:
        return "" if self.method == "softplus" else f"method={self.method!r}"


@register("greater_than")
class GreaterThan(BoundedTransform):
    r"""Values above a lower bound, elementwise.

    .. math::

        f(x) = l + \operatorname{softplus}(x), \qquad f^{-1}(y) = \log(\operatorname{expm1}(y - l))

    (``method="exp"``: :math:`l + e^{x}` and :math:`\log(y - l)`). The inverse is the thresholded
    softplus inverse of :class:`Positive`, finite for every value at or above ``low``.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(l, \infty)`; in floating point :math:`l + \operatorname{softplus}(x)` rounds
      to :math:`l` for very negative :math:`x`, so membership is tested on :math:`[l, \infty)`.

    Args:
        low: finite lower bound, a number or a tensor that broadcasts against the constrained tensor.
            For per-element infinite bounds use :class:`Box` with ``high=inf``.
        method: ``"softplus"`` (default) or ``"exp"``.

    Example:
        >>> import torch, paramshape as ps
        >>> t = ps.GreaterThan(0.5)
        >>> bool((t(torch.tensor([-1e4, 0.0, 1e4])) >= 0.5).all())
        True
    """

    low: Tensor
    bound_names = ("low",)
    fusable = Fusable(_above_forward, ("low",), ("method",), auto_min_elements=_AUTO_MIN)

    def __init__(self, low: BoundLike, method: PositiveMethod = "softplus") -> None:
        super().__init__()
        self.method: PositiveMethod = _check_method(method, type(self).__name__)
        self._set_bounds(low=low)

    def forward(self, x: Tensor) -> Tensor:
        return _above_forward(x, self.low, self.method)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        return _maps.above_inverse(y.to(work), self.low.to(work), self.method).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x) = -\operatorname{softplus}(-x)` (:math:`x` with
        ``method="exp"``); the bound does not enter. Same shape as ``x``."""
        return _slopes.above_log_slope(x.to(compute_dtype(x.dtype)), self.method).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.greater_than(self.low)

    def to_interior(self, y: Tensor) -> Tensor:
        low = self.low.double()
        floor = low + interior_margin(y.dtype, low.abs().clamp_min(1.0), low)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        return torch.maximum(start, floor).clamp(max=torch.finfo(y.dtype).max).to(y.dtype)

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto the closed half-line :math:`[l, \infty)`: :math:`P(y) = \max(y, l)`."""
        return torch.maximum(y, self.low.to(y.dtype))  # clamp's values; clamp with a tensor is slower

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> None:
        ensure_finite(bounds["low"], "low", type(self).__name__, _INFINITE_ADVICE)

    def extra_repr(self) -> str:
        method = "" if self.method == "softplus" else f", method={self.method!r}"
        return super().extra_repr() + method


@register("less_than")
class LessThan(BoundedTransform):
    r"""Values below an upper bound, elementwise; increasing in the unconstrained value.

    .. math::

        f(x) = h - \operatorname{softplus}(-x), \qquad f^{-1}(y) = -\log(\operatorname{expm1}(h - y))

    (``method="exp"``: :math:`h - e^{-x}` and :math:`-\log(h - y)`).

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(-\infty, h)`; membership is tested on :math:`(-\infty, h]`.

    Args:
        high: finite upper bound, a number or a tensor that broadcasts against the constrained
            tensor. For per-element infinite bounds use :class:`Box` with ``low=-inf``.
        method: ``"softplus"`` (default) or ``"exp"``.

    Example:
        >>> import torch, paramshape as ps
        >>> t = ps.LessThan(2.0)
        >>> bool((t(torch.tensor([-1e4, 0.0, 1e4])) <= 2.0).all())
        True
    """

    high: Tensor
    bound_names = ("high",)
    fusable = Fusable(_below_forward, ("high",), ("method",), auto_min_elements=_AUTO_MIN)

    def __init__(self, high: BoundLike, method: PositiveMethod = "softplus") -> None:
        super().__init__()
        self.method: PositiveMethod = _check_method(method, type(self).__name__)
        self._set_bounds(high=high)

    def forward(self, x: Tensor) -> Tensor:
        return _below_forward(x, self.high, self.method)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        return _maps.below_inverse(y.to(work), self.high.to(work), self.method).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x) = -\operatorname{softplus}(x)` (:math:`-x` with
        ``method="exp"``). Same shape as ``x``."""
        return _slopes.below_log_slope(x.to(compute_dtype(x.dtype)), self.method).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.less_than(self.high)

    def to_interior(self, y: Tensor) -> Tensor:
        high = self.high.double()
        ceiling = high - interior_margin(y.dtype, high.abs().clamp_min(1.0), high)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        return torch.minimum(start, ceiling).clamp(min=-torch.finfo(y.dtype).max).to(y.dtype)

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto the closed half-line :math:`(-\infty, h]`: :math:`P(y) = \min(y, h)`."""
        return torch.minimum(y, self.high.to(y.dtype))  # clamp's values; clamp with a tensor is slower

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> None:
        ensure_finite(bounds["high"], "high", type(self).__name__, _INFINITE_ADVICE)

    def extra_repr(self) -> str:
        method = "" if self.method == "softplus" else f", method={self.method!r}"
        return super().extra_repr() + method


_INFINITE_ADVICE = "one-sided bounds must be finite (Box accepts per-element infinite bounds)."


def _check_method(method: str, owner: str) -> PositiveMethod:
    if method not in _METHODS:
        raise SpecError(f"{owner}: method must be one of {list(_METHODS)}; got {method!r}.")
    return method  # type: ignore[return-value]
