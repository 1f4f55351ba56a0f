"""Vectors that sum to zero: :class:`SumToZero`, and the orthonormal (Helmert) basis it and the
bijective simplex are built on."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors.report import format_scalar
from paramshape.numerics.precision import compute_dtype
from paramshape.transforms import sets as _constraints
from paramshape.transforms.registry import register
from paramshape.transforms.vector.base import VectorTransform

__all__ = ["SumToZero", "helmert", "helmert_inverse"]


def _weights(count: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``j`` and ``1 / sqrt(j (j + 1))`` for ``j = 1 .. count``, in ``like``'s dtype and device."""
    j = torch.arange(1, count + 1, dtype=like.dtype, device=like.device)
    return j, torch.rsqrt(j * (j + 1))


def helmert(x: Tensor) -> Tensor:
    r"""Map ``(..., K - 1)`` coordinates to ``(..., K)`` vectors summing to zero, in :math:`O(K)`.

    The columns of the basis are :math:`v_j = (1, \dots, 1, -j, 0, \dots, 0) / \sqrt{j (j + 1)}`
    (``j`` ones), orthonormal and orthogonal to the all-ones vector, so

    .. math::

        z_p = \sum_{j > p} \frac{x_j}{\sqrt{j (j + 1)}} - \frac{p\, x_p}{\sqrt{p (p + 1)}}

    is one reverse cumulative sum. The result is re-centred (its mean, zero up to rounding, is
    subtracted), which keeps the sum at rounding level of the entries however long the slice is
    and changes nothing that :func:`helmert_inverse` sees.
    """
    j, c = _weights(x.shape[-1], x)
    w = x * c
    tails = torch.flip(torch.cumsum(torch.flip(w, (-1,)), -1), (-1,))
    zeros = torch.zeros_like(x[..., :1])
    z = torch.cat([tails, zeros], -1) + torch.cat([zeros, -j * w], -1)
    return z - z.mean(-1, keepdim=True)


def helmert_inverse(z: Tensor) -> Tensor:
    r"""The coordinates of ``(..., K)`` vectors in the basis of :func:`helmert`: ``(..., K - 1)``.

    .. math::

        x_j = \frac{\sum_{p < j} z_p - j\, z_j}{\sqrt{j (j + 1)}}

    A component along the all-ones vector is ignored (the map is the orthogonal projection onto the
    sum-to-zero hyperplane followed by the change of basis).
    """
    j, c = _weights(z.shape[-1] - 1, z)
    prefix = torch.cumsum(z, -1)[..., :-1]
    return c * (prefix - j * z[..., 1:])


@register("sum_to_zero")
class SumToZero(VectorTransform):
    r"""Slices along ``dim`` whose entries sum to zero (for example effects identified up to a constant).

    .. math::

        f(x) = V x, \qquad f^{-1}(y) = V^\top y

    where the ``K - 1`` columns of :math:`V \in \mathbb{R}^{K \times (K-1)}` are the orthonormal
    Helmert vectors :math:`(1, \dots, 1, -j, 0, \dots, 0) / \sqrt{j (j + 1)}` (see
    :func:`paramshape.sumtozero.helmert`), applied in :math:`O(K)` with cumulative sums. Because
    :math:`V` is orthonormal, independent standard normal coordinates give every entry of the value
    the same variance :math:`(K - 1) / K`: no entry is special, unlike pinning the last entry to
    minus the sum of the others.

    **The stored tensor has ``K - 1`` entries along ``dim``** where the value has ``K``;
    :func:`paramshape.constrain` handles the difference (``init="raw"`` is refused, since the current
    value cannot serve as the stored tensor).

    The log-det-Jacobian is the constant :math:`-\tfrac12 \log K`: the density it converts is with
    respect to the first ``K - 1`` entries of the value (the last one is minus their sum), as for the
    bijective :class:`Simplex`. With respect to the surface measure of the hyperplane it would be 0,
    the map being an isometry.

    * Domain: :math:`\mathbb{R}^{K-1}` along ``dim``.
    * Codomain: :math:`\{y \in \mathbb{R}^K : \sum_i y_i = 0\}` along ``dim``; membership tolerates
      a sum of a few ulps plus ``2 K`` compute-dtype epsilons times :math:`\sum_i |y_i|`.

    Args:
        dim: the dimension along which entries sum to zero (default: the last one).

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> effects = nn.Module()
        >>> effects.value = nn.Parameter(torch.tensor([[1.0, -2.0, 1.0]]))
        >>> _ = ps.constrain(effects, "value", ps.SumToZero())
        >>> effects.parametrizations.value.original.shape  # K - 1 = 2 stored numbers per row
        torch.Size([1, 2])
        >>> torch.allclose(effects.value, torch.tensor([[1.0, -2.0, 1.0]]), atol=1e-6)
        True
    """

    size_change = -1
    min_size = 2
    size_reason = "A slice of one entry that sums to zero can only be 0: there is nothing to constrain."

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        return self._back(_fit(helmert(self._last(work)), x.dtype)).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = y.to(compute_dtype(y.dtype))
        return self._back(helmert_inverse(self._last(work))).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The constant :math:`-\tfrac12 \log K` per slice (``K`` = the value's length along
        ``dim``), with respect to the first ``K - 1`` entries of the value; shape: ``x``'s without
        ``dim``."""
        size = x.shape[self.dim] + 1
        batch = self._last(x)[..., 0].shape
        return torch.full(batch, -0.5 * math.log(size), dtype=x.dtype, device=x.device)

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        """The first ``K - 1`` entries of each slice (the last one is minus their sum)."""
        return self._last(y)[..., :-1]

    @property
    def codomain(self) -> constraints.Constraint:
        return _constraints.sum_to_zero

    def _excess(self, y: Tensor) -> Tensor:
        return _constraints.sum_to_zero_excess(y, self.dim)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        row, label = self._slice_at(y, index)
        return f"the slice {label} sums to {format_scalar(row.sum().item())}"

    def project(self, y: Tensor) -> Tensor:
        r"""Subtract each slice's mean: the orthogonal projection onto the hyperplane
        :math:`\sum_i y_i = 0`."""
        return y - y.mean(self.dim, keepdim=True)

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), y.double(), 0.0)
        centred = finite - finite.mean(self.dim, keepdim=True)
        # Scaling keeps the sum at zero; only slices that would overflow the dtype are shrunk.
        largest = centred.abs().amax(self.dim, keepdim=True)
        shrink = (torch.finfo(y.dtype).max / 2 / largest.clamp_min(1.0)).clamp(max=1.0)
        return (centred * shrink).to(y.dtype)


def _fit(z: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Shrink the slices (last dimension) whose largest entry would overflow ``out_dtype``; scaling
    keeps the sum at zero where clamping would not. Every other slice is left exactly as it is."""
    largest = z.abs().amax(-1, keepdim=True)
    limit = torch.finfo(out_dtype).max / 2
    return z * (limit / largest.clamp_min(limit)).clamp(max=1.0)
