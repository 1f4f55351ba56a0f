"""Cholesky factors and the covariance matrices built from them: :class:`LowerCholesky` and
:class:`PositiveDefinite`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors.report import format_index, format_scalar
from paramshape.numerics import maps as _maps
from paramshape.numerics.precision import (
    INTERIOR_FRACTION,
    compute_dtype,
    excess_below,
    membership_tolerance,
    softplus_inverse,
)
from paramshape.numerics.slopes import softplus
from paramshape.transforms.matrix.base import (
    MatrixTransform,
    cholesky_jitter,
    cholesky_of_psd,
    describe_asymmetry,
    eye_mask,
    finite_float64,
    format_value,
    log_softplus,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
    smallest_eigenvalue,
    symmetric_excess,
    symmetrise,
)
from paramshape.transforms.registry import register

__all__ = ["LowerCholesky", "PositiveDefinite"]


def _lower_cholesky(x: Tensor, out_dtype: torch.dtype) -> Tensor:
    """The strictly lower triangle of ``x``, and ``softplus`` of its diagonal (at least the smallest
    normal number of ``out_dtype``, capped at its largest) on the diagonal."""
    # softness 1: the diagonal map is plain softplus (its inverse below and the log-det assume it).
    diagonal = _maps.positive(x.diagonal(dim1=-2, dim2=-1), "softplus", out_dtype, softness=1.0)
    return x.tril(-1) + torch.diag_embed(diagonal)


def _lower_cholesky_inverse(factor: Tensor) -> Tensor:
    """Inverse of :func:`_lower_cholesky` for a lower-triangular ``factor`` with a diagonal >= 0
    (an entry of 0 is read as the smallest normal number, so the result is finite)."""
    diagonal = factor.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(factor.dtype).tiny)
    return factor.tril(-1) + torch.diag_embed(softplus_inverse(diagonal))


@register("lower_cholesky")
class LowerCholesky(MatrixTransform):
    r"""Lower-triangular matrices with a positive diagonal: Cholesky factors of covariance matrices.

    .. math::

        f(x)_{ij} = \begin{cases} x_{ij} & i > j \\ \max(\operatorname{softplus}(x_{ii}), t) & i = j \\
        0 & i < j \end{cases}, \qquad
        f^{-1}(y)_{ij} = \begin{cases} y_{ij} & i > j \\ \log(\operatorname{expm1}(y_{ii})) & i = j \\
        0 & i < j \end{cases}

    :math:`t` is the smallest normal number of the dtype, as for :class:`Positive`, and the diagonal's
    inverse is :class:`Positive`'s thresholded one, finite from 0 to the dtype's largest number.

    **The stored tensor keeps the value's** ``n x n`` **shape.** The forward map reads its lower
    triangle and ignores the strictly upper part, which the inverse sets to 0 and which receives no
    gradient (weight decay leaves it at 0). A packed ``n (n + 1) / 2`` vector would save those
    entries but not ``init="raw"``, the parameter's shape, or optimizer state built beforehand. On its
    lower-triangle coordinates the map is a bijection, with log-det-Jacobian
    :math:`\sum_i \log \sigma(x_{ii})`.

    * Domain: :math:`\mathbb{R}^{n \times n}` (the lower triangle is used), on the last two
      dimensions; leading dimensions are a batch.
    * Codomain: lower-triangular matrices with a positive diagonal (torch's
      ``constraints.lower_cholesky``). Membership is tested entry by entry: the diagonal must be
      :math:`\ge 0` within 4 ulps, entries above it 0 within 4 ulps of the matrix's largest entry.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or its matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> scale = nn.Module()
        >>> scale.tril = nn.Parameter(torch.tensor([[2.0, 0.0], [0.5, 1.0]]))
        >>> _ = ps.constrain(scale, "tril", ps.LowerCholesky())
        >>> scale.tril
        tensor([[2.0000, 0.0000],
                [0.5000, 1.0000]], grad_fn=<AddBackward0>)
        >>> bool(torch.distributions.constraints.lower_cholesky.check(scale.tril))
        True
    """

    element_noun = "entries"
    domain_offset = 0
    codomain_offset = 0

    def forward(self, x: Tensor) -> Tensor:
        return _lower_cholesky(x.to(compute_dtype(x.dtype)), x.dtype).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        return _lower_cholesky_inverse(y.to(compute_dtype(y.dtype)).tril()).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\sum_i \log \sigma(x_{ii}) = -\sum_i \operatorname{softplus}(-x_{ii})` per matrix,
        with respect to the lower triangles of ``x`` and ``y``; shape ``x.shape[:-2]``."""
        diagonal = x.to(compute_dtype(x.dtype)).diagonal(dim1=-2, dim2=-1)
        return (-softplus(-diagonal)).sum(-1).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.lower_cholesky

    def _excess(self, y: Tensor) -> Tensor:
        y64 = finite_float64(y)
        size = y.shape[-1]
        scale = y64.abs().amax((-2, -1), keepdim=True)
        upper = torch.ones(size, size, dtype=torch.bool, device=y.device).triu(1)
        above = torch.where(upper, (y64.abs() - membership_tolerance(y.dtype, scale)).clamp_min(0.0), 0.0)
        negative = torch.where(eye_mask(size, y.device), excess_below(y, y.new_zeros(())), 0.0)
        return torch.where(torch.isfinite(y), above + negative, torch.inf)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        value = y[index].item()
        where = f"{format_scalar(value, y.dtype)} at {format_index(index)}"
        if not math.isfinite(value):
            return f"entry {where} is not finite"
        if index[-1] == index[-2]:
            return f"diagonal entry {where} is not positive"
        return f"entry {where} above the diagonal is not 0"

    def project(self, y: Tensor) -> Tensor:
        r"""Zero the strictly upper triangle and raise a negative diagonal to 0: the Euclidean
        projection onto the closed set of lower-triangular matrices with non-negative diagonal."""
        lower = torch.tril(y, diagonal=-1)
        return lower + torch.diag_embed(torch.diagonal(y, dim1=-2, dim2=-1).clamp_min(0))

    def to_interior(self, y: Tensor) -> Tensor:
        big = torch.finfo(y.dtype).max
        y64 = finite_float64(y).clamp(-big, big)
        strict = y64.tril(-1)
        # A diagonal entry that is not positive becomes a thousandth of its row's length (of 1 for
        # an empty row): inside, with the softplus slope still about 1e-3 there.
        largest = strict.abs().amax(-1).clamp_min(torch.finfo(torch.float64).tiny)
        length = largest * torch.linalg.vector_norm(strict / largest[..., None], dim=-1)
        floor = torch.where(length > 0, INTERIOR_FRACTION * length, INTERIOR_FRACTION)
        diagonal = torch.maximum(y64.diagonal(dim1=-2, dim2=-1), floor).clamp(max=big)
        return (strict + torch.diag_embed(diagonal)).to(y.dtype)


@register("positive_definite")
class PositiveDefinite(MatrixTransform):
    r"""Symmetric positive definite matrices (covariances, metrics, precision matrices) that always
    have a Cholesky factorisation.

    .. math::

        f(x) = L L^\top + c \operatorname{diag}(L L^\top), \qquad
        L_{ij} = x_{ij}\ (i > j), \quad L_{ii} = \operatorname{softplus}(x_{ii}) + s

    .. math::

        f^{-1}(A) = x \text{ with } L = \operatorname{chol}\bigl(A - \tfrac{c}{1 + c}
        \operatorname{diag}(A)\bigr), \quad x_{ij} = L_{ij}\ (i > j), \quad
        x_{ii} = \log\bigl(\operatorname{expm1}(L_{ii} - s)\bigr)

    **No Cholesky failures.** The jitter :math:`c`, about ``2 n`` epsilons of the dtype (see
    :func:`paramshape.transforms.matrix.base.cholesky_jitter`), is relative to each variable's own variance, so the
    diagonally scaled matrix :math:`D^{-1/2} A D^{-1/2}` has smallest eigenvalue at least
    :math:`c / (1 + c)`, whatever the scales of the variables: ``torch.linalg.cholesky`` of a value
    succeeds in the dtype's precision (and, for float16 and bfloat16, in float32 after the cast),
    even when the rows of :math:`L` are nearly parallel or the softplus underflows. A jitter relative
    to the largest variance (:math:`\epsilon \lVert A \rVert I`) would swamp the small ones.
    :math:`s = \sqrt{t}`, for the dtype's smallest normal number :math:`t` (1e-19 in float32, 7.8e-3
    in float16), keeps every variance at least :math:`t`, so a row of zeros cannot make the matrix
    singular; unlike a clamp it leaves the map smooth and invertible.

    **Round trip.** The inverse divides :math:`c` out exactly, so a value whose scaled smallest
    eigenvalue is at least :math:`c` is kept to rounding. The set tested by :meth:`contains` is the
    closed one (positive *semi*-definite, as the other transforms' sets include their bounds); a value
    closer to singular than :math:`c` is stored as the nearest one with that margin, a change of at
    most :math:`c` relative to its diagonal.

    **The stored tensor keeps the value's** ``n x n`` **shape**: it holds the unconstrained Cholesky
    factor, lower triangle used, upper part ignored and kept at 0. On the lower-triangle coordinates
    the map is a bijection, with log-det-Jacobian
    :math:`n \log(2 (1 + c)) + \sum_j \bigl(\log \sigma(x_{jj}) + (n - j) \log L_{jj}\bigr)`
    (:math:`j` counted from 0; :math:`L \mapsto L L^\top` is triangular row by row).

    The whole factor is scaled down where a row's squared length would overflow (beyond about 1.8e19
    in float32 and bfloat16, 1.6e4 in float16): an overflow guard, far outside any trained
    covariance, that the log-det-Jacobian ignores.

    * Domain: :math:`\mathbb{R}^{n \times n}` (the lower triangle is used), on the last two
      dimensions; leading dimensions are a batch.
    * Codomain: symmetric positive definite matrices (torch's ``constraints.positive_definite``).
      Membership tests the closed set, positive *semi*-definite, per matrix: symmetric within
      ``matrix_tolerance`` (about ``10 n`` epsilons) of its largest entry, and smallest eigenvalue of
      :math:`D^{-1/2} A D^{-1/2}` at least minus that tolerance.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or its matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> metric = nn.Module()
        >>> metric.weight = nn.Parameter(torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
        >>> _ = ps.constrain(metric, "weight", ps.PositiveDefinite())
        >>> torch.allclose(metric.weight, torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
        True
        >>> far = ps.PositiveDefinite()(torch.full((3, 3), -1e4))  # softplus(-1e4) underflows
        >>> int(torch.linalg.cholesky_ex(far).info)
        0
    """

    domain_offset = 0
    codomain_offset = 0
    manifold = True

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        size = x.shape[-1]
        # The diagonal's floor and the jitter are the map's (sized for the dtype constrained in), the
        # overflow limit the value's own dtype's.
        factor = _fit_rows(_covariance_factor(work, self.map_dtype(x.dtype)), x.dtype)
        product = symmetrise(factor @ factor.mT)
        variances = product.diagonal(dim1=-2, dim2=-1)
        jitter = cholesky_jitter(self.map_dtype(x.dtype), size)
        return (product + torch.diag_embed(jitter * variances)).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = symmetrise(y.to(compute_dtype(y.dtype)))
        c = cholesky_jitter(self.map_dtype(y.dtype), y.shape[-1])
        jitter = c / (1 + c) * work.diagonal(dim1=-2, dim2=-1)
        factor = cholesky_of_psd(work - torch.diag_embed(jitter))
        return _covariance_factor_inverse(factor, self.map_dtype(y.dtype)).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""With respect to the lower triangles of ``x`` and ``y``; shape ``x.shape[:-2]``.

        .. math::

            n \log\bigl(2 (1 + c)\bigr) + \sum_{j=0}^{n-1} \bigl(\log \sigma(x_{jj})
            + (n - j) \log L_{jj}\bigr), \qquad L_{jj} = \operatorname{softplus}(x_{jj}) + s

        the first term and the :math:`(n - j)` weights being those of :math:`L \mapsto L L^\top`
        (Jacobian triangular row by row), finite for every finite ``x``.
        """
        work = x.to(compute_dtype(x.dtype))
        size = x.shape[-1]
        diagonal = work.diagonal(dim1=-2, dim2=-1)
        weights = torch.arange(size, 0, -1, dtype=work.dtype, device=work.device)
        # log(softplus(x) + s), with s the diagonal's floor, from log(softplus(x)) without underflow.
        floor = torch.full_like(diagonal, 0.5 * math.log(torch.finfo(x.dtype).tiny))
        log_diagonal = torch.logaddexp(log_softplus(diagonal), floor)
        per_row = -softplus(-diagonal) + weights * log_diagonal
        constant = size * math.log(2 * (1 + cholesky_jitter(self.map_dtype(x.dtype), size)))
        return (per_row.sum(-1) + constant).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.positive_definite

    def _excess(self, y: Tensor) -> Tensor:
        return _psd_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        asymmetric = describe_asymmetry(y, index)
        if asymmetric is not None:
            return asymmetric
        matrix = y.double()[index[:-2]]
        lowest = float(torch.linalg.eigvalsh(symmetrise(matrix))[0])
        return (
            f"{matrix_label(index)} is not positive definite: its smallest eigenvalue is "
            f"{format_value(lowest, y.dtype)}"
        )

    def project(self, y: Tensor) -> Tensor:
        r"""The nearest positive semi-definite matrix in Frobenius norm (Higham): the symmetric part
        with its negative eigenvalues set to 0, :math:`Q \max(\Lambda, 0) Q^\top`. Computed in
        float32 for half precision."""
        work = y.to(compute_dtype(y.dtype))
        # eigh fails on NaN or inf; such matrices stay NaN (a projection cannot repair them).
        broken = ~torch.isfinite(work).all(-1, keepdim=True).all(-2, keepdim=True)
        work = torch.where(broken, 0.0, work)
        values, vectors = torch.linalg.eigh((work + work.transpose(-1, -2)) / 2)
        projected = (vectors * values.clamp_min(0).unsqueeze(-2)) @ vectors.transpose(-1, -2)
        projected = (projected + projected.transpose(-1, -2)) / 2
        return torch.where(broken, torch.nan, projected).to(y.dtype)

    def riemannian_grad(self, point: Tensor, egrad: Tensor) -> Tensor:
        r"""The Riemannian gradient for the affine-invariant metric
        :math:`\langle U, V \rangle_P = \operatorname{tr}(P^{-1} U P^{-1} V)`:
        :math:`P \operatorname{sym}(G) P`. Steps along it are scale-free: a matrix and its multiple
        by 1000 move by the same relative amount."""
        work = compute_dtype(point.dtype)
        p = point.to(work)
        return symmetrise(p @ symmetrise(egrad.to(work)) @ p).to(egrad.dtype)

    def retract(self, point: Tensor, tangent: Tensor) -> Tensor:
        r"""The second-order retraction of the affine-invariant metric,
        :math:`R_P(V) = P + V + \tfrac12 V P^{-1} V`, which equals
        :math:`\tfrac12 P + \tfrac12 (P + V) P^{-1} (P + V)`: positive definite for every
        symmetric :math:`V`, however large, and a second-order approximation of the exponential map."""
        work = compute_dtype(point.dtype)
        p, v = symmetrise(point.to(work)), symmetrise(tangent.to(work))
        return symmetrise(p + v + 0.5 * v @ torch.linalg.solve(p, v)).to(point.dtype)

    def transport(self, point: Tensor, new_point: Tensor, tangent: Tensor) -> Tensor:
        """The tangent space is that of all symmetric matrices at every point, so the transport is
        the identity (symmetrised)."""
        return symmetrise(tangent.to(compute_dtype(tangent.dtype))).to(tangent.dtype)

    def to_interior(self, y: Tensor) -> Tensor:
        size = y.shape[-1]
        symmetric = symmetrise(finite_float64(y))
        scale = symmetric.abs().amax((-2, -1), keepdim=True)
        scale = torch.where(scale > 0, scale, 1.0)
        values, vectors = torch.linalg.eigh(symmetric / scale)
        top = values.abs().amax(-1, keepdim=True)
        top = torch.where(top > 0, top, 1.0)
        # Eigenvalues are raised to a thousandth of the largest (and well above the jitter), so the
        # diagonally scaled matrix has smallest eigenvalue at least that fraction.
        # Inside the map's image (its jitter) and by the rounding of y's own dtype.
        jitter = max(cholesky_jitter(self.map_dtype(y.dtype), size), cholesky_jitter(y.dtype, size))
        fraction = max(INTERIOR_FRACTION, 2 * jitter)
        floored = (vectors * values.clamp_min(fraction * top)[..., None, :]) @ vectors.mT
        # Only matrices whose entries would overflow the dtype are scaled down.
        limit = torch.finfo(y.dtype).max / 4
        scale = scale * (limit / (scale * top[..., None])).clamp(max=1.0)
        return (symmetrise(floored) * scale).to(y.dtype)


def _covariance_factor(x: Tensor, out_dtype: torch.dtype) -> Tensor:
    r"""The strictly lower triangle of ``x``, and :math:`\operatorname{softplus}(x_{ii}) + s` on the
    diagonal, :math:`s = \sqrt{t}` for the smallest normal number :math:`t` of ``out_dtype``: every
    row's squared length is then at least :math:`t`, so a row of zeros cannot make the product
    singular, and the map stays smooth and invertible (no clamp)."""
    floor = math.sqrt(torch.finfo(out_dtype).tiny)
    return x.tril(-1) + torch.diag_embed(softplus(x.diagonal(dim1=-2, dim2=-1)) + floor)


def _covariance_factor_inverse(factor: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_covariance_factor`; a diagonal entry at or below the floor (from rounding)
    gives a finite, very negative entry."""
    floor = math.sqrt(torch.finfo(out_dtype).tiny)
    excess = (factor.diagonal(dim1=-2, dim2=-1) - floor).clamp_min(torch.finfo(factor.dtype).tiny)
    return factor.tril(-1) + torch.diag_embed(softplus_inverse(excess))


def _fit_rows(factor: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Scale down the factors whose longest row would make :math:`L L^\top` overflow: every squared
    row length is kept below a limit, a quarter of ``out_dtype``'s largest number, and at most the
    square root of the compute dtype's, so that the backward pass has room too (1.8e19 for float32
    values, far beyond any covariance met in practice). Factors within the limit are returned exactly
    as they are. Lengths are taken of a copy divided by its largest entry, so no square overflows."""
    limit = min(torch.finfo(out_dtype).max / 4, torch.finfo(factor.dtype).max ** 0.5)
    largest = factor.detach().abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(factor.dtype).tiny)
    unit = factor / largest
    # At least 1 (the row holding the largest entry), except for a zero factor, whose scale is 1.
    longest = (unit * unit).sum(-1).amax(-1)[..., None, None].clamp_min(1.0)
    allowed = torch.sqrt(limit / longest)  # the largest entry a factor of this shape may have
    return torch.where(largest > allowed, unit * allowed, factor)


def _psd_excess(y: Tensor) -> Tensor:
    """Per matrix, ``(*batch, 1, 1)``: how far outside the closed positive semi-definite cone, beyond
    :func:`matrix_tolerance`: asymmetry and a negative diagonal (relative to the matrix's largest
    entry), and a negative eigenvalue of the diagonally scaled matrix :math:`D^{-1/2} A D^{-1/2}`,
    whose test does not depend on the variables' scales."""
    y64 = finite_float64(y)
    tolerance = matrix_tolerance(y.dtype, y.shape[-1])
    scale = y64.abs().amax((-2, -1), keepdim=True)
    symmetric = symmetrise(y64)
    diagonal = symmetric.diagonal(dim1=-2, dim2=-1)
    negative = (-diagonal).amax(-1)[..., None, None] / torch.where(scale > 0, scale, 1.0)
    root = diagonal.clamp_min(torch.finfo(y.dtype).tiny).sqrt()
    lowest = smallest_eigenvalue(symmetric / root[..., :, None] / root[..., None, :])
    excess = (negative - tolerance).clamp_min(0.0) + (-lowest - tolerance).clamp_min(0.0)
    return symmetric_excess(y) + torch.where(nonfinite_matrices(y), torch.inf, excess)
