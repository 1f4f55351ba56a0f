"""A box that is the identity inside: :class:`SoftClip`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.fusion.compiled import Fusable
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import (
    INTERIOR_SLOPE,
    compute_dtype,
    interior_distance,
    softplus_inverse,
    step_inside,
)
from paramshape.numerics.slopes import softplus, to_dtype
from paramshape.transforms.elementwise.bounds import BoundedTransform, BoundLike, positive_setting
from paramshape.transforms.elementwise.interval import _classify
from paramshape.transforms.registry import register

__all__ = ["SoftClip"]

#: Default hinge width, as a fraction of ``high - low``.
DEFAULT_SOFTNESS = 0.02


def _soft_clip_forward(x: Tensor, low: Tensor, high: Tensor, softness: float) -> Tensor:
    """SoftClip's forward map as a pure function (the kernel paramshape.fusion compiles)."""
    work = compute_dtype(x.dtype)
    low, high = low.to(work), high.to(work)
    width = high - low
    u = 1.0 / softness
    total = _softplus(u)
    s = softplus((x.to(work) - low) / (softness * width))
    # softplus(u) - softplus(u - s) cancels for small s; there it equals
    # log1p(sigmoid(u - s) * expm1(s)) exactly. Double where: expm1 never sees a large s.
    small = s < 1
    s_small = torch.where(small, s, torch.zeros_like(s))
    gap_small = torch.log1p(torch.sigmoid(u - s_small) * torch.expm1(s_small))
    gap = torch.where(small, gap_small, total - softplus(u - s))
    above_low = width * gap / total
    below_high = width * softplus(u - s) / total
    y = torch.where(s < u / 2, low + above_low, high - below_high)
    return y.to(x.dtype)


@register("soft_clip")
class SoftClip(BoundedTransform):
    r"""A box whose map is the identity in the middle and bends smoothly into each bound.

    With :math:`w = h - l`, the hinge width :math:`c w` (``softness`` :math:`= c`),
    :math:`u = 1/c` and :math:`S = \operatorname{softplus}(u)`:

    .. math::

        s = \operatorname{softplus}\Bigl(\frac{x - l}{c w}\Bigr), \qquad
        f(x) = l + w\,\frac{S - \operatorname{softplus}(u - s)}{S}

    The inner softplus is a hinge at ``low`` (:math:`c w s \approx \max(x - l, 0)`), the outer one a
    hinge at ``high``, and dividing by :math:`S` makes the image exactly :math:`(l, h)` (a plain
    composition of two hinges, as in TFP's ``SoftClip``, overshoots ``low`` slightly). The slope is

    .. math::

        f'(x) = \frac{\sigma\bigl(\frac{x - l}{c w}\bigr)\, \sigma(u - s)}{c\,S}

    which is :math:`1 - 3\cdot 10^{-11}` at the midpoint with the default ``softness=0.02``, at
    least 0.999 on the central 72% of the box, 0.99 on the central 82% and 0.9 on the central 91%:
    inside, a step on the stored value moves the value by as much, so learning rates and weight decay
    keep their meaning. The map is infinitely differentiable and strictly increasing; at a bound
    itself (:math:`x = l`) the value is about :math:`1.4\,c w` inside it.

    The stored value is (nearly) the value itself, not a centred coordinate, so :meth:`sample`
    draws ``x`` around the middle of the box, :math:`(l + h)/2 + (w/8)\,\varepsilon`, instead of
    applying the map to a standard normal draw (which, for a box far from 0, would land on a bound).

    The inverse has a closed form. With :math:`r = (y - l) S / w` near ``low``:
    :math:`s = r - \log\bigl(1 - e^{-u} \operatorname{expm1}(r)\bigr)`; near ``high``:
    :math:`s = u - \operatorname{softplus}^{-1}\bigl((h - y) S / w\bigr)`; then
    :math:`x = l + c w \operatorname{softplus}^{-1}(s)`. Each side is computed from the distance to
    its own bound, so values near either bound keep full precision (as in :class:`Box`), and a value
    on a bound is moved one ulp inside first.

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`(l, h)`; values may round onto a bound, so membership is tested on
      :math:`[l, h]` within 4 ulps.

    Args:
        low: finite lower bound, a number or a tensor that broadcasts against the constrained tensor.
        high: finite upper bound, likewise; ``low < high`` everywhere.
        softness: width of each hinge as a fraction of ``high - low`` (default 0.02). Smaller is
            closer to a hard clip (wider identity region, sharper bends); larger is smoother.

    Raises:
        SpecError: a bound is NaN or infinite, ``low >= high`` somewhere, or ``softness`` is not a
            positive finite number.

    Example:
        >>> import torch, paramshape as ps
        >>> clip = ps.SoftClip(-1.0, 1.0)
        >>> clip(torch.tensor([-0.5, 0.0, 0.5]))  # the identity inside
        tensor([-0.5000,  0.0000,  0.5000])
        >>> clip(torch.tensor([-100.0, 100.0]))
        tensor([-1.,  1.])
    """

    low: Tensor
    high: Tensor
    bound_names = ("low", "high")
    # Eager, its boolean selects dominate: compiling pays from 262,144 elements on (benchmarks/run.py).
    fusable = Fusable(_soft_clip_forward, ("low", "high"), ("softness",), auto_min_elements=1 << 18)
    flat_checks = True  # elementwise: many small tensors are checked in one pass

    def __init__(self, low: BoundLike, high: BoundLike, softness: float = DEFAULT_SOFTNESS) -> None:
        super().__init__()
        self.softness = positive_setting(softness, "softness", type(self).__name__)
        self._set_bounds(low=low, high=high)

    def forward(self, x: Tensor) -> Tensor:
        return _soft_clip_forward(x, self.low, self.high, self.softness)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        low, high = self.low.to(work), self.high.to(work)
        width = high - low
        u = 1.0 / self.softness
        total = _softplus(u)
        inside = torch.clamp(y.to(work), step_inside(low, math.inf), step_inside(high, -math.inf))
        near_low = (inside - low) < (high - inside)
        # Each branch is fed a harmless value where it is not selected (double where).
        r = torch.where(near_low, (inside - low) * total / width, torch.ones_like(inside))
        v = torch.where(near_low, torch.ones_like(inside), (high - inside) * total / width)
        # e^{-u} expm1(r), without overflowing expm1 for a large r.
        decay = math.exp(-u)
        q = torch.where(r < 1, torch.expm1(torch.where(r < 1, r, 0.0)) * decay, torch.exp(r - u) - decay)
        s_low = r - torch.log1p(-q)
        s_high = u - softplus_inverse(v)
        s = torch.where(near_low, s_low, s_high)
        return (low + self.softness * width * softplus_inverse(s)).to(y.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the box: the map of ``(low + high) / 2 + (high - low) / 8 * noise``, which
        lies in the identity region but for one draw in about 16000."""
        noise = torch.randn(shape, dtype=torch.float64, device=device, generator=generator)
        low, high = self.low.double().to(noise.device), self.high.double().to(noise.device)
        x = (low + high) / 2 + (high - low) / 8 * noise
        with torch.no_grad():
            return self.forward(x.to(dtype or torch.get_default_dtype()))

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log f'(x) = -\operatorname{softplus}(-z) - \operatorname{softplus}(s - u)
        - \log(c S)` with :math:`z = (x - l)/(c w)`: finite for every finite ``x``; same shape as ``x``."""
        work = compute_dtype(x.dtype)
        low, high = self.low.to(work), self.high.to(work)
        u = 1.0 / self.softness
        total = _softplus(u)
        z = (x.to(work) - low) / (self.softness * (high - low))
        s = softplus(z)
        return to_dtype(-softplus(-z) - softplus(s - u) - math.log(self.softness * total), x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return torch_typed.interval(self.low, self.high)

    def project(self, y: Tensor) -> Tensor:
        r"""Clamp onto :math:`[l, h]`, the Euclidean projection onto the closed box."""
        self._check_bounds_unchanged()
        # maximum/minimum: the same values as clamp, which with tensor bounds runs ~3x slower on CPU.
        return torch.minimum(torch.maximum(y, self.low.to(y.dtype)), self.high.to(y.dtype))

    def clamp_bounds(self) -> tuple[Tensor | None, Tensor | None]:
        self._check_bounds_unchanged()
        return self.low, self.high

    def to_interior(self, y: Tensor) -> Tensor:
        r"""Clamp ``y`` to where the slope is 1/4 of its largest: :math:`w \log(4/3) / S` inside
        each bound (about :math:`0.29\,c w`, 0.6% of the width with the default softness), where
        :math:`\sigma(u - s) = 1/4`. Values further inside are unchanged."""
        low, high = self.low.double(), self.high.double()
        width = high - low
        distance = width * (-math.log1p(-INTERIOR_SLOPE) / _softplus(1.0 / self.softness))
        margin_low = torch.minimum(interior_distance(y.dtype, distance, low), width / 2)
        margin_high = torch.minimum(interior_distance(y.dtype, distance, high), width / 2)
        start = torch.where(torch.isfinite(y), y.double(), 0.0)
        return torch.clamp(start, low + margin_low, high - margin_high).to(y.dtype)

    def peak_log_slope(self) -> float:
        r"""Log of the map's largest slope, 0: it is :math:`1 - 3\cdot 10^{-11}` at the midpoint with
        the default softness (used by :func:`~paramshape.saturation`)."""
        return 0.0

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> None:
        layout = _classify(bounds["low"], bounds["high"], type(self).__name__)
        if layout != "interval":
            raise SpecError(
                f"{type(self).__name__} needs finite bounds; for an infinite bound use Box, GreaterThan "
                "or LessThan (or Affine for no bound)."
            )

    def extra_repr(self) -> str:
        softness = "" if self.softness == DEFAULT_SOFTNESS else f", softness={self.softness}"
        return super().extra_repr() + softness


def _softplus(value: float) -> float:
    """``log(1 + e^value)`` for a Python float, without overflow."""
    return max(value, 0.0) + math.log1p(math.exp(-abs(value)))
