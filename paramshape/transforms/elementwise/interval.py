"""Interval transforms: :class:`Box` (per-element bounds) and :class:`UnitInterval`."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.errors.report import format_index, format_scalar
from paramshape.fusion import handfused as _handfused
from paramshape.fusion.compiled import Fusable
from paramshape.numerics import maps as _maps
from paramshape.numerics import slopes as _slopes
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import INTERIOR_SLOPE, compute_dtype, interior_distance
from paramshape.transforms.elementwise.bounds import BoundedTransform, BoundLike, positive_setting
from paramshape.transforms.registry import register

__all__ = ["Box", "UnitInterval"]


def _box_forward(x: Tensor, low: Tensor, high: Tensor, layout: str, slope: float) -> Tensor:
    """Box's forward map as a pure function (the kernel paramshape.fusion compiles)."""
    work = compute_dtype(x.dtype)
    return _box_map(x.to(work), low.to(work), high.to(work), layout, slope, x.dtype).to(x.dtype)


@register("box")
class Box(BoundedTransform):
    r"""Box constraint: every element lies between its lower and upper bound.

    With the centre :math:`c = (l + h)/2`, the half-width :math:`r = (h - l)/2` and ``slope``
    :math:`a` (default 1):

    .. math::

        f(x) = c + r \tanh\Bigl(\frac{a x}{r}\Bigr) = l + (h - l)\,\sigma(g x),
        \quad g = \frac{4a}{h - l}
        \qquad
        f^{-1}(y) = \frac{\log(y - l) - \log(h - y)}{g}

    The slope at the centre (:math:`x = 0`) is :math:`a`: with the default 1 an optimizer step moves
    a value in the middle of the box by as much as it would move a plain parameter, whatever the
    width, so learning rates tuned without the constraint carry over (``Box(-0.01, 0.01)`` and
    ``Box(-100, 100)`` alike). The slope is :math:`a (1 - t^2)` at a fraction :math:`t` of the
    half-width from the centre: 0.75 at :math:`t = 0.5`, 0.19 at 0.9, below 1% of :math:`a` in the
    outer 0.25% of the width on each side (see :func:`~paramshape.saturation`). ``slope=(h - l)/4``
    gives the classic logistic :math:`l + (h - l)\sigma(x)` of ``torch.distributions.biject_to``.

    The map is computed from the nearer bound (:math:`l + (h - l)\sigma(gx)` for :math:`x < 0`,
    :math:`h - (h - l)\sigma(-gx)` otherwise), so values near either bound keep full precision, and
    the inverse takes both differences exactly (no ``logit((y - l) / (h - l))``, which loses about
    0.3 of unconstrained precision near ``h`` in float32).

    An infinite bound degrades to the one-sided map of :class:`GreaterThan` and :class:`LessThan`,
    :math:`l + s\operatorname{softplus}(a x / s)` when ``high`` is ``+inf`` and
    :math:`h - s\operatorname{softplus}(-a x / s)` when ``low`` is ``-inf`` (softness
    :math:`s = 0.25`), and :math:`a x` when both are; this holds per element, so bounds may mix
    finite and infinite entries.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(l, h)`; in floating point a value may round onto a bound, so membership
      (:meth:`contains`) is tested on :math:`[l, h]` with a tolerance of a few ulps.

    Args:
        low: lower bound; a number or a tensor that broadcasts against the constrained tensor
            (for example shape ``(out_features, 1)`` for one bound per row). ``-inf`` allowed.
        high: upper bound, likewise; ``+inf`` allowed. ``low < high`` must hold everywhere.
        slope: the map's slope at the centre of the box (and its largest slope on a one-sided
            element): how far the value moves per unit step of the stored tensor. Default 1.
        learnable: train the bounds with the model (finite bounds only). They are stored as two
            parameters, the centre :math:`c` and a spread :math:`\rho`, from which every read computes

            .. math::

                r = \operatorname{softplus}(\rho) + \varepsilon (1 + |c|), \qquad
                l = c - r, \qquad h = c + r

            (:math:`\varepsilon` the parameters' ``finfo.eps``; the floor has no gradient), so the
            value depends on :math:`c` and :math:`\rho` through the map above and ``l < h`` holds
            after any optimizer step that leaves them finite. Build the optimizer after
            :func:`~paramshape.constrain`; ``method="reparam"`` only (docs/transforms.md, "Learnable
            bounds").

    Raises:
        SpecError: a bound is NaN, ``low >= high`` somewhere, ``high - low`` overflows, or
            ``slope`` is not a positive finite number; with ``learnable=True``, a bound is infinite
            or the half-width is below :math:`\varepsilon (1 + |c|)`.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(4, 3)
        >>> _ = ps.constrain(layer, "weight", ps.Box(-1.0, 1.0))
        >>> bool(layer.weight.abs().max() <= 1)
        True
        >>> ps.Box(torch.zeros(3, 1), 2.0)
        Box(low=Tensor(shape=(3, 1)), high=2.0)
        >>> x = torch.zeros(1, requires_grad=True)  # the centre: unit slope, whatever the width
        >>> ps.Box(-0.01, 0.01)(x).backward(); x.grad
        tensor([1.])
        >>> box = ps.Box(-1.0, 1.0, learnable=True)  # bounds trained with the model
        >>> [name for name, _ in box.named_parameters()], box.high
        (['centre', 'spread'], tensor(1., grad_fn=<AddBackward0>))
    """

    low: Tensor
    high: Tensor
    bound_names = ("low", "high")
    fusable = Fusable(_box_forward, ("low", "high"), ("_layout", "slope"), eager=_handfused.sigmoid_box)
    flat_checks = True  # elementwise: many small tensors are checked in one pass
    _learnable_names = ("centre", "spread")

    def __init__(self, low: BoundLike, high: BoundLike, slope: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        self.slope = positive_setting(slope, "slope", type(self).__name__)
        self._set_bounds(low=low, high=high, learnable=learnable)

    def forward(self, x: Tensor) -> Tensor:
        if self.learnable:
            bounds = self._bounds()
            return _box_forward(x, bounds["low"], bounds["high"], self._layout, self.slope)
        return _box_forward(x, self.low, self.high, self._layout, self.slope)

    def _learned_bounds(self, store: dict[str, Tensor]) -> dict[str, Tensor]:
        centre, spread = store["centre"], store["spread"]
        half = torch.nn.functional.softplus(spread) + _half_width_floor(centre)
        return {"low": centre - half, "high": centre + half}

    def _learnable_store(self, bounds: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        low, high = bounds["low"], bounds["high"]
        low64, high64 = torch_typed.broadcast_tensors(low.double(), high.double())
        centre = (low64 + high64) / 2
        extra = (high64 - low64) / 2 - _half_width_floor(centre.to(dtype)).double()
        if not bool((extra > 0).all()):
            raise SpecError(
                f"Box(learnable=True) needs a half-width (high - low)/2 above eps (1 + |centre|) of "
                f"{dtype} everywhere (the least it can shrink to); widen the box or use a wider dtype."
            )
        spread = extra + torch.log(-torch.expm1(-extra))  # the inverse of softplus, in float64
        return {"centre": centre.to(dtype), "spread": spread.to(dtype)}

    def value_and_slope(self, x: Tensor, out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The value and slope in one pass of the hand-fused arithmetic for two-sided bounds (the
        forward's values bit for bit, at every size); autograd's otherwise."""
        if self.learnable or self._layout != "interval" or compute_dtype(x.dtype) != x.dtype:
            return super().value_and_slope(x, out)
        # A step-folded tensor calls this once per optimizer step: the constants derived from 0-d
        # bounds are the ones its reads keep, while the bound tensors are unchanged. (The bounds
        # read from the buffer table, moved only when elsewhere: a quarter of the call's time on a
        # small tensor went to the attribute lookups and moves.)
        buffers, device = self._buffers, x.device
        # A fixed Box registers both bounds as buffers (never None).
        low, high = cast("Tensor", buffers["low"]), cast("Tensor", buffers["high"])
        if low.device != device or high.device != device:
            low, high = low.to(device), high.to(device)
        constants = _handfused.constants_for(x, low, high, self.slope)
        if constants is None:
            return super().value_and_slope(x, out)
        return _handfused.sigmoid_box_value_and_slope(x.detach(), constants, out)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        low, high = self.low.to(work), self.high.to(work)
        return _box_inverse(y.to(work), low, high, self._layout, self.slope).to(y.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the box: on two-sided elements the map of a normal draw scaled by
        ``1/g``, so values spread over the box as the logistic of a standard normal (a unit draw
        through a narrow box's unit-slope map would land on its bounds); on one-sided elements the
        bound plus or minus ``softplus`` of a standard normal, as :meth:`GreaterThan.sample`."""
        noise = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        plain = self._plain_bounds()
        low, high = plain["low"].to(noise), plain["high"].to(noise)
        has_low, has_high = torch.isfinite(low), torch.isfinite(high)
        both = has_low & has_high
        gain = _maps.box_gain(torch.where(both, low, 0.0), torch.where(both, high, 1.0), self.slope)
        with torch.no_grad():
            two_sided = self.forward(torch.where(both, noise / gain, noise))
        distance = torch.nn.functional.softplus(noise).clamp_min(torch.finfo(noise.dtype).tiny)
        largest = torch.finfo(noise.dtype).max
        lower = (torch.where(has_low, low, 0.0) + distance).clamp(max=largest)
        upper = (torch.where(has_high, high, 0.0) - distance).clamp(min=-largest)
        one_sided = torch.where(has_low, lower, torch.where(has_high, upper, noise))
        return torch.where(both, two_sided, one_sided)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x)`, the same shape as ``x``:

        .. math::

            \log(4a) - \operatorname{softplus}(-gx) - \operatorname{softplus}(gx)

        for two-sided elements (no product of sigmoids that underflows, so finite for every finite
        ``x``), :math:`\log a - \operatorname{softplus}(-ax/s)` above a lower bound only,
        :math:`\log a - \operatorname{softplus}(ax/s)` below an upper bound only, and
        :math:`\log a` where both are infinite.
        """
        work = compute_dtype(x.dtype)
        low, high = self.low.to(work), self.high.to(work)
        return _box_log_slope(x.to(work), low, high, self._layout, self.slope).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        plain = self._plain_bounds()
        if self._layout == "lower":
            return torch_typed.greater_than(plain["low"])
        if self._layout == "upper":
            return torch_typed.less_than(plain["high"])
        return torch_typed.interval(plain["low"], plain["high"])

    def to_interior(self, y: Tensor) -> Tensor:
        r"""Clamp ``y`` to where the map's slope is ``INTERIOR_SLOPE`` (1/4) of its largest: on
        two-sided elements :math:`(1 - \sqrt{3/4})/2 \approx 6.7\%` of the width inside each bound
        (87% of the half-width from the centre), on one-sided ones :math:`s \log(4/3) \approx 0.072`
        from the bound. Values already there or further inside are unchanged."""
        plain = self._plain_bounds()
        low, high = plain["low"].double(), plain["high"].double()
        has_low, has_high = torch.isfinite(low), torch.isfinite(high)
        both = has_low & has_high
        width = torch.where(both, high - low, torch.inf)
        two_sided = width * ((1 - math.sqrt(1 - INTERIOR_SLOPE)) / 2)
        one_sided = torch.full_like(low, -_maps.DEFAULT_SOFTNESS * math.log1p(-INTERIOR_SLOPE))
        distance = torch.where(both, two_sided, one_sided)
        # Never past the midpoint, the only interior point left when the dtype resolves few values.
        margin_low = torch.minimum(interior_distance(y.dtype, distance, low), width / 2)
        margin_high = torch.minimum(interior_distance(y.dtype, distance, high), width / 2)
        largest = torch.finfo(y.dtype).max
        floor = torch.where(has_low, low + margin_low, -largest)
        ceiling = torch.where(has_high, high - margin_high, largest)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        return torch.clamp(start, floor, ceiling).to(y.dtype)

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto :math:`[l, h]` (the Euclidean projection onto the closed box, elementwise):
        :math:`P(y) = \min(\max(y, l), h)`; an infinite bound clamps nothing on its side."""
        bounds = self._checked_bounds()
        # maximum/minimum: the same values as clamp, which with tensor bounds runs ~3x slower on CPU.
        return torch.minimum(torch.maximum(y, bounds["low"].to(y.dtype)), bounds["high"].to(y.dtype))

    def clamp_bounds(self) -> tuple[Tensor | None, Tensor | None]:
        bounds = self._checked_bounds()
        return bounds["low"], bounds["high"]

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> str:
        return _classify(bounds["low"], bounds["high"], type(self).__name__)

    def peak_log_slope(self) -> float:
        r"""Log of the map's largest slope, :math:`\log a`: at the centre on two-sided elements, far
        from the bound on one-sided ones (used by :func:`~paramshape.saturation`)."""
        return math.log(self.slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.slope == 1.0 else f", slope={self.slope}")


@register("unit_interval")
class UnitInterval(Box):
    r"""The open unit interval, elementwise: :class:`Box` with ``low=0`` and ``high=1``.

    .. math::

        f(x) = \sigma(4 a x) = \tfrac12 + \tfrac12\tanh(2 a x), \qquad
        f^{-1}(y) = \frac{\log y - \log(1 - y)}{4a}

    with ``slope`` :math:`a` (default 1, the slope at :math:`x = 0`; ``slope=0.25`` is the logistic
    :math:`\sigma(x)`).

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(0, 1)` (membership tested on :math:`[0, 1]` within a few ulps).

    Example:
        >>> import torch, paramshape as ps
        >>> ps.UnitInterval()(torch.tensor([-1e4, 0.0, 1e4]))
        tensor([0.0000, 0.5000, 1.0000])
    """

    def __init__(self, slope: float = 1.0) -> None:
        super().__init__(0.0, 1.0, slope)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.unit_interval

    def extra_repr(self) -> str:
        return "" if self.slope == 1.0 else f"slope={self.slope}"


def _half_width_floor(centre: Tensor) -> Tensor:
    """The least half-width of a learnable Box, eps (1 + |c|) in the centre's dtype: at least an ulp
    of c, so that c - r < c < c + r after rounding, whatever the parameters (no gradient through it)."""
    return torch.finfo(centre.dtype).eps * (1 + centre.detach().abs())


def _box_map(x: Tensor, low: Tensor, high: Tensor, kind: str, slope: float, out_dtype: torch.dtype) -> Tensor:
    if kind == "interval":
        return _maps.sigmoid_box(x, low, high, slope)
    # One-sided and free elements: the unit-slope maps of x scaled by the slope.
    ax = x * slope if slope != 1.0 else x
    if kind == "lower":
        return _maps.above(ax, low, "softplus", out_dtype)
    if kind == "upper":
        return _maps.below(ax, high, "softplus", out_dtype)
    if kind == "real":
        return ax
    # Per-element mix of finite and infinite bounds: evaluate every branch on safe stand-in bounds
    # (so none produces inf or NaN, in value or gradient) and select.
    has_low, has_high = torch.isfinite(low), torch.isfinite(high)
    both = has_low & has_high
    safe_low = torch.where(has_low, low, 0.0)
    safe_high = torch.where(has_high, high, 0.0)
    two_sided = _maps.sigmoid_box(x, torch.where(both, low, 0.0), torch.where(both, high, 1.0), slope)
    lower = _maps.above(ax, safe_low, "softplus", out_dtype)
    upper = _maps.below(ax, safe_high, "softplus", out_dtype)
    return torch.where(both, two_sided, torch.where(has_low, lower, torch.where(has_high, upper, ax)))


def _box_log_slope(x: Tensor, low: Tensor, high: Tensor, kind: str, slope: float) -> Tensor:
    if kind == "interval":
        return _slopes.sigmoid_box_log_slope(x, high - low, slope)
    log_a, ax = math.log(slope), x * slope
    if kind == "lower":
        return _slopes.above_log_slope(ax, "softplus") + log_a
    if kind == "upper":
        return _slopes.below_log_slope(ax, "softplus") + log_a
    if kind == "real":
        return torch.full_like(x, log_a)
    has_low, has_high = torch.isfinite(low), torch.isfinite(high)
    both = has_low & has_high
    two_sided = _slopes.sigmoid_box_log_slope(x, torch.where(both, high - low, 1.0), slope)
    lower = _slopes.above_log_slope(ax, "softplus") + log_a
    upper = _slopes.below_log_slope(ax, "softplus") + log_a
    free = torch.full_like(x, log_a)
    return torch.where(both, two_sided, torch.where(has_low, lower, torch.where(has_high, upper, free)))


def _box_inverse(y: Tensor, low: Tensor, high: Tensor, kind: str, slope: float) -> Tensor:
    if kind == "interval":
        return _maps.sigmoid_box_inverse(y, low, high, slope)
    if kind == "lower":
        return _maps.above_inverse(y, low, "softplus") / slope
    if kind == "upper":
        return _maps.below_inverse(y, high, "softplus") / slope
    if kind == "real":
        return y / slope
    has_low, has_high = torch.isfinite(low), torch.isfinite(high)
    both = has_low & has_high
    two_sided = _maps.sigmoid_box_inverse(y, torch.where(both, low, 0.0), torch.where(both, high, 1.0), slope)
    lower = _maps.above_inverse(y, torch.where(has_low, low, 0.0), "softplus") / slope
    upper = _maps.below_inverse(y, torch.where(has_high, high, 0.0), "softplus") / slope
    return torch.where(both, two_sided, torch.where(has_low, lower, torch.where(has_high, upper, y / slope)))


def _classify(low: Tensor, high: Tensor, name: str) -> str:
    """Validate a pair of bounds and name the map they call for."""
    try:
        # Equal shapes (the usual case) need no broadcast: torch.broadcast_shapes runs a Python
        # reference implementation, milliseconds per call, once per tensor in constrain().
        shape = low.shape if low.shape == high.shape else torch_typed.broadcast_shapes(low.shape, high.shape)
    except RuntimeError:
        raise SpecError(
            f"{name}: 'low' of shape {tuple(low.shape)} and 'high' of shape {tuple(high.shape)} "
            "do not broadcast against each other."
        ) from None
    low_b, high_b = low.broadcast_to(shape), high.broadcast_to(shape)
    wrong_order = ~(low_b < high_b)
    if bool(wrong_order.any()):
        where = tuple(int(i) for i in wrong_order.nonzero()[0]) if shape else ()
        count = int(wrong_order.sum())
        raise SpecError(
            f"{name} needs low < high everywhere; {count} of {wrong_order.numel()} elements break "
            f"it, e.g. at {format_index(where)}: low={format_scalar(low_b[where].item())}, "
            f"high={format_scalar(high_b[where].item())}."
        )
    has_low, has_high = torch.isfinite(low), torch.isfinite(high)
    width_overflows = torch.isinf(high_b - low_b) & torch.isfinite(low_b) & torch.isfinite(high_b)
    if bool(width_overflows.any()):
        raise SpecError(
            f"{name}: high - low overflows {low.dtype} somewhere; use bounds closer together or a "
            "wider dtype."
        )
    if bool(has_low.all()) and bool(has_high.all()):
        return "interval"
    if bool(has_low.all()) and not bool(has_high.any()):
        return "lower"
    if not bool(has_low.any()) and bool(has_high.all()):
        return "upper"
    if not bool(has_low.any()) and not bool(has_high.any()):
        return "real"
    return "mixed"
