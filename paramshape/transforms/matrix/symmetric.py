"""Symmetric matrices: :class:`Symmetric`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixTransform,
    describe_asymmetry,
    finite_float64,
    symmetric_excess,
    symmetrise,
)
from paramshape.transforms.registry import register

__all__ = ["Symmetric"]


@register("symmetric")
class Symmetric(MatrixTransform):
    r"""Symmetric matrices (interaction weights, Hessian or Hamiltonian estimates, kernels).

    .. math::

        f(x) = \operatorname{tril}(x) + \operatorname{tril}(x, -1)^\top, \qquad
        f^{-1}(y) = \operatorname{tril}\Bigl(\frac{y + y^\top}{2}\Bigr)

    The value mirrors the stored tensor's lower triangle, so it is exactly symmetric in floating
    point. **The stored tensor keeps the value's** ``n x n`` **shape**: its lower triangle holds the
    value's, its strictly upper part is ignored by the forward map, kept at 0 by the inverse and
    receives no gradient. An off-diagonal entry of the lower triangle receives the gradient of both
    entries it stands for. On the lower-triangle coordinates the map is the identity, so the
    log-det-Jacobian is 0.

    * Domain: :math:`\mathbb{R}^{n \times n}` (the lower triangle is used), on the last two
      dimensions; leading dimensions are a batch.
    * Codomain: symmetric matrices (torch's ``constraints.symmetric``). Membership allows
      :math:`|y_{ij} - y_{ji}|` up to ``matrix_tolerance`` (about ``10 n`` epsilons) of the matrix's
      largest entry, the rounding of a product such as :math:`B B^\top` computed elsewhere; the
      inverse averages the two triangles.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or its matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(3, 3), "weight", ps.Symmetric(), init="sample")
        >>> torch.equal(layer.weight, layer.weight.mT)
        True
        >>> layer.weight = torch.eye(3) + 2.0  # symmetric: stored
        >>> layer.parametrizations.weight.original.detach()
        tensor([[3., 0., 0.],
                [2., 3., 0.],
                [2., 2., 3.]])
    """

    domain_offset = 0
    codomain_offset = 0

    def forward(self, x: Tensor) -> Tensor:
        return x.tril() + x.tril(-1).mT

    def inverse(self, y: Tensor) -> Tensor:
        return symmetrise(y.to(compute_dtype(y.dtype))).tril().to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """0 per matrix (the lower triangles of ``x`` and ``y`` are equal); shape ``x.shape[:-2]``."""
        return x.new_zeros(x.shape[:-2])

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.symmetric

    def _excess(self, y: Tensor) -> Tensor:
        return symmetric_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_asymmetry(y, index) or "it is symmetric"

    def project(self, y: Tensor) -> Tensor:
        r"""The symmetric part :math:`(Y + Y^\top) / 2`, the orthogonal projection onto symmetric
        matrices."""
        return (y + y.transpose(-1, -2)) / 2

    def to_interior(self, y: Tensor) -> Tensor:
        big = torch.finfo(y.dtype).max
        return symmetrise(finite_float64(y)).clamp(-big, big).to(y.dtype)
