"""Norm balls and shells of slices (Keras's weight constraints): :class:`MaxNorm`, :class:`MinMaxNorm`.

Both map a slice radially: its direction is kept and its Euclidean norm :math:`s` is squashed into
the allowed range, :math:`\\rho(s) = \\text{low} + w \\tanh(s / w)` with :math:`w = \\text{high} -
\\text{low}`. A slice may span several dimensions (``dim=(1, 2, 3)``: each output channel of a conv
kernel, Keras's ``axis=[0, 1, 2]`` for its ``(kh, kw, in, out)`` layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_scalar, format_shape
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.base import Transform
from paramshape.transforms.registry import register
from paramshape.transforms.sets import slice_tolerance

__all__ = ["MaxNorm", "MinMaxNorm"]

Dims = int | Sequence[int]


def _check_dims(dim: object, owner: str) -> int | tuple[int, ...]:
    """``dim`` as an int or a non-empty tuple of distinct ints; :class:`SpecError` otherwise."""
    if isinstance(dim, (list, tuple)):
        if not dim or any(isinstance(d, bool) or not isinstance(d, int) for d in dim):
            raise SpecError(f"{owner}: dim must be an integer or a non-empty tuple of integers; got {dim!r}.")
        return tuple(dim)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise SpecError(f"{owner}: dim must be an integer or a non-empty tuple of integers; got {dim!r}.")
    return dim


def _check_radius(value: object, name: str, owner: str, *, positive: bool) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{owner}: {name} must be a number; got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise SpecError(f"{owner}: {name} must be a finite {kind} number; got {format_scalar(value)}.")
    return value


class _NormShell(constraints.Constraint):
    """Slices over the last ``event_dim`` dimensions whose norm lies in ``[low, high]``."""

    def __init__(self, low: float, high: float, event_dim: int) -> None:
        super().__init__()
        self.low, self.high, self.event_dim = low, high, event_dim

    def check(self, value: Tensor) -> Tensor:
        dims = tuple(range(value.dim() - self.event_dim, value.dim()))
        excess = _shell_excess(value, dims, self.low, self.high)
        return (excess == 0).reshape(value.shape[: value.dim() - self.event_dim])

    def __repr__(self) -> str:
        return f"NormShell(low={self.low}, high={self.high})"


def _shell_excess(y: Tensor, dims: tuple[int, ...], low: float, high: float) -> Tensor:
    """How far each slice's norm lies outside ``[low, high]``, beyond the slice tolerance relative to
    the bound; float64, ``keepdim`` over ``dims``; infinite for a slice with NaN or infinity."""
    size = _count(y.shape, dims)
    tolerance = slice_tolerance(y.dtype, size)
    norm = torch.linalg.vector_norm(y.double(), dim=dims, keepdim=True)
    above = norm - high * (1 + tolerance)
    below = low * (1 - tolerance) - norm
    excess = torch.maximum(above, below).clamp_min(0.0)
    finite = torch.isfinite(y).to(torch.uint8).amin(dims, keepdim=True) > 0
    return torch.where(finite, torch.nan_to_num(excess, nan=torch.inf), torch.inf)


class _RadialNorm(Transform):
    """Shared code: slices (over ``dim``, one or several dimensions) whose norm is squashed radially
    into ``[low, high]``."""

    element_noun = "slices"
    event_dim = 1  # per instance: the number of dims in ``dim``
    # Each slice on its own: checks and inverses run in blocks along a dimension outside ``dim``
    # (the columns for Keras's default dim=0).
    slices_independent = True

    def __init__(self, low: float, high: float, dim: Dims) -> None:
        super().__init__()
        owner = type(self).__name__
        self.dim = _check_dims(dim, owner)
        self.low = low
        self.high = high
        if not low < high:
            raise SpecError(
                f"{owner}: the lower norm {format_scalar(low)} must be below the upper one {format_scalar(high)}."
            )
        # Bijective only as a ball: a shell (low > 0) is not the image of R^K under a bijection.
        self.bijective = low == 0
        self.event_dim = len(self._dims)  # type: ignore[misc]

    @property
    def _dims(self) -> tuple[int, ...]:
        return self.dim if isinstance(self.dim, tuple) else (self.dim,)

    @property
    def _width(self) -> float:
        return self.high - self.low

    def event_dims(self, ndim: int) -> tuple[int, ...]:
        return tuple(sorted(d % ndim for d in self._dims)) if ndim else ()

    def check_shape(self, shape: torch.Size) -> None:
        ndim = len(shape)
        dims = self._dims
        if any(not -ndim <= d < ndim for d in dims):
            raise ShapeMismatchError(
                f"{self!r}: dim {self.dim} is out of range for a tensor of shape {format_shape(shape)}; "
                f"use dims in [{-ndim}, {ndim - 1}]."
            )
        normalised = [d % ndim for d in dims]
        if len(set(normalised)) != len(normalised):
            raise ShapeMismatchError(f"{self!r}: dim {self.dim} names a dimension twice.")
        if any(shape[d] == 0 for d in normalised):
            raise ShapeMismatchError(f"{self!r}: the tensor of shape {format_shape(shape)} has empty slices.")

    # ---------------------------------------------------------------- the map
    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        dims = self.event_dims(x.dim())
        # The slice divided by its (detached) largest magnitude: its norm is in [1, sqrt(K)], so the
        # squares neither overflow nor underflow, and the gradient does not depend on the scale.
        largest = work.detach().abs().amax(dims, keepdim=True)
        nonzero = largest > 0
        scale = torch.where(nonzero, largest, torch.ones_like(largest))
        # Double where: a zero slice never reaches the norm, so its gradient stays finite.
        scaled = torch.where(nonzero, work / scale, torch.ones_like(work))
        length = torch.linalg.vector_norm(scaled, dim=dims, keepdim=True)
        direction = scaled / length
        width = self._width
        u = (scale / width) * length  # ||x|| / w; may overflow to inf, where tanh is 1 and sech^2 is 0
        u = torch.where(nonzero, u, torch.zeros_like(u))
        radius = self.low + width * torch.tanh(u)
        if self.low > 0:
            # A zero slice has no direction: it takes the centre (1, ..., 1)/sqrt(K) at norm low.
            size = _count(x.shape, dims)
            centre = torch.full_like(work, 1 / math.sqrt(size))
            return (torch.where(nonzero, direction, centre) * radius).to(x.dtype)
        # A ball: near 0 the map is x (1 - u^2/3), so its Jacobian at 0 is the identity rather than the
        # zero a where() on the direction would give. Series below eps^(1/4), where its error is below eps.
        small = u < torch.finfo(work.dtype).eps ** 0.25
        near = work * (1 - u * u / 3)
        far = direction * radius
        return torch.where(small, near, far).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = y.to(compute_dtype(y.dtype))
        dims = self.event_dims(y.dim())
        norm = _norm(work, dims)
        width = self._width
        finfo = torch.finfo(work.dtype)
        # On the upper bound atanh is infinite: step to the largest fraction below 1. On the lower
        # bound of a shell the stored slice would be 0, which has no direction: keep half an ulp of
        # low (at least a normal number per entry), which the forward map rounds away.
        fraction = ((norm - self.low) / width).clamp(0.0, 1.0 - finfo.eps / 2)
        if self.low > 0:
            size = _count(y.shape, dims)
            floor = max(finfo.eps * self.low / 2, finfo.tiny * size) / width
            fraction = fraction.clamp_min(floor)
        stored_norm = width * torch.atanh(fraction)
        ratio = stored_norm / torch.where(norm > 0, norm, torch.ones_like(norm))
        return (work * torch.where(norm > 0, ratio, torch.ones_like(ratio))).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""For the ball (``low = 0``): :math:`\log \rho'(s) + (K - 1) \log(\rho(s) / s)`, the radial
        stretch times the tangential one, with :math:`u = s / w`:
        :math:`\log\operatorname{sech}^2 u + (K - 1) \log(\tanh u / u)`. One entry per slice."""
        if not self.bijective:
            raise NotImplementedError(self._no_jacobian_reason())
        work = x.to(compute_dtype(x.dtype))
        dims = self.event_dims(x.dim())
        size = _count(x.shape, dims)
        u = _norm(work, dims) / self._width
        # log sech^2 u = 2 (log 2 - u - softplus(-2u)), finite for any u.
        log_sech2 = 2 * (math.log(2.0) - u - torch.nn.functional.softplus(-2 * u))
        small = u < torch.finfo(work.dtype).eps ** 0.25
        safe = torch.where(small, torch.ones_like(u), u)
        # log(tanh u / u), with tanh u = (1 - e^{-2u}) / (1 + e^{-2u}); -u^2/3 below the threshold.
        log_ratio = torch.log(-torch.expm1(-2 * safe)) - torch.log1p(torch.exp(-2 * safe)) - torch.log(safe)
        log_ratio = torch.where(small, -u * u / 3, log_ratio)
        ldj = (log_sech2 + (size - 1) * log_ratio).squeeze(dims)
        # Far out (||x|| of 1e4 r) the log-det is about -2 ||x|| / r, below float16's range: it is
        # clamped to the dtype's lowest number, a density of 0 to that precision, rather than -inf.
        return ldj.clamp_min(torch.finfo(x.dtype).min).to(x.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value: a uniform direction per slice, with the norm :math:`\rho(s)` of a stored
        slice drawn from :math:`N(0, w^2 / K)` (so :math:`s \approx w` and the norm lies about three
        quarters of the way from ``low`` to ``high``, not crowded against ``high``)."""
        shape = torch.Size(shape)
        dims = self.event_dims(len(shape))
        noise = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        with torch.no_grad():
            return self.forward(noise * (self._width / math.sqrt(_count(shape, dims))))

    # ---------------------------------------------------------------- the set
    @property
    def codomain(self) -> constraints.Constraint:
        return _NormShell(self.low, self.high, len(self._dims))

    def _excess(self, y: Tensor) -> Tensor:
        return _shell_excess(y, self.event_dims(y.dim()), self.low, self.high)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        dims = self.event_dims(y.dim())
        where: list[int | slice] = list(index)
        for d in dims:
            where[d] = slice(None)
        piece = y.double()[tuple(where)]
        label = "[" + ", ".join(":" if i in dims else str(v) for i, v in enumerate(index)) + "]"
        if not bool(torch.isfinite(piece).all()):
            return f"the slice {label} holds a non-finite entry"
        norm = torch.linalg.vector_norm(piece).item()
        allowed = (
            f"at most {format_scalar(self.high)}"
            if self.low == 0
            else (f"between {format_scalar(self.low)} and {format_scalar(self.high)}")
        )
        rounded = torch.tensor(norm, dtype=torch.float64).to(y.dtype).item()  # the digits y's dtype holds
        return f"the slice {label} has norm {format_scalar(rounded, y.dtype)} ({allowed})"

    def project(self, y: Tensor) -> Tensor:
        r"""Keras's rule, exact: each slice scaled to norm :math:`\min(\max(s, \text{low}),
        \text{high})`; a zero slice of a shell becomes :math:`\text{low}\,(1, \dots, 1)/\sqrt{K}`."""
        dims = self.event_dims(y.dim())
        y64 = y.double()
        norm = torch.linalg.vector_norm(y64, dim=dims, keepdim=True)
        target = norm.clamp(self.low, self.high)
        scaled = y64 * (target / torch.where(norm > 0, norm, 1.0))
        if self.low > 0:
            size = _count(y.shape, dims)
            scaled = torch.where(norm == 0, self.low / math.sqrt(size), scaled)  # NaN stays NaN
        projected: Tensor = scaled.to(y.dtype)
        return projected

    def to_interior(self, y: Tensor) -> Tensor:
        dims = self.event_dims(y.dim())
        y64 = torch.where(torch.isfinite(y), y.double(), 0.0)
        norm = torch.linalg.vector_norm(y64, dim=dims, keepdim=True)
        margin = INTERIOR_FRACTION * self._width
        target = norm.clamp(self.low + margin if self.low > 0 else 0.0, self.high - margin)
        size = _count(y.shape, dims)
        direction = torch.where(norm > 0, y64 / torch.where(norm > 0, norm, 1.0), 1 / math.sqrt(size))
        interior: Tensor = (direction * target).to(y.dtype)
        return interior

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _count(shape: torch.Size, dims: tuple[int, ...]) -> int:
    """The number of entries of one slice over ``dims`` (a plain loop, which dynamo traces)."""
    size = 1
    for d in dims:
        size *= shape[d]
    return size


def _norm(work: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The Euclidean norm over ``dims`` (keepdim), computed from the slice divided by its largest
    magnitude so huge and tiny entries neither overflow nor underflow."""
    largest = work.detach().abs().amax(dims, keepdim=True)
    scale = torch.where(largest > 0, largest, torch.ones_like(largest))
    scaled = torch.where(largest > 0, work / scale, torch.ones_like(work))
    return torch.where(largest > 0, scale * torch.linalg.vector_norm(scaled, dim=dims, keepdim=True), 0.0)


@register("max_norm")
class MaxNorm(_RadialNorm):
    r"""Slices whose Euclidean norm is at most ``max_value`` (Keras's ``MaxNorm``): a norm ball per
    output unit, the classic companion of dropout (Srivastava et al., 2014).

    .. math::

        f(x) = \frac{x}{\lVert x \rVert}\, r \tanh\frac{\lVert x \rVert}{r}, \qquad
        f^{-1}(y) = \frac{y}{\lVert y \rVert}\, r \operatorname{artanh}\frac{\lVert y \rVert}{r}

    The direction of each slice is kept and its norm squashed smoothly into :math:`[0, r)`; near 0
    the map is the identity (:math:`f(x) \approx x (1 - \lVert x\rVert^2 / 3r^2)`), so small weights
    are barely changed. A bijection from :math:`\mathbb{R}^K` onto the open ball, with
    log-det-Jacobian :math:`\log\operatorname{sech}^2 u + (K - 1)\log(\tanh u / u)`,
    :math:`u = \lVert x \rVert / r`, per slice. The inverse of a value on the sphere of radius
    :math:`r` steps one ulp inside it. ``method="project"`` applies Keras's rule instead (after each
    optimizer step, slices longer than :math:`r` are scaled back to norm :math:`r`): :meth:`project`.

    Norms are computed from each slice divided by its largest magnitude, so entries of ``1e-30`` or
    ``1e30`` neither underflow nor overflow the squares.

    * Domain: :math:`\mathbb{R}^K` per slice, ``K`` the number of entries over ``dim``.
    * Codomain: :math:`\{y : \lVert y \rVert_2 \le r\}` per slice. Membership tests the closed ball
      with a relative tolerance of 4 ulps of the dtype plus ``2 K`` epsilons of the compute dtype
      (the rounding of a norm over ``K`` entries).

    Args:
        max_value: the radius :math:`r`, a finite positive number.
        dim: the dimension, or tuple of dimensions, that form one slice (default ``-1``: each row of
            a ``Linear`` weight, i.e. the weights into one output unit, Keras's ``axis=0`` for its
            ``(in, out)`` kernel). For a ``Conv2d`` weight ``(out, in, kh, kw)`` use
            ``dim=(1, 2, 3)``: one ball per output channel, as Keras's ``axis=[0, 1, 2]``.

    Raises:
        SpecError: ``max_value`` is not a finite positive number, or ``dim`` is not an integer or a
            tuple of integers.
        ShapeMismatchError: (from :func:`paramshape.constrain`) a ``dim`` is out of range or repeated.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> conv = ps.constrain(nn.Conv2d(3, 4, 3), "weight", ps.MaxNorm(2.0, dim=(1, 2, 3)))
        >>> bool((conv.weight.flatten(1).norm(dim=1) <= 2.0).all())
        True
        >>> ps.MaxNorm(1.0)(torch.tensor([300.0, 400.0]))
        tensor([0.6000, 0.8000])
    """

    def __init__(self, max_value: float = 2.0, dim: Dims = -1) -> None:
        super().__init__(0.0, _check_radius(max_value, "max_value", "MaxNorm", positive=True), dim)

    @property
    def max_value(self) -> float:
        """The radius of the ball."""
        return self.high

    def extra_repr(self) -> str:
        return f"{format_scalar(self.high)}, dim={self.dim}"


@register("min_max_norm")
class MinMaxNorm(_RadialNorm):
    r"""Slices whose Euclidean norm lies between ``min_value`` and ``max_value`` (Keras's
    ``MinMaxNorm``): a spherical shell per output unit.

    .. math::

        f(x) = \frac{x}{\lVert x \rVert} \Bigl(a + (b - a) \tanh\frac{\lVert x \rVert}{b - a}\Bigr),
        \qquad
        f^{-1}(y) = \frac{y}{\lVert y \rVert} (b - a) \operatorname{artanh}
        \frac{\lVert y \rVert - a}{b - a}

    with :math:`a` = ``min_value`` and :math:`b` = ``max_value``. The direction of each slice is kept
    and its norm mapped from :math:`[0, \infty)` onto :math:`[a, b)`. With :math:`a > 0` the map is
    **not bijective** (a shell has a hole; the zero slice, which has no direction, is sent to
    :math:`a (1, \dots, 1)/\sqrt{K}` with a zero gradient), so there is no log-det-Jacobian; with
    :math:`a = 0` it is :class:`MaxNorm`'s bijection. The inverse steps half an ulp inside either
    bound. ``method="project"`` applies Keras's rule (``rate=1``): each slice scaled to the nearest
    norm in :math:`[a, b]` (:meth:`project`). Keras's ``rate < 1`` (a partial step towards the shell)
    is not offered: it is not a set.

    * Domain: :math:`\mathbb{R}^K` per slice, ``K`` the number of entries over ``dim``.
    * Codomain: :math:`\{y : a \le \lVert y \rVert_2 \le b\}` per slice; membership with the relative
      tolerance of :class:`MaxNorm` on each bound.

    Args:
        min_value: :math:`a`, a finite non-negative number.
        max_value: :math:`b > a`, finite.
        dim: the dimension, or tuple of dimensions, that form one slice (as for :class:`MaxNorm`).

    Raises:
        SpecError: a bound is not a finite non-negative number, ``min_value >= max_value``, or
            ``dim`` is not an integer or a tuple of integers.
        ShapeMismatchError: (from :func:`paramshape.constrain`) a ``dim`` is out of range or repeated.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(5, 3), "weight", ps.MinMaxNorm(0.5, 1.0), init="sample")
        >>> norms = layer.weight.norm(dim=-1)
        >>> bool(((norms >= 0.5) & (norms <= 1.0)).all())
        True
        >>> ps.MinMaxNorm(1.0, 2.0).project(torch.tensor([[0.3, 0.4], [3.0, 4.0]]))
        tensor([[0.6000, 0.8000],
                [1.2000, 1.6000]])
    """

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, dim: Dims = -1) -> None:
        low = _check_radius(min_value, "min_value", "MinMaxNorm", positive=False)
        high = _check_radius(max_value, "max_value", "MinMaxNorm", positive=True)
        super().__init__(low, high, dim)

    @property
    def min_value(self) -> float:
        """The smallest allowed norm."""
        return self.low

    @property
    def max_value(self) -> float:
        """The largest allowed norm."""
        return self.high

    def extra_repr(self) -> str:
        return f"{format_scalar(self.low)}, {format_scalar(self.high)}, dim={self.dim}"
