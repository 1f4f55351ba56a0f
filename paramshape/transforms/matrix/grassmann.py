"""Subspaces of a given dimension, as orthonormal bases: :class:`Grassmannian`."""

from __future__ import annotations

import torch
from torch import Tensor

from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.matrix.orthogonal import Orthogonal, _tall, polar_projection
from paramshape.transforms.registry import register

__all__ = ["Grassmannian"]


def _positive_qr(tall: Tensor) -> Tensor:
    """The Q of a thin QR decomposition with the signs chosen so that R has a non-negative diagonal:
    unique for a full-rank matrix, and continuous in it (so a small step moves Q a little)."""
    q, r = torch.linalg.qr(tall)
    signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    positive: Tensor = q * signs[..., None, :]
    return positive


@register("grassmannian")
class Grassmannian(Orthogonal):
    r"""``k``-dimensional subspaces of :math:`\mathbb{R}^n` (the Grassmann manifold
    :math:`\operatorname{Gr}(k, n)`), each held as an ``n x k`` matrix whose orthonormal columns span
    it: subspace tracking, PCA layers, invariant-subspace problems, where only the span matters.

    .. math::

        f(X) = B\, e^{\operatorname{skew}(X)}\ \text{(the first } k \text{ columns)}, \qquad
        f^{-1}(Q) = 0 \text{ with } B := Q

    The Grassmann manifold is the quotient of the Stiefel manifold (orthonormal ``n x k`` matrices)
    by rotations within the subspace, :math:`Q \sim Q R` for orthogonal ``k x k`` :math:`R`, and
    paramshape stores a representative of each class: **the map, the inverse, membership and the
    methods** ``"auto"``, ``"matrix_exp"``, ``"cayley"``, ``"thin"`` **are** :class:`Orthogonal`'s
    (see it for the numerics). What differs is what the set means:

    * :meth:`contains` asks whether the matrix is an orthonormal basis (of any subspace).
    * :meth:`project` is the nearest orthonormal basis in the Frobenius norm, the polar factor
      :math:`U V^\top` of the thin SVD :math:`Y = U S V^\top`: it spans the same subspace as
      :math:`Y` when :math:`Y` has full rank, so ``method="project"`` keeps a plain parameter and
      re-orthonormalises it after each step.
    * :meth:`sample` is uniform on :math:`\operatorname{Gr}(k, n)`: the Q factor of a standard normal
      ``n x k`` matrix (Haar-distributed on the Stiefel manifold, so its span is uniform).
    * The Riemannian structure (``method="riemannian"``) is the quotient's: the tangent vectors are
      the horizontal ones, :math:`Q^\top V = 0`; the Riemannian gradient is
      :math:`(I - Q Q^\top) G`; the retraction is the Q factor of :math:`Q + V` (QR with a
      non-negative diagonal of R: a cheaper retraction than the polar one, and first order on
      horizontal vectors); the transport projects onto the new horizontal space. A loss that depends
      only on the span has a gradient with :math:`Q^\top G` symmetric, and moves no mass into the
      rotations within the subspace.

    A wide ``k x n`` tensor is handled transposed: its rows span the subspace. **Not bijective** (no
    log-det-Jacobian); ``init="raw"`` is refused, as for :class:`Orthogonal`.

    * Domain: :math:`\mathbb{R}^{n \times k}`; leading dimensions are a batch.
    * Codomain: :math:`\{Q : Q^\top Q = I\}` (the representatives), tested as for
      :class:`Orthogonal`: :math:`\lVert Q^\top Q - I \rVert_2` at most ``matrix_tolerance`` of ``n``.

    Args:
        method: as for :class:`Orthogonal` (default ``"auto"``).

    Raises:
        SpecError: ``method`` is not one of :class:`Orthogonal`'s.
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or empty matrices.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(6, 2, bias=False), "weight", ps.Grassmannian(), init="sample")
        >>> basis = layer.weight.detach()  # wide: its 2 rows span a plane of R^6
        >>> torch.allclose(basis @ basis.T, torch.eye(2), atol=1e-6)
        True
        >>> plane = torch.tensor([[3.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
        >>> ps.Grassmannian().project(plane)  # the orthonormal basis nearest the two columns
        tensor([[1., 0.],
                [0., 1.],
                [0., 0.]])
    """

    def project(self, y: Tensor) -> Tensor:
        r"""The nearest orthonormal basis in the Frobenius norm, :math:`U V^\top` from the thin SVD
        (rows for a wide matrix). Matrices holding NaN or infinity become NaN."""
        return polar_projection(y)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A uniformly distributed subspace: the Q factor (R with a positive diagonal) of a standard
        normal matrix, computed in float64 and rounded to ``dtype``."""
        shape = torch.Size(shape)
        wide = shape[-2] < shape[-1]
        tall_shape = (*shape[:-2], shape[-1], shape[-2]) if wide else shape
        noise = torch.randn(tall_shape, dtype=torch.float64, device=device, generator=generator)
        q = _positive_qr(noise)
        target = dtype if dtype is not None else torch.get_default_dtype()
        return (q.mT if wide else q).contiguous().to(target)

    def riemannian_grad(self, point: Tensor, egrad: Tensor) -> Tensor:
        r"""The horizontal part of ``egrad`` at ``Q``, :math:`(I - Q Q^\top) G = G - Q (Q^\top G)`
        (rows instead of columns for a wide matrix)."""
        work = compute_dtype(point.dtype)
        q, g = _tall(point.to(work)), _tall(egrad.to(work))
        horizontal = g - q @ (q.mT @ g)
        return (horizontal.mT if point.shape[-2] < point.shape[-1] else horizontal).to(egrad.dtype)

    def retract(self, point: Tensor, tangent: Tensor) -> Tensor:
        r"""The QR retraction, :math:`R_Q(V) = \operatorname{qf}(Q + V)`, the Q factor with a
        non-negative diagonal of R, computed in float64 by Householder reflections, so orthonormal to
        the dtype's precision whatever the step (even a rank-deficient :math:`Q + V`)."""
        moved = _tall(point.double() + tangent.double())
        q = _positive_qr(moved)
        return (q.mT if point.shape[-2] < point.shape[-1] else q).to(point.dtype)
