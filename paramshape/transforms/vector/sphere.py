"""The unit sphere: :class:`UnitNorm`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors.report import format_scalar
from paramshape.numerics.precision import compute_dtype, widest
from paramshape.transforms import sets as _constraints
from paramshape.transforms.registry import register
from paramshape.transforms.vector.base import VectorTransform

__all__ = ["UnitNorm"]


@register("unit_norm")
class UnitNorm(VectorTransform):
    r"""Slices along ``dim`` of Euclidean norm 1 (unit-norm rows or columns of a weight).

    .. math::

        f(x) = \frac{x}{\lVert x \rVert_2}, \qquad f^{-1}(y) = y

    **Not bijective**: every positive multiple of ``x`` has the same image, so the stored tensor has
    one direction more than the sphere (its length), and there is no log-det-Jacobian
    (:meth:`log_abs_det_jacobian` raises). The inverse stores the value itself, which the forward map
    returns unchanged. The gradient is orthogonal to ``x``, so plain gradient steps only lengthen
    the stored vector, which slows later steps down a little (as with weight normalisation).

    The zero vector, which has no direction, is mapped to :math:`(1, \dots, 1)/\sqrt{K}`, with a zero
    gradient, so no NaN appears in the value or the gradient. Each slice is divided by its largest
    magnitude before the norm is taken (the result does not depend on it), so neither ``1e-30`` nor
    ``1e30`` entries underflow or overflow the squares.

    Complex tensors (``complex64``, ``complex128``) are accepted: the norm is
    :math:`\sqrt{\sum_i |z_i|^2}`, so each slice is a unit vector of :math:`\mathbb{C}^K` (a quantum
    state, a complex beamforming weight), with the tolerance of the real dtype of the same precision.
    ``method="riemannian"`` is refused for them.

    * Domain: :math:`\mathbb{R}^K` (or :math:`\mathbb{C}^K`) along ``dim``.
    * Codomain: the sphere :math:`\{y : \lVert y \rVert_2 = 1\}` along ``dim``; membership tolerates a
      norm off by 4 ulps plus ``2 K`` compute-dtype epsilons.

    Args:
        dim: the dimension that holds each vector (default: the last one). For the rows of a
            ``Linear`` weight of shape ``(out, in)`` use ``dim=-1``; for its columns ``dim=0``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(4, 3), "weight", ps.UnitNorm(dim=-1), init="raw")
        >>> torch.allclose(layer.weight.norm(dim=-1), torch.ones(3))
        True
        >>> ps.UnitNorm()(torch.zeros(4))
        tensor([0.5000, 0.5000, 0.5000, 0.5000])
        >>> ps.UnitNorm()(torch.tensor([3j, 4.0]))  # complex: |3i|^2 + |4|^2 = 25
        tensor([0.0000+0.6000j, 0.8000+0.0000j])
    """

    bijective = False
    manifold = True
    # Complex vectors: the norm is that of the moduli, sqrt(sum |z_i|^2), and the map the same.
    supports_complex = True

    def forward(self, x: Tensor) -> Tensor:
        work = self._last(x.to(compute_dtype(x.dtype)))
        # The map does not depend on the scale, so dividing by a detached maximum changes no
        # gradient and keeps the squares in range.
        largest = work.detach().abs().amax(-1, keepdim=True)
        is_zero = largest == 0
        scaled = work / torch.where(is_zero, torch.ones_like(largest), largest)
        # Double where: the norm of a zero vector is never taken, so its gradient stays finite.
        safe = torch.where(is_zero, torch.ones_like(scaled), scaled)
        unit = safe / torch.linalg.vector_norm(safe, dim=-1, keepdim=True)
        centre = torch.full_like(unit, 1 / math.sqrt(max(unit.shape[-1], 1)))
        return self._back(torch.where(is_zero, centre, unit)).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        return y.clone()

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """Not defined: the map is not bijective.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(
            f"{self!r} maps R^K onto the (K-1)-dimensional unit sphere, forgetting the length of x, "
            "so it is not bijective and has no log-det-Jacobian. For a density on the sphere, put it "
            "on the value directly and keep the stored length in check with a term such as "
            "-0.5 * ||x||^2 (as Stan does for unit vectors)."
        )

    def riemannian_grad(self, point: Tensor, egrad: Tensor) -> Tensor:
        r"""The tangent part of ``egrad`` at each unit slice ``p`` (the sphere's embedded metric):
        :math:`g - \langle g, p \rangle p`, along ``dim``."""
        work = compute_dtype(point.dtype)
        p, g = point.to(work), egrad.to(work)
        return (g - (g * p).sum(self.dim, keepdim=True) * p).to(egrad.dtype)

    def retract(self, point: Tensor, tangent: Tensor) -> Tensor:
        r"""The metric projection retraction, :math:`R_p(v) = (p + v) / \lVert p + v \rVert_2`
        per slice: exact to the last ulps, whatever the step's size (:meth:`forward` normalises)."""
        return self.forward(point + tangent.to(point.dtype))

    @property
    def codomain(self) -> constraints.Constraint:
        return _constraints.sphere

    def _excess(self, y: Tensor) -> Tensor:
        return _constraints.sphere_excess(y, self.dim)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        row, label = self._slice_at(y, index)
        return f"the slice {label} has norm {format_scalar(torch.linalg.vector_norm(row).item())}"

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), widest(y), 0.0)
        return self.forward(finite).to(y.dtype)
