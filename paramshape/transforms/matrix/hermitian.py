"""Hermitian matrices (symmetric ones on real tensors): :class:`Hermitian`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.transforms.matrix.base import (
    MatrixSet,
    MatrixTransform,
    finite_wide,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
)
from paramshape.transforms.registry import register

__all__ = ["Hermitian", "hermitian"]


def _hermitian_part(y: Tensor) -> Tensor:
    r""":math:`(Y + Y^{H}) / 2`, exactly Hermitian (the two halves are computed by the same rounded
    operations, and the diagonal's imaginary part cancels to 0 exactly), without overflow."""
    return y * 0.5 + y.mH * 0.5


def _hermitian_excess(y: Tensor) -> Tensor:
    r"""Per matrix, ``(*batch, 1, 1)`` float64: the largest :math:`|y_{ij} - \bar y_{ji}|` (twice
    the imaginary part on the diagonal) relative to the matrix's largest modulus, beyond
    :func:`matrix_tolerance` (the epsilon of the real dtype); infinite for a matrix holding NaN or
    infinity."""
    wide = finite_wide(y)
    scale = wide.abs().amax((-2, -1), keepdim=True)
    gap = (wide - wide.mH).abs().amax((-2, -1), keepdim=True) / torch.where(scale > 0, scale, 1.0)
    excess = (gap - matrix_tolerance(y.dtype, y.shape[-1])).clamp_min(0.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _clamp_modulus(y: Tensor, dtype: torch.dtype) -> Tensor:
    """``y`` (computed in a wider dtype) with its real and imaginary parts clamped to the range of
    ``dtype``, the value's own, so that rounding it to ``dtype`` gives no infinity."""
    big = torch.finfo(dtype).max
    if not y.is_complex():
        return y.clamp(-big, big)
    return torch.complex(y.real.clamp(-big, big), y.imag.clamp(-big, big))


@register("hermitian")
class Hermitian(MatrixTransform):
    r"""Hermitian matrices, Hᴴ = H with a real diagonal (Hamiltonians, complex covariance and
    coherence matrices, quadratic forms on :math:`\mathbb{C}^n`). On a real tensor it is the set of
    symmetric matrices.

    .. math::

        f(X) = \tfrac12 \bigl(X + X^{H}\bigr), \qquad f^{-1}(H) = H

    The stored tensor is a full ``n x n`` complex matrix; the map keeps its Hermitian part (the
    orthogonal projection onto Hermitian matrices), so :math:`f(H) = H` and the inverse stores the
    value itself. The value is exactly Hermitian in floating point: entry :math:`(j, i)` is computed
    from the same two rounded numbers as the conjugate of entry :math:`(i, j)`, and the diagonal's
    imaginary parts cancel to exactly 0. The skew-Hermitian part of the stored tensor receives no
    gradient. ``method="project"`` applies the same map.

    **Not bijective**: the stored tensor has :math:`2n^2` real coordinates, the set :math:`n^2`, so
    there is no log-det-Jacobian.

    * Domain: :math:`\mathbb{C}^{n \times n}` (or :math:`\mathbb{R}^{n \times n}`), on the last two
      dimensions; leading dimensions are a batch.
    * Codomain: :math:`\{H : H^{H} = H\}`, :data:`hermitian`. Membership allows
      :math:`|h_{ij} - \bar h_{ji}|` up to ``matrix_tolerance`` (about ``10 n`` epsilons of the real
      dtype: float32's for ``complex64``) of the matrix's largest modulus.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or its matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(2, 2, bias=False, dtype=torch.complex64)
        >>> _ = ps.constrain(layer, "weight", ps.Hermitian(), init="sample")
        >>> w = layer.weight.detach()
        >>> torch.equal(w, w.mH)
        True
        >>> ps.Hermitian().project(torch.tensor([[1 + 2j, 2j], [0, 3]]))
        tensor([[1.+0.j, 0.+1.j],
                [0.-1.j, 3.+0.j]])
    """

    supports_complex = True
    bijective = False

    def forward(self, x: Tensor) -> Tensor:
        return _hermitian_part(x)

    def inverse(self, y: Tensor) -> Tensor:
        # The value is a fixed point of the map; a copy, as parametrize may pass the Parameter itself.
        return _hermitian_part(y)

    @property
    def codomain(self) -> constraints.Constraint:
        return hermitian

    def _excess(self, y: Tensor) -> Tensor:
        return _hermitian_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        matrix = finite_wide(y)[index[:-2]]
        gap = (matrix - matrix.mH).abs()
        i, j = (int(k) for k in torch.unravel_index(torch.argmax(gap), gap.shape))
        if i == j:
            imaginary = format_value(matrix[i, i].imag.item(), y.dtype)
            return (
                f"{matrix_label(index)} has diagonal entry [{i}, {i}] with imaginary part {imaginary}, not 0"
            )
        first, second = (format_value(matrix[a, b].item(), y.dtype) for a, b in ((i, j), (j, i)))
        return (
            f"{matrix_label(index)} is not Hermitian: entries [{i}, {j}] = {first} and [{j}, {i}] = "
            f"{second} are not conjugates"
        )

    def project(self, y: Tensor) -> Tensor:
        r"""The Hermitian part :math:`(Y + Y^{H}) / 2`, the orthogonal projection onto Hermitian
        matrices (NaN stays NaN)."""
        return _hermitian_part(y)

    def to_interior(self, y: Tensor) -> Tensor:
        return _clamp_modulus(_hermitian_part(finite_wide(y)), y.dtype).to(y.dtype)


#: Hermitian matrices as a :class:`torch.distributions.constraints.Constraint` (event_dim 2) with
#: :class:`Hermitian`'s tolerance.
hermitian = MatrixSet("Hermitian()", _hermitian_excess)
