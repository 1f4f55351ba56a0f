"""One-sided transforms: :class:`Positive`, :class:`GreaterThan` and :class:`LessThan`."""

from __future__ import annotations

import math
from typing import ClassVar, get_args

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.fusion.compiled import Fusable
from paramshape.numerics import maps as _maps
from paramshape.numerics import slopes as _slopes
from paramshape.numerics import torch_typed
from paramshape.numerics.maps import DEFAULT_SOFTNESS, PositiveMethod
from paramshape.numerics.precision import INTERIOR_SLOPE, compute_dtype, interior_distance
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import (
    BoundedTransform,
    BoundLike,
    describe_bound_violation,
    elementwise_excess,
    ensure_finite,
    positive_setting,
)
from paramshape.transforms.registry import register

__all__ = ["GreaterThan", "LessThan", "Positive"]

_METHODS: tuple[str, ...] = get_args(PositiveMethod)


# The forward maps as pure functions (the kernels paramshape.fusion compiles). Eager softplus is
# two passes already: compiling pays from about 1M elements (benchmarks/run.py --sections threshold).
_AUTO_MIN = 1 << 20


def _positive_forward(x: Tensor, method: PositiveMethod, softness: float) -> Tensor:
    return _maps.positive(x.to(compute_dtype(x.dtype)), method, x.dtype, softness).to(x.dtype)


def _above_forward(x: Tensor, low: Tensor, method: PositiveMethod, softness: float) -> Tensor:
    work = compute_dtype(x.dtype)
    return _maps.above(x.to(work), low.to(work), method, x.dtype, softness).to(x.dtype)


def _below_forward(x: Tensor, high: Tensor, method: PositiveMethod, softness: float) -> Tensor:
    work = compute_dtype(x.dtype)
    return _maps.below(x.to(work), high.to(work), method, x.dtype, softness).to(x.dtype)


def _interior_distance(method: PositiveMethod, softness: float) -> float:
    """Distance from the bound at which the slope is INTERIOR_SLOPE of the largest (softplus:
    ``1 - exp(-d / s) = 1/4`` at ``d = s log(4/3)``) or of the slope at distance 1 (exp, whose slope
    is the distance)."""
    return INTERIOR_SLOPE if method == "exp" else -softness * math.log1p(-INTERIOR_SLOPE)


@register("positive")
class Positive(Transform):
    r"""Strictly positive values, elementwise.

    .. math::

        f(x) = \max\bigl(s \operatorname{softplus}(x / s),\ t\bigr), \qquad
        f^{-1}(y) = s \log\bigl(\operatorname{expm1}(y / s)\bigr)

    with softness :math:`s` (default 0.25); with ``method="exp"``: :math:`f(x) = e^{x}` and
    :math:`f^{-1}(y) = \log y`. Softplus is the default because it grows linearly: a step on the
    stored value changes the value by about as much (the slope :math:`\sigma(x/s) = 1 - e^{-y/s}`
    is 0.98 at :math:`y = 1` and tends to 1), so learning rates carry over, where ``exp``
    multiplies the value. Near 0 the map turns multiplicative (:math:`y \approx s e^{x/s}`): the
    value approaches 0 but never reaches it, so a solution with exact zeros calls for
    ``method="project"`` (see :doc:`strategies`). ``softness=1`` is the plain softplus.

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
        softness: the softplus's bend :math:`s`, in the value's units (default 0.25): the slope is
            :math:`1 - e^{-d/s}` at distance :math:`d` from 0. Only with ``method="softplus"``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(3, 2)
        >>> _ = ps.constrain(layer, "bias", ps.Positive(), init="raw")
        >>> bool((layer.bias > 0).all())
        True
    """

    fusable = Fusable(_positive_forward, (), ("method", "softness"), auto_min_elements=_AUTO_MIN)
    flat_checks = True  # elementwise: many small tensors are checked in one pass

    def __init__(self, method: PositiveMethod = "softplus", softness: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.method: PositiveMethod = _check_method(method, name)
        self.softness = _check_softness(softness, self.method, name)

    def forward(self, x: Tensor) -> Tensor:
        return _positive_forward(x, self.method, self.softness)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        return _maps.positive_inverse(y.to(work), self.method, self.softness).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x)`: :math:`-\operatorname{softplus}(-x/s)`
        (:math:`x` with ``method="exp"``), finite for every finite ``x``; same shape as ``x``."""
        work = compute_dtype(x.dtype)
        return _slopes.above_log_slope(x.to(work), self.method, self.softness).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.positive

    def _excess(self, y: Tensor) -> Tensor:
        return elementwise_excess(y, y.new_zeros(()), None)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_bound_violation(y, index, y.new_zeros(()), None)

    def to_interior(self, y: Tensor) -> Tensor:
        r"""Raise ``y`` to where the slope is 1/4 of its largest: :math:`s \log(4/3) \approx 0.072`
        (``exp``: 0.25, a quarter of the slope at 1); larger values are unchanged."""
        zero = y.new_zeros((), dtype=torch.float64)
        floor = interior_distance(y.dtype, zero + _interior_distance(self.method, self.softness), zero)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        # Two clamps: torch's stubs type clamp's bounds as both tensors or both numbers.
        return start.clamp(min=floor).clamp(max=torch.finfo(y.dtype).max).to(y.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the set: ``softplus(N(0, 1))``, the bound (0) plus ``softplus`` of a standard normal draw."""
        return _typical_distance(shape, dtype, device, generator)

    def peak_log_slope(self) -> float:
        """Log of the reference slope :func:`~paramshape.saturation` compares with: 0, the softplus's
        largest slope 1 (with ``exp``, the slope one unit from the bound)."""
        return 0.0

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto the closed half-line :math:`[0, \infty)`: :math:`P(y) = \max(y, 0)`."""
        return y.clamp_min(0.0)

    def clamp_bounds(self) -> tuple[Tensor | None, Tensor | None]:
        return torch.zeros(()), None

    def extra_repr(self) -> str:
        return _describe_method(self.method, self.softness).lstrip(", ")


class _OneSided(BoundedTransform):
    """The one implementation of :class:`GreaterThan` (``_side = 1``: values above the bound ``low``)
    and :class:`LessThan` (``_side = -1``: below the bound ``high``).

    The two sets are mirror images: :class:`LessThan` is :class:`GreaterThan` with the value and the
    bound negated, so everything outside the maps themselves (whose formulas live in
    :mod:`paramshape.numerics.maps` per side) is written once here, with the side's sign applied
    where the side matters. A negation is exact in floating point, so both sides compute what their
    own copies did, to the bit.
    """

    #: 1: the set lies above the bound (``low``); -1: below it (``high``).
    _side: ClassVar[int]

    def __init__(
        self, bound: BoundLike, method: PositiveMethod, softness: float | None, learnable: bool
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.method: PositiveMethod = _check_method(method, owner)
        self.softness = _check_softness(softness, self.method, owner)
        self._set_bounds(learnable=learnable, **{self.bound_names[0]: bound})

    def _bound(self) -> Tensor:
        """The bound as a plain value, without gradients."""
        return self._plain_bounds()[self.bound_names[0]]

    @property
    def codomain(self) -> constraints.Constraint:
        """torch's ``constraints.greater_than(low)`` or ``constraints.less_than(high)``."""
        if self._side > 0:
            return torch_typed.greater_than(self._bound())
        return torch_typed.less_than(self._bound())

    def to_interior(self, y: Tensor) -> Tensor:
        r"""Move ``y`` at least :math:`s \log(4/3)` inside the bound (``exp``: 0.25), where the slope
        is 1/4 of its largest: raise it to :math:`l + s \log(4/3)` (:class:`GreaterThan`) or lower
        it to :math:`h - s \log(4/3)` (:class:`LessThan`); values further inside are unchanged."""
        bound = self._bound().double()
        distance = torch.full_like(bound, _interior_distance(self.method, self.softness))
        limit = bound + self._side * interior_distance(y.dtype, distance, bound)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        largest = torch.finfo(y.dtype).max
        if self._side > 0:
            return torch.maximum(start, limit).clamp(max=largest).to(y.dtype)
        return torch.minimum(start, limit).clamp(min=-largest).to(y.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the set: the bound plus (:class:`GreaterThan`) or minus
        (:class:`LessThan`) ``softplus`` of a standard normal draw."""
        distance = _typical_distance(shape, dtype, device, generator)
        value = self._bound().to(distance) + self._side * distance
        largest = torch.finfo(distance.dtype).max
        return value.clamp(max=largest) if self._side > 0 else value.clamp(min=-largest)

    def peak_log_slope(self) -> float:
        """Log of the reference slope :func:`~paramshape.saturation` compares with: 0, the softplus's
        largest slope 1 (with ``exp``, the slope one unit from the bound)."""
        return 0.0

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto the closed half-line: :math:`P(y) = \max(y, l)` onto :math:`[l, \infty)`
        (:class:`GreaterThan`), :math:`P(y) = \min(y, h)` onto :math:`(-\infty, h]`
        (:class:`LessThan`)."""
        bound = self._checked_bounds()[self.bound_names[0]].to(y.dtype)
        # clamp's values; clamp with a tensor bound is slower than maximum/minimum
        return torch.maximum(y, bound) if self._side > 0 else torch.minimum(y, bound)

    def clamp_bounds(self) -> tuple[Tensor | None, Tensor | None]:
        bound = self._checked_bounds()[self.bound_names[0]]
        return (bound, None) if self._side > 0 else (None, bound)

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> None:
        name = self.bound_names[0]
        ensure_finite(bounds[name], name, type(self).__name__, _INFINITE_ADVICE)

    def extra_repr(self) -> str:
        return super().extra_repr() + _describe_method(self.method, self.softness)


@register("greater_than")
class GreaterThan(_OneSided):
    r"""Values above a lower bound, elementwise.

    .. math::

        f(x) = l + s \operatorname{softplus}(x / s), \qquad
        f^{-1}(y) = s \log\bigl(\operatorname{expm1}((y - l) / s)\bigr)

    with softness :math:`s` (default 0.25; ``method="exp"``: :math:`l + e^{x}` and
    :math:`\log(y - l)`). The slope :math:`1 - e^{-(y - l)/s}` is 0.98 one unit above the bound and
    tends to 1 (a step on the stored value moves the value by as much, so learning rates carry over);
    near the bound the map turns multiplicative. The inverse is the thresholded softplus inverse of
    :class:`Positive`, finite for every value at or above ``low``.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(l, \infty)`; in floating point :math:`l + \operatorname{softplus}(x)` rounds
      to :math:`l` for very negative :math:`x`, so membership is tested on :math:`[l, \infty)`.

    Args:
        low: finite lower bound, a number or a tensor that broadcasts against the constrained tensor.
            For per-element infinite bounds use :class:`Box` with ``high=inf``.
        method: ``"softplus"`` (default) or ``"exp"``.
        softness: the softplus's bend :math:`s` in the value's units (default 0.25); only with
            ``method="softplus"``.
        learnable: train the floor with the model: ``low`` becomes a parameter, on which the value
            depends through :math:`f` (:math:`\partial f / \partial l = 1`); every finite value is
            a valid floor. Build the optimizer after :func:`~paramshape.constrain`.

    Example:
        >>> import torch, paramshape as ps
        >>> ps.GreaterThan(0.5, learnable=True).low
        Parameter containing:
        tensor(0.5000, requires_grad=True)
        >>> t = ps.GreaterThan(0.5)
        >>> bool((t(torch.tensor([-1e4, 0.0, 1e4])) >= 0.5).all())
        True
    """

    low: Tensor
    _side = 1
    bound_names = ("low",)
    fusable = Fusable(_above_forward, ("low",), ("method", "softness"), auto_min_elements=_AUTO_MIN)
    flat_checks = True  # elementwise: many small tensors are checked in one pass
    _learnable_names = ("low",)

    def __init__(
        self,
        low: BoundLike,
        method: PositiveMethod = "softplus",
        softness: float | None = None,
        learnable: bool = False,
    ) -> None:
        super().__init__(low, method, softness, learnable)

    def forward(self, x: Tensor) -> Tensor:
        return _above_forward(x, self.low, self.method, self.softness)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        return _maps.above_inverse(y.to(work), self.low.to(work), self.method, self.softness).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x) = -\operatorname{softplus}(-x/s)` (:math:`x` with
        ``method="exp"``); the bound does not enter. Same shape as ``x``."""
        work = compute_dtype(x.dtype)
        return _slopes.above_log_slope(x.to(work), self.method, self.softness).to(x.dtype)


@register("less_than")
class LessThan(_OneSided):
    r"""Values below an upper bound, elementwise; increasing in the unconstrained value.

    .. math::

        f(x) = h - s \operatorname{softplus}(-x / s), \qquad
        f^{-1}(y) = -s \log\bigl(\operatorname{expm1}((h - y) / s)\bigr)

    with softness :math:`s` (default 0.25; ``method="exp"``: :math:`h - e^{-x}` and
    :math:`-\log(h - y)`): the mirror image of :class:`GreaterThan`, slope
    :math:`1 - e^{-(h - y)/s}`.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(-\infty, h)`; membership is tested on :math:`(-\infty, h]`.

    Args:
        high: finite upper bound, a number or a tensor that broadcasts against the constrained
            tensor. For per-element infinite bounds use :class:`Box` with ``low=-inf``.
        method: ``"softplus"`` (default) or ``"exp"``.
        softness: the softplus's bend :math:`s` in the value's units (default 0.25); only with
            ``method="softplus"``.
        learnable: train the ceiling with the model: ``high`` becomes a parameter
            (:math:`\partial f / \partial h = 1`); every finite value is valid. Build the
            optimizer after :func:`~paramshape.constrain`.

    Example:
        >>> import torch, paramshape as ps
        >>> t = ps.LessThan(2.0)
        >>> bool((t(torch.tensor([-1e4, 0.0, 1e4])) <= 2.0).all())
        True
    """

    high: Tensor
    _side = -1
    bound_names = ("high",)
    fusable = Fusable(_below_forward, ("high",), ("method", "softness"), auto_min_elements=_AUTO_MIN)
    flat_checks = True  # elementwise: many small tensors are checked in one pass
    _learnable_names = ("high",)

    def __init__(
        self,
        high: BoundLike,
        method: PositiveMethod = "softplus",
        softness: float | None = None,
        learnable: bool = False,
    ) -> None:
        super().__init__(high, method, softness, learnable)

    def forward(self, x: Tensor) -> Tensor:
        return _below_forward(x, self.high, self.method, self.softness)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        return _maps.below_inverse(y.to(work), self.high.to(work), self.method, self.softness).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x) = -\operatorname{softplus}(x/s)` (:math:`-x` with
        ``method="exp"``). Same shape as ``x``."""
        work = compute_dtype(x.dtype)
        return _slopes.below_log_slope(x.to(work), self.method, self.softness).to(x.dtype)


_INFINITE_ADVICE = "one-sided bounds must be finite (Box accepts per-element infinite bounds)."


def _check_method(method: str, owner: str) -> PositiveMethod:
    if method not in _METHODS:
        raise SpecError(f"{owner}: method must be one of {list(_METHODS)}; got {method!r}.")
    return method  # type: ignore[return-value]  # one of PositiveMethod's values, checked above


def _typical_distance(
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """``softplus(N(0, 1))``: typical distances from the bound, mostly between 0.05 and 3, that
    :meth:`sample` uses for every softness (the unit-slope map of a standard normal would put many
    draws within 1e-6 of the bound)."""
    noise = torch.randn(shape, dtype=dtype, device=device, generator=generator)
    return torch.nn.functional.softplus(noise).clamp_min(torch.finfo(noise.dtype).tiny)


def _check_softness(softness: object, method: PositiveMethod, owner: str) -> float:
    if softness is None:
        return DEFAULT_SOFTNESS
    if method == "exp":
        raise SpecError(f"{owner}: softness applies to method='softplus' only; got method='exp'.")
    return positive_setting(softness, "softness", owner)


def _describe_method(method: PositiveMethod, softness: float) -> str:
    if method == "exp":
        return ", method='exp'"
    return "" if softness == DEFAULT_SOFTNESS else f", softness={softness}"
