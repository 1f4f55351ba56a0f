"""Positive semi-definite matrices, optionally of bounded rank: :class:`PositiveSemidefinite`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_shape
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixSet,
    MatrixTransform,
    cholesky_of_psd,
    describe_asymmetry,
    finite_float64,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
    symmetrise,
)
from paramshape.transforms.matrix.cholesky import _fit_rows, _psd_excess
from paramshape.transforms.registry import register

__all__ = ["PositiveSemidefinite"]


def _check_rank(rank: object) -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SpecError(f"PositiveSemidefinite: rank must be a positive integer or None; got {rank!r}.")
    return rank


def _scaled_spectrum(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric part of ``y`` divided by its largest
    magnitude, in float64 with NaN and infinity read as 0, and that magnitude (``(*batch, 1, 1)``,
    1 for a zero matrix): dividing first keeps huge entries from overflowing inside the solver."""
    symmetric = symmetrise(finite_float64(y))
    scale = symmetric.abs().amax((-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, 1.0)
    values, vectors = torch.linalg.eigh(symmetric / scale)
    return values, vectors, scale


def _rank_excess(y: Tensor, rank: int) -> Tensor:
    """Per matrix, ``(*batch, 1, 1)``: the largest magnitude among all but the ``rank`` largest
    eigenvalues, relative to the largest magnitude, beyond :func:`matrix_tolerance` (0 when
    ``rank >= n``)."""
    size = y.shape[-1]
    if rank >= size:
        return torch.zeros((*y.shape[:-2], 1, 1), dtype=torch.float64, device=y.device)
    values, _, _ = _scaled_spectrum(y)
    top = values.abs().amax(-1)
    rest = values[..., : size - rank].abs().amax(-1) / torch.where(top > 0, top, 1.0)
    excess = (rest - matrix_tolerance(y.dtype, size)).clamp_min(0.0)[..., None, None]
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _pivoted_cholesky(matrix: Tensor, rank: int) -> Tensor:
    """An ``n x rank`` factor :math:`B` with :math:`B B^\top = A` for a positive semi-definite ``A``
    of rank at most ``rank``: ``rank`` steps of Cholesky with diagonal pivoting (each step takes the
    largest remaining diagonal entry, so the pivots reveal the rank). Differentiable with autograd,
    unlike an eigendecomposition, whose backward pass is wrong where discarded eigenvalues coincide
    (they are all 0 here). A pivot at or below 0 (a matrix of lower rank) gives a zero column."""
    tiny = torch.finfo(matrix.dtype).tiny
    residual = matrix.diagonal(dim1=-2, dim2=-1)
    columns: list[Tensor] = []
    for _ in range(rank):
        pivot = residual.detach().argmax(-1, keepdim=True)  # (*batch, 1)
        column = torch.take_along_dim(matrix, pivot[..., None, :].expand(*matrix.shape[:-1], 1), -1)[..., 0]
        for previous in columns:
            column = column - previous * torch.take_along_dim(previous, pivot, -1)
        height = torch.take_along_dim(column, pivot, -1)
        alive = height > tiny
        # Double where: a dead pivot never reaches the square root, so no NaN enters the gradient.
        root = torch.sqrt(torch.where(alive, height, torch.ones_like(height)))
        column = torch.where(alive, column / root, torch.zeros_like(column))
        columns.append(column)
        residual = residual - column * column
    return torch.stack(columns, -1)


class _PsdSet:
    """The excess function of the PSD cone of rank at most ``rank`` (a picklable callable)."""

    def __init__(self, rank: int | None) -> None:
        self.rank = rank

    def __call__(self, y: Tensor) -> Tensor:
        excess = _psd_excess(y)
        return excess if self.rank is None else excess + _rank_excess(y, self.rank)


@register("positive_semidefinite")
class PositiveSemidefinite(MatrixTransform):
    r"""Symmetric positive semi-definite matrices, optionally of rank at most ``rank`` (kernel and
    metric matrices, low-rank covariances, Gram matrices :math:`B B^\top`).

    .. math::

        f(X) = B B^\top, \quad B = \operatorname{tril}(X) \ \text{or, with a rank } r,\ B = X
        \in \mathbb{R}^{n \times r}; \qquad
        f^{-1}(A) = \operatorname{chol}(A) \ \text{or}\ V_r \Lambda_r^{1/2}

    Without ``rank`` the stored tensor keeps the value's ``n x n`` shape and its lower triangle is a
    Cholesky factor whose diagonal may be 0 or negative (so singular matrices are reached, unlike
    :class:`PositiveDefinite`); the inverse is the factor with a non-negative diagonal (through an
    eigendecomposition where Cholesky fails on a singular matrix), and the upper triangle is kept at 0.
    With ``rank=r`` **the stored tensor is the** ``n x r`` **factor** :math:`B` (``n r`` numbers
    instead of ``n^2``), and the inverse takes the ``r`` largest eigenpairs
    :math:`V_r \Lambda_r^{1/2}` (eigenvalues rounded below 0 read as 0). Either way the value is
    exactly symmetric (the product is symmetrised). **Not bijective** (:math:`B` and :math:`B Q`
    give the same value for any orthogonal :math:`Q`), so there is no log-det-Jacobian.
    :meth:`project` is exact: the symmetric part with all but its ``r`` largest eigenvalues, and the
    negative ones, set to 0 (Higham; Eckart--Young).

    The factor is scaled down where a row's squared length would overflow (as for
    :class:`PositiveDefinite`): an overflow guard far outside any trained matrix.

    * Domain: :math:`\mathbb{R}^{n \times n}` (its lower triangle), or :math:`\mathbb{R}^{n \times r}`
      with ``rank``; leading dimensions are a batch.
    * Codomain: :math:`\{A = A^\top,\ A \succeq 0,\ \operatorname{rank} A \le r\}`. Membership per
      matrix: symmetry and non-negative eigenvalues of :math:`D^{-1/2} A D^{-1/2}` as for
      :class:`PositiveDefinite`, and, with ``rank``, all but the ``r`` largest eigenvalues below
      ``matrix_tolerance`` (about ``10 n`` epsilons) of the largest one.

    Args:
        rank: the largest rank allowed, ``1 <= rank <= n``, or ``None`` (default: any rank).

    Raises:
        SpecError: ``rank`` is not a positive integer or ``None``.
        ShapeMismatchError: (from :func:`paramshape.constrain`) the matrices are not square, or have
            fewer rows than ``rank``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(5, 5), "weight", ps.PositiveSemidefinite(rank=2), init="sample")
        >>> layer.parametrizations.weight.original.shape  # the factor
        torch.Size([5, 2])
        >>> int(torch.linalg.matrix_rank(layer.weight.detach()))
        2
        >>> ps.PositiveSemidefinite().project(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
        tensor([[1., 0.],
                [0., 0.]])
    """

    bijective = False

    def __init__(self, rank: int | None = None) -> None:
        super().__init__()
        self.rank = _check_rank(rank)

    def check_shape(self, shape: torch.Size) -> None:
        super().check_shape(shape)
        if self.rank is not None and shape[-1] < self.rank:
            raise ShapeMismatchError(
                f"{self!r}: the tensor of shape {format_shape(shape)} holds {shape[-1]} x {shape[-1]} "
                f"matrices, whose rank is at most {shape[-1]}; use a rank of at most {shape[-1]}."
            )

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        if self.rank is None or len(shape) < 2:
            return torch.Size(shape)
        return torch.Size((*shape[:-1], shape[-2]))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        if self.rank is None or len(shape) < 2:
            return torch.Size(shape)
        return torch.Size((*shape[:-1], self.rank))

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        factor = _fit_rows(work.tril() if self.rank is None else work, x.dtype)
        return symmetrise(factor @ factor.mT).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = symmetrise(y.to(compute_dtype(y.dtype)))
        if self.rank is None:
            return cholesky_of_psd(work).tril().to(y.dtype)
        return _pivoted_cholesky(work, self.rank).to(y.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value: :math:`B B^\top` for a standard normal factor; without ``rank``, Bartlett's
        factor of a Wishart draw (the diagonal entry ``i`` the length of ``n - i`` standard normal
        numbers), so that typical values are well conditioned rather than nearly singular."""
        stored = self.inverse_shape(torch.Size(shape))
        noise = torch.randn(stored, dtype=dtype, device=device, generator=generator)
        if self.rank is None:
            size = stored[-1]
            extra = torch.randn((*stored[:-2], size, size), dtype=dtype, device=device, generator=generator)
            counts = torch.arange(size, 0, -1, device=noise.device)
            keep = torch.arange(size, device=noise.device)[None, :] < counts[:, None]
            lengths = torch.linalg.vector_norm(torch.where(keep, extra, 0.0), dim=-1)
            noise = noise.tril(-1) + torch.diag_embed(lengths)
        with torch.no_grad():
            value = noise.to(compute_dtype(noise.dtype))
            return symmetrise(value @ value.mT).to(noise.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return MatrixSet(repr(self), _PsdSet(self.rank))

    def _excess(self, y: Tensor) -> Tensor:
        return _PsdSet(self.rank)(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        asymmetric = describe_asymmetry(y, index)
        if asymmetric is not None:
            return asymmetric
        matrix = symmetrise(y.double()[index[:-2]])
        values = torch.linalg.eigvalsh(matrix)
        if self.rank is not None and float(_rank_excess(y[index[:-2]], self.rank)) > 0:
            extra = values[: values.shape[-1] - self.rank].abs().max().item()
            return (
                f"{matrix_label(index)} has rank above {self.rank}: an eigenvalue beyond the "
                f"{self.rank} largest is {format_value(extra, y.dtype)} (largest "
                f"{format_value(values.abs().max().item(), y.dtype)})"
            )
        return (
            f"{matrix_label(index)} is not positive semi-definite: its smallest eigenvalue is "
            f"{format_value(values[0].item(), y.dtype)}"
        )

    def project(self, y: Tensor) -> Tensor:
        r"""The nearest matrix of the set in Frobenius norm: :math:`V \max(\Lambda_r, 0) V^\top` from
        the symmetric part's eigendecomposition, keeping its ``r`` largest eigenvalues (all, without
        ``rank``) and raising negative ones to 0. Matrices holding NaN or infinity become NaN."""
        values, vectors, scale = _scaled_spectrum(y)
        kept = values.clamp_min(0.0)
        if self.rank is not None:
            kept = torch.cat([torch.zeros_like(kept[..., : -self.rank]), kept[..., -self.rank :]], -1)
        projected = symmetrise((vectors * kept[..., None, :]) @ vectors.mT) * scale
        return torch.where(nonfinite_matrices(y), torch.nan, projected).to(y.dtype)

    def to_interior(self, y: Tensor) -> Tensor:
        values, vectors, scale = _scaled_spectrum(y)
        top = values.abs().amax(-1, keepdim=True)
        top = torch.where(top > 0, top, 1.0)
        # The kept eigenvalues are raised to a thousandth of the largest, so the value is well inside
        # the cone (or, with a rank, a well-conditioned matrix of exactly that rank).
        kept = values.clamp_min(INTERIOR_FRACTION * top)
        if self.rank is not None:
            kept = torch.cat([torch.zeros_like(kept[..., : -self.rank]), kept[..., -self.rank :]], -1)
        rebuilt = symmetrise((vectors * kept[..., None, :]) @ vectors.mT)
        limit = torch.finfo(y.dtype).max / 4  # only matrices that would overflow the dtype shrink
        scale = scale * (limit / (scale * top[..., None])).clamp(max=1.0)
        return (rebuilt * scale).to(y.dtype)

    def extra_repr(self) -> str:
        return "" if self.rank is None else f"rank={self.rank}"
