"""Shared machinery of the matrix transforms: shapes, triangle coordinates, tolerances, the Cholesky
jitter, per-matrix membership and the messages that go with it.

A matrix transform acts on the last two dimensions of a tensor and broadcasts over the leading ones,
so a ``(3, 4, 4)`` tensor is a batch of three ``4 x 4`` matrices. Membership is decided per matrix:
``_excess`` returns a ``(*batch, 1, 1)`` tensor, and ``validate`` names the worst matrix by its
batch index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError
from paramshape.errors.report import format_index, format_scalar, format_shape
from paramshape.numerics.precision import compute_dtype, widest
from paramshape.transforms.base import Transform

__all__ = [
    "MatrixSet",
    "MatrixTransform",
    "cholesky_jitter",
    "cholesky_of_psd",
    "describe_asymmetry",
    "eye_mask",
    "finite_float64",
    "finite_wide",
    "format_value",
    "log_softplus",
    "matrix_label",
    "matrix_tolerance",
    "nonfinite_matrices",
    "smallest_eigenvalue",
    "symmetric_excess",
    "symmetrise",
    "tril_entries",
]


def matrix_tolerance(dtype: torch.dtype, size: int) -> float:
    """Relative tolerance of a matrix identity (a unit row norm, :math:`Q^\\top Q = I`, symmetry, a
    non-negative eigenvalue) for matrices of ``size`` rows stored in ``dtype``.

    ``10 * size`` epsilons of the compute dtype, the rule of torch's ``constraints.corr_cholesky``:
    an entry of a matrix product is a sum of ``size`` rounded terms, whose error is at most
    ``size / 2`` epsilons of the scale (Higham's :math:`\\gamma_n`), and the maps chain a few such
    products. Plus ``4 * sqrt(size)`` epsilons of the stored dtype: casting the result rounds every
    entry once, which moves a row norm or a singular value by at most ``sqrt(size) / 2`` of them.
    """
    compute = torch.finfo(compute_dtype(dtype)).eps
    return 10 * size * compute + 4 * math.sqrt(size) * torch.finfo(dtype).eps


def cholesky_jitter(dtype: torch.dtype, size: int) -> float:
    """The relative jitter :math:`c` that :class:`~paramshape.PositiveDefinite` and
    :class:`~paramshape.CorrMatrix` add to the diagonal, so a Cholesky factorisation of their values
    succeeds in the compute dtype (and, for half dtypes, after the cast to the stored dtype).

    ``(2 size + 4)`` epsilons of the compute dtype, plus ``2 sqrt(size)`` of the stored dtype. With
    :math:`A = L L^\\top + c \\operatorname{diag}(L L^\\top)` the diagonally scaled matrix has
    smallest eigenvalue at least :math:`c / (1 + c)`. Measured on 1e5 float32 draws, including nearly
    parallel rows and diagonals down to 1e-50: ``cholesky_ex`` never failed once :math:`c` reached
    ``2 size`` epsilons for ``size <= 4`` and ``size / 4`` epsilons beyond, and needed at most
    ``sqrt(size)`` epsilons of float16 or bfloat16 for the cast; the rule leaves a factor of 2 to 4.
    The worst-case bound, ``size (size + 1) / 2`` epsilons (Higham, Thm. 10.7), is far more
    pessimistic for large matrices.
    """
    compute = torch.finfo(compute_dtype(dtype)).eps
    return (2 * size + 4) * compute + 2 * math.sqrt(size) * torch.finfo(dtype).eps


def eye_mask(size: int, device: torch.device) -> Tensor:
    """A boolean ``size x size`` identity: selects the diagonal in ``torch.where``."""
    return torch.eye(size, dtype=torch.bool, device=device)


def tril_entries(tensor: Tensor, offset: int) -> Tensor:
    """The entries of the lower triangle (``offset=0``: with the diagonal; ``-1``: without), row by
    row, as ``(*batch, m)``: the layout of :func:`torch.tril_indices`, as in torch's
    ``CorrCholeskyTransform``. A pure selection of entries."""
    size = tensor.shape[-1]
    rows, cols = torch.tril_indices(size, size, offset, device=tensor.device)
    return tensor[..., rows, cols]


def symmetrise(matrix: Tensor) -> Tensor:
    """:math:`(A + A^\\top) / 2`, exactly symmetric, and without overflow for entries near the
    dtype's largest number."""
    return matrix * 0.5 + matrix.mT * 0.5


def log_softplus(x: Tensor) -> Tensor:
    """``log(softplus(x))``, finite for every finite ``x``: below ``log(eps)`` it is ``x`` to working
    precision (where ``softplus`` itself would underflow to 0)."""
    small = x < math.log(torch.finfo(x.dtype).eps)
    safe = torch.where(small, torch.zeros_like(x), x)
    return torch.where(small, x, torch.log(torch.logaddexp(safe, torch.zeros_like(safe))))


def finite_float64(y: Tensor) -> Tensor:
    """``y`` in float64 with NaN and infinite entries read as 0."""
    y64 = y.double()
    return torch.where(torch.isfinite(y64), y64, 0.0)


def finite_wide(y: Tensor) -> Tensor:
    """:func:`finite_float64` that keeps complex values complex: ``y`` in complex128 for a complex
    tensor (a non-finite real or imaginary part reads the entry as 0), in float64 otherwise."""
    if not y.is_complex():
        return finite_float64(y)
    wide = widest(y)
    return torch.where(torch.isfinite(wide), wide, 0.0)


def nonfinite_matrices(y: Tensor) -> Tensor:
    """``(*batch, 1, 1)`` boolean: which matrices hold a NaN or infinite entry."""
    return ~torch.isfinite(y).all(-1, keepdim=True).all(-2, keepdim=True)


def smallest_eigenvalue(symmetric: Tensor) -> Tensor:
    """The smallest eigenvalue of each (float64, symmetric) matrix, as ``(*batch, 1, 1)``.

    The matrix is divided by its largest magnitude first, so huge entries cannot overflow inside the
    eigensolver; infinite entries (from an overflowing scaling upstream) are read as the largest
    float64 number, which makes the result hugely negative or positive, never NaN.
    """
    big = torch.finfo(torch.float64).max
    finite = torch.nan_to_num(symmetric, nan=0.0, posinf=big, neginf=-big)
    scale = finite.abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    values = torch.linalg.eigvalsh(finite / scale)
    return values[..., :1].unsqueeze(-1) * scale


def cholesky_of_psd(matrix: Tensor) -> Tensor:
    """Lower Cholesky factors of symmetric matrices that are positive *semi*-definite up to rounding.

    ``cholesky_ex`` handles the positive definite ones. Those it rejects (a zero or slightly negative
    eigenvalue) are factored through their eigendecomposition in float64 instead: the matrix is
    scaled to unit diagonal, negative eigenvalues are raised to 0, and the QR decomposition of the
    square root gives a factor with a non-negative diagonal whose product is the nearest positive
    semi-definite matrix. Only the rejected ones take that path (a Python branch: inverses are not
    traced).
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    failed = info != 0
    if not bool(failed.any()):
        return factor
    repaired = _factor_by_eigendecomposition(matrix.double()).to(matrix.dtype)
    return torch.where(failed[..., None, None], repaired, factor)


def _factor_by_eigendecomposition(matrix: Tensor) -> Tensor:
    diagonal = matrix.diagonal(dim1=-2, dim2=-1)
    # Scaled to unit diagonal, so the projection does not depend on the variables' scales. A row with
    # a diagonal entry <= 0 can only belong to a positive semi-definite matrix as a row of zeros, and
    # is taken as one (scaling by it would blow the rest of the row up).
    positive = diagonal > 0
    root = torch.where(positive, diagonal, 1.0).sqrt()
    kept = torch.where(positive[..., :, None] & positive[..., None, :], matrix, 0.0)
    scaled = symmetrise(kept / root[..., :, None] / root[..., None, :])
    values, vectors = torch.linalg.eigh(scaled)
    half = (vectors * values.clamp_min(0.0).sqrt()[..., None, :]).mT
    # half^T half = V diag(values) V^T, and for half = Q R it is R^T R: R^T is the factor.
    upper = torch.linalg.qr(half).R
    signs = torch.where(upper.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0)
    return root[..., :, None] * (upper * signs[..., :, None]).mT


def symmetric_excess(y: Tensor) -> Tensor:
    r"""Per matrix, ``(*batch, 1, 1)`` float64: the largest :math:`|y_{ij} - y_{ji}|` relative to the
    matrix's largest entry, beyond :func:`matrix_tolerance`; infinite for a matrix holding NaN or
    infinity. (Symmetric maps produce exactly symmetric values; values computed elsewhere, such as
    :math:`B B^\top`, differ from their transpose by the rounding of their sums.)"""
    y64 = finite_float64(y)
    scale = y64.abs().amax((-2, -1), keepdim=True)
    asymmetry = (y64 - y64.mT).abs().amax((-2, -1), keepdim=True) / torch.where(scale > 0, scale, 1.0)
    excess = (asymmetry - matrix_tolerance(y.dtype, y.shape[-1])).clamp_min(0.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def describe_asymmetry(y: Tensor, index: tuple[int, ...]) -> str | None:
    """``the matrix at [1] is not symmetric: entries [0, 1] = 0.3 and [1, 0] = 0.5``, or ``None`` if
    the matrix at ``index`` is symmetric within the tolerance."""
    if float(symmetric_excess(y[index[:-2]])) == 0:
        return None
    matrix = y.double()[index[:-2]]
    gap = (matrix - matrix.mT).abs()
    i, j = (int(k) for k in torch.unravel_index(torch.argmax(gap), gap.shape))
    first, second = (format_value(matrix[a, b].item(), y.dtype) for a, b in ((i, j), (j, i)))
    return f"{matrix_label(index)} is not symmetric: entries [{i}, {j}] = {first} and [{j}, {i}] = {second}"


def format_value(value: complex, dtype: torch.dtype) -> str:
    """``value`` (computed in float64 from a tensor of ``dtype``) with the digits ``dtype`` holds:
    ``0.69``, not ``0.6899999891020274``, for a float32 matrix. Values beyond ``dtype``'s range keep
    float64's digits. A complex ``dtype`` reads as its real counterpart (a modulus, a real or
    imaginary part of a ``complex64`` matrix has float32's digits)."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    if isinstance(value, complex):  # an entry of a complex matrix: (0.5+0.25j), (nan+0j)
        real, imag = format_value(value.real, dtype), format_value(abs(value.imag), dtype)
        return f"({real}{'-' if math.copysign(1.0, value.imag) < 0 else '+'}{imag}j)"
    rounded = torch.tensor(value, dtype=torch.float64).to(dtype)
    if math.isfinite(value) and not bool(torch.isfinite(rounded)):
        return format_scalar(value)
    return format_scalar(rounded.item(), dtype)


def matrix_label(index: tuple[int, ...]) -> str:
    """``the matrix at [2]`` (by batch index), or ``the matrix`` for an unbatched one."""
    batch = index[:-2]
    return f"the matrix at {format_index(batch)}" if batch else "the matrix"


class MatrixSet(constraints.Constraint):
    """A set of matrices (the last two dimensions) that torch.distributions has no constraint for,
    checked with the same dtype-aware tolerances as the transform."""

    event_dim = 2

    def __init__(self, name: str, excess: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self._name = name
        self._excess = excess

    def check(self, value: Tensor) -> Tensor:
        return (self._excess(value) == 0).squeeze(-1).squeeze(-1)

    def __repr__(self) -> str:
        return self._name


class MatrixTransform(Transform):
    """Abstract base of the transforms whose elements are matrices: the last two dimensions.

    Subclasses with a log-det-Jacobian set :attr:`domain_offset` and :attr:`codomain_offset`: the
    stored tensor's entries the forward map reads, and the value's free entries, as lower triangles
    (``0``: with the diagonal, ``-1``: without). The rest of the stored tensor is ignored by the
    forward map and kept at 0 by the inverse.
    """

    event_dim = 2
    element_noun = "matrices"
    # Each matrix of a batch is mapped and checked on its own: membership checks (and the inverse,
    # for transforms without state such as Orthogonal's base) run a block of matrices at a time.
    slices_independent = True
    #: Whether the matrices must be square.
    square: ClassVar[bool] = True
    #: Lower triangle of the stored tensor that the forward map reads (``None``: every entry).
    domain_offset: ClassVar[int | None] = None
    #: Lower triangle of the value that holds its free coordinates (``None``: every entry).
    codomain_offset: ClassVar[int | None] = None

    def check_shape(self, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise ShapeMismatchError(
                f"{self!r} acts on matrices (the last two dimensions of a tensor), but the tensor has "
                f"shape {format_shape(shape)}. Constrain a 2-d weight (or a batch of matrices), or "
                "reshape the tensor into one first."
            )
        rows, cols = shape[-2], shape[-1]
        if rows == 0 or cols == 0:
            raise ShapeMismatchError(
                f"{self!r}: the tensor of shape {format_shape(shape)} holds empty {rows} x {cols} matrices."
            )
        if self.square and rows != cols:
            raise ShapeMismatchError(
                f"{self!r} needs square matrices in the last two dimensions; the tensor of shape "
                f"{format_shape(shape)} holds {rows} x {cols} ones. For a conv kernel or another "
                "layout, constrain a square view of it in your module's forward instead."
            )

    def domain_coordinates(self, x: Tensor) -> Tensor:
        if self.domain_offset is None:
            return super().domain_coordinates(x)
        return tril_entries(x, self.domain_offset)

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        if self.codomain_offset is None:
            return super().codomain_coordinates(y)
        return tril_entries(y, self.codomain_offset)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        # A matrix holding NaN or infinity is named by that entry: the family's own measure of how
        # far it is from the set (a deviation, an eigenvalue) would read NaN.
        broken = self._describe_nonfinite(y, index)
        return broken if broken is not None else self._describe_finite(y, index)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        """How the finite matrix of ``y`` at ``index[:-2]`` breaks the set (:meth:`_describe` has
        named any non-finite entry already). Each family that keeps :meth:`_describe` says this."""
        raise NotImplementedError(f"{type(self).__name__} does not describe a finite matrix outside its set")

    def _describe_nonfinite(self, y: Tensor, index: tuple[int, ...]) -> str | None:
        """The sentence for a matrix holding NaN or infinity, or ``None`` if it holds none."""
        matrix = y[index[:-2]]
        bad = ~torch.isfinite(matrix)
        if not bool(bad.any()):
            return None
        where = tuple(int(i) for i in bad.nonzero()[0])
        value = matrix[where].item()
        return f"entry {format_value(value, y.dtype)} at {format_index(index[:-2] + where)} is not finite"
