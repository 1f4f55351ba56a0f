"""Increasing vectors: :class:`Ordered` and :class:`PositiveOrdered`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors.report import format_scalar
from paramshape.numerics.precision import compute_dtype, interior_margin, softplus_inverse
from paramshape.numerics.slopes import softplus, to_dtype
from paramshape.transforms import sets as _constraints
from paramshape.transforms.registry import register
from paramshape.transforms.vector.base import VectorTransform

__all__ = ["Ordered", "PositiveOrdered"]


class _Increasing(VectorTransform):
    """Shared code: a first entry, then positive increments ``softplus(x_k)`` summed along ``dim``."""

    #: Whether the first entry is positive (``softplus(x_0)``) rather than free (``x_0``).
    positive_start = False

    def forward(self, x: Tensor) -> Tensor:
        work = self._last(x.to(compute_dtype(x.dtype)))
        finfo = torch.finfo(x.dtype)
        first = work[..., :1]
        if self.positive_start:
            first = softplus(first).clamp_min(finfo.tiny)
        steps = softplus(work[..., 1:]).clamp_min(finfo.tiny)
        # Increments are at least the smallest normal number, but adding one to a large entry rounds
        # to that entry: values can tie in floating point, never decrease. The clamp keeps the cast
        # to a narrow dtype finite and, being monotone, keeps the order.
        values = torch.cumsum(torch.cat([first, steps], -1), -1)
        return self._back(values.clamp(-finfo.max, finfo.max)).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = self._last(y.to(compute_dtype(y.dtype)))
        tiny = torch.finfo(work.dtype).tiny
        first = work[..., :1]
        if self.positive_start:
            first = softplus_inverse(first.clamp_min(tiny))
        # Ties (and drops within the membership tolerance) are read as the smallest increment, so
        # the stored value stays finite.
        steps = softplus_inverse(torch.diff(work, dim=-1).clamp_min(tiny))
        return self._back(torch.cat([first, steps], -1)).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The Jacobian is triangular with diagonal :math:`1, \sigma(x_1), \dots, \sigma(x_{K-1})`
        (:math:`\sigma(x_0)` first for :class:`PositiveOrdered`), so the result is
        :math:`-\sum_k \operatorname{softplus}(-x_k)` over those entries, finite for every finite
        ``x``. Shape: ``x``'s without ``dim``."""
        work = self._last(x.to(compute_dtype(x.dtype)))
        slopes = work if self.positive_start else work[..., 1:]
        return to_dtype((-softplus(-slopes)).sum(-1), x.dtype)

    def _excess(self, y: Tensor) -> Tensor:
        return _constraints.ordered_excess(y, self.dim, positive=self.positive_start)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        row, label = self._slice_at(y, index)
        if self.positive_start and row[0] < 0:
            return f"the slice {label} starts at {format_scalar(row[0].item())}, below 0"
        drops = row[:-1] - row[1:]
        position = int(torch.argmax(drops))
        return (
            f"the slice {label} decreases from {format_scalar(row[position].item())} at position "
            f"{position} to {format_scalar(row[position + 1].item())}"
        )

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), y.double(), 0.0).movedim(self.dim, -1)
        largest = torch.finfo(y.dtype).max / 4
        finite = finite.clamp(-largest, largest)
        if self.positive_start:
            floor = interior_margin(y.dtype, torch.ones((), dtype=torch.float64), finite.new_zeros(()))
            finite = finite.clamp_min(floor)
        # Sorting gives the nearest non-decreasing vector with the same entries; then every
        # increment is raised to a thousandth of the slice's spread (at least 8 ulps), so the
        # softplus inverse of each increment sits where its slope is alive.
        ordered, _ = torch.sort(finite, dim=-1)
        spread = (ordered[..., -1:] - ordered[..., :1]).clamp_min(1.0)
        gap = interior_margin(y.dtype, spread, ordered.abs().amax(-1, keepdim=True))
        steps = torch.diff(ordered, dim=-1).clamp_min(gap)
        rebuilt = torch.cumsum(torch.cat([ordered[..., :1], steps], -1), -1)
        return rebuilt.clamp(max=torch.finfo(y.dtype).max).movedim(-1, self.dim).to(y.dtype)


@register("ordered")
class Ordered(_Increasing):
    r"""Slices along ``dim`` whose entries increase (cut points, ordered thresholds).

    .. math::

        f(x)_0 = x_0, \quad f(x)_k = f(x)_{k-1} + \operatorname{softplus}(x_k); \qquad
        f^{-1}(y)_0 = y_0, \quad f^{-1}(y)_k = \log\bigl(\operatorname{expm1}(y_k - y_{k-1})\bigr)

    The first entry is free; each later one adds a positive increment. Softplus increments (rather
    than ``exp``, as in Stan and Pyro) keep a large step on the stored value from changing the gaps
    exponentially. The inverse reads a tie (or a rounding-level drop) as the smallest normal
    increment, so it is finite for values with equal entries, and uses the thresholded softplus
    inverse of :class:`Positive`.

    * Domain: :math:`\mathbb{R}^K` along ``dim``.
    * Codomain: :math:`\{y : y_0 < y_1 < \dots < y_{K-1}\}` along ``dim``. In floating point a tiny
      increment added to a large entry rounds to a tie, so membership is non-decreasing order
      within 4 ulps of the entries compared.

    Args:
        dim: the dimension along which entries increase (default: the last one).

    Example:
        >>> import torch, paramshape as ps
        >>> cuts = ps.Ordered()(torch.tensor([-1.0, 0.0, 2.0]))
        >>> bool((cuts[1:] > cuts[:-1]).all())
        True
        >>> ps.Ordered().inverse(torch.tensor([0.5, 0.5, 1.0])).isfinite().all()  # a tie
        tensor(True)
    """

    @property
    def codomain(self) -> constraints.Constraint:
        return _constraints.ordered_vector


@register("positive_ordered")
class PositiveOrdered(_Increasing):
    r"""Slices along ``dim`` of positive, increasing entries (ordered scales or rates).

    .. math::

        f(x)_0 = \operatorname{softplus}(x_0), \quad f(x)_k = f(x)_{k-1} + \operatorname{softplus}(x_k);
        \qquad f^{-1}(y)_k = \log\bigl(\operatorname{expm1}(y_k - y_{k-1})\bigr), \; y_{-1} = 0

    :class:`Ordered` with a positive first entry (floored at the smallest normal number of the
    dtype, as :class:`Positive` does).

    * Domain: :math:`\mathbb{R}^K` along ``dim``.
    * Codomain: :math:`\{y : 0 < y_0 < \dots < y_{K-1}\}` along ``dim``; membership is tested with
      non-decreasing order and :math:`y_0 \ge 0`, each within 4 ulps.

    Args:
        dim: the dimension along which entries increase (default: the last one).

    Example:
        >>> import torch, paramshape as ps
        >>> rates = ps.PositiveOrdered()(torch.tensor([-30.0, 0.0, 1.0]))
        >>> bool(rates[0] > 0) and bool((rates[1:] > rates[:-1]).all())
        True
    """

    positive_start = True

    @property
    def codomain(self) -> constraints.Constraint:
        return _constraints.positive_ordered_vector
