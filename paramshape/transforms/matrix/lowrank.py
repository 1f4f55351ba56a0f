"""Matrices of bounded rank, stored as two factors: :class:`LowRank`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_shape
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixTransform,
    finite_float64,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
)
from paramshape.transforms.registry import register

__all__ = ["LowRank"]


def _check_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SpecError(f"LowRank: rank must be a positive integer; got {rank!r}.")
    return rank


def _scaled_svd(y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The thin SVD ``(U, S, Vh)`` of each matrix divided by its largest magnitude, in float64 with
    NaN and infinity read as 0, and that magnitude (``(*batch, 1, 1)``, 1 for a zero matrix): dividing
    first keeps huge entries from overflowing inside the solver."""
    y64 = finite_float64(y)
    scale = y64.abs().amax((-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, 1.0)
    u, s, vh = torch.linalg.svd(y64 / scale, full_matrices=False)
    return u, s, vh, scale


def _rank_excess(y: Tensor, rank: int) -> Tensor:
    """Per matrix, ``(*batch, 1, 1)`` float64: the ``(rank + 1)``-th singular value relative to the
    largest, beyond :func:`matrix_tolerance` of the longer side (0 when ``rank`` reaches the shorter
    side); infinite for a matrix holding NaN or infinity."""
    if rank >= min(y.shape[-2], y.shape[-1]):
        excess = torch.zeros((*y.shape[:-2], 1, 1), dtype=torch.float64, device=y.device)
    else:
        s = _scaled_svd(y)[1]
        top = s[..., :1]
        ratio = s[..., rank : rank + 1] / torch.where(top > 0, top, 1.0)
        tolerance = matrix_tolerance(y.dtype, max(y.shape[-2], y.shape[-1]))
        excess = (ratio - tolerance).clamp_min(0.0)[..., None]
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _guarded_product(left: Tensor, right: Tensor, out_dtype: torch.dtype) -> Tensor:
    r""":math:`A B^\top`, scaled down where its largest entry would exceed half ``out_dtype``'s
    largest number or the square root of the compute dtype's (1.8e19 in float32: the backward pass
    multiplies the gradient by entries of that size and sums them, and must not overflow either);
    exactly the product elsewhere. The factors are divided by their detached largest entries first, so the product of
    the unit factors has entries of at most ``r`` and the scale is applied once, to the result."""
    tiny = torch.finfo(left.dtype).tiny
    a = left.detach().abs().amax((-2, -1), keepdim=True).clamp_min(tiny)
    b = right.detach().abs().amax((-2, -1), keepdim=True).clamp_min(tiny)
    unit = (left / a) @ (right / b).mT
    peak = unit.detach().abs().amax((-2, -1), keepdim=True).clamp_min(tiny)
    limit = min(torch.finfo(out_dtype).max / 2, torch.finfo(left.dtype).max ** 0.5)
    # a * b may overflow to infinity in the compute dtype; the minimum then takes the limit.
    return unit * torch.minimum(a * b, limit / peak)


class _LowRankSet(constraints.Constraint):
    """Matrices of rank at most ``rank``, with :class:`LowRank`'s tolerance (event_dim 2)."""

    event_dim = 2

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def check(self, value: Tensor) -> Tensor:
        return (_rank_excess(value, self.rank) == 0).squeeze(-1).squeeze(-1)

    def __repr__(self) -> str:
        return f"LowRank(rank={self.rank})"


@register("low_rank")
class LowRank(MatrixTransform):
    r"""``m x n`` matrices of rank at most ``rank`` (low-rank adapters, compressed layers, matrix
    completion), stored as their two factors.

    .. math::

        f\Bigl(\begin{bmatrix} A \\ B \end{bmatrix}\Bigr) = A B^\top,
        \quad A \in \mathbb{R}^{m \times r},\ B \in \mathbb{R}^{n \times r}; \qquad
        f^{-1}(Y) = \begin{bmatrix} U_r S_r^{1/2} \\ V_r S_r^{1/2} \end{bmatrix}

    with :math:`Y = U S V^\top` the SVD and :math:`U_r, S_r, V_r` its ``r`` largest singular
    triplets (the balanced factorisation: both factors have the same singular values).
    **The stored tensor is** ``(m + n) x r``: the two factors stacked (``(m + n) r`` numbers instead
    of ``m n``; a 1000 x 1000 weight of rank 8 stores 16000). :func:`paramshape.constrain` handles the
    change of shape; ``init="raw"`` is refused. A transform used on its own learns ``m`` from the
    first value shape it is given (:meth:`check_shape` or :meth:`inverse_shape`).

    The product is scaled down where its largest entry would exceed half the dtype's largest
    number, or the square root of the compute dtype's (1.8e19 for float32), so neither it nor its
    gradient can overflow: a guard far outside any trained matrix. **Not bijective** (:math:`A G` and
    :math:`B G^{-\top}` give the same value for any invertible :math:`G`), so there is no
    log-det-Jacobian. :meth:`project` is exact: the truncated SVD :math:`U_r S_r V_r^\top`, the
    nearest matrix of rank at most ``r`` in the Frobenius and spectral norms (Eckart--Young).

    * Domain: :math:`\mathbb{R}^{(m + n) \times r}`; leading dimensions are a batch.
    * Codomain: :math:`\{Y \in \mathbb{R}^{m \times n} : \operatorname{rank} Y \le r\}`, a closed
      set. Membership per matrix: the ``(r + 1)``-th singular value at most ``matrix_tolerance`` of
      the longer side (about ``10 max(m, n)`` epsilons) times the largest one: the rounding of the
      product and of its cast to the dtype.

    Args:
        rank: the largest rank allowed, ``1 <= rank <= min(m, n)``.

    Raises:
        SpecError: ``rank`` is not a positive integer.
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or ``rank`` exceeds the shorter side of its matrices.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(6, 5), "weight", ps.LowRank(rank=2), init="sample")
        >>> layer.parametrizations.weight.original.shape  # A (5 x 2) over B (6 x 2)
        torch.Size([11, 2])
        >>> int(torch.linalg.matrix_rank(layer.weight.detach()))
        2
        >>> y = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> ps.LowRank(rank=1).project(y)  # Eckart-Young: keep the largest singular value
        tensor([[3., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """

    square = False
    bijective = False
    supports_raw_init = False  # the stored factors have another shape than the value

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = _check_rank(rank)
        # The value's row count m: the stored (m + n) x r tensor alone does not say where A ends.
        self._rows: int | None = None

    def _learn_rows(self, shape: torch.Size) -> None:
        if len(shape) >= 2:
            self._rows = shape[-2]

    def check_shape(self, shape: torch.Size) -> None:
        super().check_shape(shape)
        shorter = min(shape[-2], shape[-1])
        if shorter < self.rank:
            raise ShapeMismatchError(
                f"{self!r}: the tensor of shape {format_shape(shape)} holds {shape[-2]} x {shape[-1]} "
                f"matrices, whose rank is at most {shorter}; use a rank of at most {shorter}."
            )
        self._learn_rows(shape)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        if len(shape) < 2:
            return torch.Size(shape)
        rows = self._rows
        if rows is None or shape[-1] != self.rank or shape[-2] <= rows:
            raise ShapeMismatchError(
                f"{self!r}: a stored tensor of shape {format_shape(shape)} is not a stack of an m x "
                f"{self.rank} and an n x {self.rank} factor"
                + (f" with m = {rows}" if rows is not None else " (the value's shape is not known yet)")
                + ". Constrain the tensor with paramshape.constrain, or call check_shape with the "
                "value's shape first."
            )
        return torch.Size((*shape[:-2], rows, shape[-2] - rows))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        if len(shape) < 2:
            return torch.Size(shape)
        self._learn_rows(shape)
        return torch.Size((*shape[:-2], shape[-2] + shape[-1], self.rank))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.forward_shape(x.shape)[-2]
        return x[..., :rows, :], x[..., rows:, :]

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        left, right = self._split(work)
        return _guarded_product(left, right, x.dtype).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        self._learn_rows(y.shape)
        u, s, vh, scale = _scaled_svd(y)
        root = (s[..., : self.rank] * scale[..., 0]).sqrt()[..., None, :]
        # A direction with singular value 0 (a zero weight, or rank below r) keeps its unit column
        # on the left and 0 on the right: the product is the same, and the gradient of the right
        # column, G^T u, can grow it. Zero on both sides would be a saddle it never leaves.
        left = u[..., :, : self.rank] * torch.where(root == 0, 1.0, root)
        factors = torch.cat([left, vh[..., : self.rank, :].mT * root], -2)
        return factors.to(y.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return _LowRankSet(self.rank)

    def _excess(self, y: Tensor) -> Tensor:
        return _rank_excess(y, self.rank)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        s = torch.linalg.svdvals(y.double()[index[:-2]])
        return (
            f"{matrix_label(index)} has rank above {self.rank}: its singular value number "
            f"{self.rank + 1} is {format_value(s[self.rank].item(), y.dtype)} (largest "
            f"{format_value(s[0].item(), y.dtype)})"
        )

    def project(self, y: Tensor) -> Tensor:
        r"""The nearest matrix of rank at most ``rank`` in the Frobenius norm, the truncated SVD
        :math:`U_r S_r V_r^\top` (Eckart--Young). Matrices holding NaN or infinity become NaN."""
        u, s, vh, scale = _scaled_svd(y)
        kept = s[..., : self.rank]
        projected = (u[..., :, : self.rank] * kept[..., None, :]) @ vh[..., : self.rank, :] * scale
        return torch.where(nonfinite_matrices(y), torch.nan, projected).to(y.dtype)

    def to_interior(self, y: Tensor) -> Tensor:
        """A matrix of rank exactly ``rank`` near ``y``: its truncated SVD with the kept singular
        values raised to a thousandth of the largest (the identity's leading block for a zero matrix),
        so both factors of its inverse are well conditioned and carry a gradient."""
        u, s, vh, scale = _scaled_svd(y)
        top = s[..., :1]
        kept = torch.where(top > 0, s[..., : self.rank].clamp_min(INTERIOR_FRACTION * top), 1.0)
        rebuilt = (u[..., :, : self.rank] * kept[..., None, :]) @ vh[..., : self.rank, :]
        limit = torch.finfo(y.dtype).max / 4  # only matrices that would overflow the dtype shrink
        scale = scale.clamp_max(limit / kept[..., :1, None].clamp_min(1.0))
        return (rebuilt * scale).to(y.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}"
