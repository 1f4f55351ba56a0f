"""Skew-symmetric matrices: :class:`SkewSymmetric`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixSet,
    MatrixTransform,
    finite_float64,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
)
from paramshape.transforms.registry import register

__all__ = ["SkewSymmetric", "skew_symmetric"]


def _skew_excess(y: Tensor) -> Tensor:
    r"""Per matrix, ``(*batch, 1, 1)`` float64: the largest :math:`|y_{ij} + y_{ji}|` (twice a diagonal
    entry) relative to the matrix's largest entry, beyond :func:`matrix_tolerance`; infinite for a
    matrix holding NaN or infinity."""
    y64 = finite_float64(y)
    scale = y64.abs().amax((-2, -1), keepdim=True)
    gap = (y64 + y64.mT).abs().amax((-2, -1), keepdim=True) / torch.where(scale > 0, scale, 1.0)
    excess = (gap - matrix_tolerance(y.dtype, y.shape[-1])).clamp_min(0.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _skew_part(y: Tensor) -> Tensor:
    """:math:`(Y - Y^\\top) / 2`, exactly skew-symmetric (a zero diagonal), without overflow."""
    return y * 0.5 - y.mT * 0.5


@register("skew_symmetric")
class SkewSymmetric(MatrixTransform):
    r"""Skew-symmetric matrices, :math:`A^\top = -A` (generators of rotations, the Lie algebra
    :math:`\mathfrak{so}(n)`; antisymmetric couplings; the non-conservative part of a linear
    dynamical system).

    .. math::

        f(x) = \operatorname{tril}(x, -1) - \operatorname{tril}(x, -1)^\top, \qquad
        f^{-1}(y) = \operatorname{tril}\Bigl(\frac{y - y^\top}{2}, -1\Bigr)

    The value mirrors the stored tensor's strictly lower triangle with a minus sign and has a zero
    diagonal, so it is exactly skew-symmetric in floating point. **The stored tensor keeps the
    value's** ``n x n`` **shape**: its strictly lower triangle holds the value's; the diagonal and the
    upper part are ignored by the forward map, kept at 0 by the inverse and receive no gradient. On the
    strictly lower coordinates the map is the identity, so the log-det-Jacobian is 0.
    ``method="project"`` uses the exact projection :math:`(Y - Y^\top)/2`.

    * Domain: :math:`\mathbb{R}^{n \times n}` (the strictly lower triangle is used), on the last two
      dimensions; leading dimensions are a batch.
    * Codomain: :math:`\{A : A^\top = -A\}`, :data:`skew_symmetric`. Membership allows
      :math:`|a_{ij} + a_{ji}|` (so :math:`2 |a_{ii}|`) up to ``matrix_tolerance`` (about ``10 n``
      epsilons) of the matrix's largest entry, the rounding of a difference computed elsewhere.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or its matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(3, 3, bias=False), "weight", ps.SkewSymmetric(), init="sample")
        >>> torch.equal(layer.weight, -layer.weight.mT)
        True
        >>> ps.SkewSymmetric().project(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
        tensor([[ 0.,  1.],
                [-1.,  0.]])
    """

    domain_offset = -1
    codomain_offset = -1

    def forward(self, x: Tensor) -> Tensor:
        lower = x.tril(-1)
        return lower - lower.mT

    def inverse(self, y: Tensor) -> Tensor:
        return _skew_part(y.to(compute_dtype(y.dtype))).tril(-1).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """0 per matrix (the strictly lower triangles of ``x`` and ``y`` are equal); shape
        ``x.shape[:-2]``."""
        return x.new_zeros(x.shape[:-2])

    @property
    def codomain(self) -> constraints.Constraint:
        return skew_symmetric

    def _excess(self, y: Tensor) -> Tensor:
        return _skew_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        matrix = y.double()[index[:-2]]
        gap = (matrix + matrix.mT).abs()
        i, j = (int(k) for k in torch.unravel_index(torch.argmax(gap), gap.shape))
        if i == j:
            return f"{matrix_label(index)} has diagonal entry [{i}, {i}] = {format_value(matrix[i, i].item(), y.dtype)}, not 0"
        first, second = (format_value(matrix[a, b].item(), y.dtype) for a, b in ((i, j), (j, i)))
        return f"{matrix_label(index)} is not skew-symmetric: entries [{i}, {j}] = {first} and [{j}, {i}] = {second}"

    def project(self, y: Tensor) -> Tensor:
        r"""The skew-symmetric part :math:`(Y - Y^\top) / 2`, the orthogonal projection onto
        skew-symmetric matrices (NaN stays NaN)."""
        return _skew_part(y.to(compute_dtype(y.dtype))).to(y.dtype)

    def to_interior(self, y: Tensor) -> Tensor:
        big = torch.finfo(y.dtype).max
        return _skew_part(finite_float64(y)).clamp(-big, big).to(y.dtype)


#: Skew-symmetric matrices as a :class:`torch.distributions.constraints.Constraint` (event_dim 2)
#: with :class:`SkewSymmetric`'s tolerance.
skew_symmetric = MatrixSet("SkewSymmetric()", _skew_excess)
