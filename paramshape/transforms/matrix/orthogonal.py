"""Orthogonal matrices and matrices with orthonormal columns (or rows): :class:`Orthogonal`."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_shape
from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.base import Transform
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

__all__ = ["Orthogonal", "OrthogonalMethod", "orthogonal", "polar_projection"]

#: The maps from skew-symmetric matrices onto rotations that :class:`Orthogonal` offers.
OrthogonalMethod = Literal["auto", "matrix_exp", "cayley", "thin"]
_METHODS: tuple[str, ...] = get_args(OrthogonalMethod)

#: ``method="auto"`` takes ``"thin"`` when the longer side is at least this many times the shorter:
#: the thin map's exponential is of a ``4k x 4k`` matrix, against ``n x n`` for ``"matrix_exp"``.
THIN_RATIO = 4


def _resolved(method: str, shape: torch.Size) -> str:
    """The map ``method`` stands for on matrices of ``shape`` (``"auto"`` depends on it)."""
    if method != "auto":
        return method
    rows, cols = shape[-2], shape[-1]
    return "thin" if max(rows, cols) >= THIN_RATIO * min(rows, cols) else "matrix_exp"


def _tall(matrix: Tensor) -> Tensor:
    """``matrix`` with at least as many rows as columns (transposed if it is wide)."""
    return matrix.mH if matrix.shape[-2] < matrix.shape[-1] else matrix


def _deviation(y: Tensor) -> Tensor:
    r"""Per matrix, ``(*batch, 1, 1)`` float64: the spectral norm of :math:`Q^\top Q - I` (of
    :math:`Q Q^\top - I` for a wide matrix), the largest :math:`|\sigma_i^2 - 1|` over its singular
    values. NaN and infinite entries are read as 0 (the caller marks those matrices)."""
    tall = _tall(finite_wide(y))
    gram = tall.mH @ tall - torch.eye(tall.shape[-1], dtype=tall.dtype, device=y.device)
    big = torch.finfo(torch.float64).max
    gram = torch.nan_to_num(gram, nan=0.0, posinf=big, neginf=-big)
    scale = gram.abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    values = torch.linalg.eigvalsh(gram / scale)
    return values.abs().amax(-1)[..., None, None] * scale


def _orthogonal_excess(y: Tensor) -> Tensor:
    """Per matrix: the deviation from orthonormal beyond :func:`matrix_tolerance` of the longer side."""
    tolerance = matrix_tolerance(y.dtype, max(y.shape[-2], y.shape[-1]))
    excess = (_deviation(y) - tolerance).clamp_min(0.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def polar_projection(y: Tensor) -> Tensor:
    """The polar factor of each matrix of ``y`` (the nearest one with orthonormal columns, rows if
    wide, in the Frobenius norm; conjugate transposes for complex ``y``), computed in float64 or
    complex128 and rounded to ``y``'s dtype; a matrix holding NaN or infinity becomes NaN. The
    projection of :class:`Grassmannian` and :class:`Unitary`."""
    return torch.where(nonfinite_matrices(y), torch.nan, _polar(finite_wide(y))).to(y.dtype)


def _polar(y64: Tensor) -> Tensor:
    """The nearest matrix with orthonormal columns (rows, if wide) in the Frobenius norm: U V^T."""
    largest = y64.abs().amax((-2, -1), keepdim=True)
    u, _, vh = torch.linalg.svd(y64 / torch.where(largest > 0, largest, 1.0), full_matrices=False)
    return u @ vh


def _newton_schulz(rotation: Tensor) -> Tensor:
    r"""One Newton--Schulz step towards the orthogonal polar factor, :math:`R (3 I - R^\top R) / 2`:
    it squares the deviation from orthogonality, and leaves an exactly orthogonal :math:`I` as it is."""
    eye = torch.eye(rotation.shape[-1], dtype=rotation.dtype, device=rotation.device)
    return rotation @ (1.5 * eye - 0.5 * (rotation.mH @ rotation))


@register("orthogonal")
class Orthogonal(MatrixTransform):
    r"""Orthogonal matrices, and rectangular ones with orthonormal columns (tall) or rows (wide): the
    Stiefel manifold. For orthogonal weights (RNN recurrences, normalising flows, isometric layers).

    .. math::

        f(X) = B\, \phi\bigl(\operatorname{skew}(X)\bigr), \quad
        \operatorname{skew}(X) = \tfrac12 (X - X^\top), \quad
        \phi(A) = e^{A} \ \text{or}\ (I - A)^{-1} (I + A), \qquad
        f^{-1}(Q) = 0 \text{ with } B := Q

    A *dynamic trivialization*, as in ``torch.nn.utils.parametrizations.orthogonal``: the base
    :math:`B` is a buffer (in ``state_dict``) that assignment sets to the assigned value, and the
    stored tensor is then 0, so ``constrain(..., init="keep")`` keeps an orthogonal value exactly, to
    the last bit (geotorch draws a new one; geotorch issue #28). Training moves the stored tensor
    away from 0; the gradient at 0 is the Riemannian gradient, and :math:`e^A` reaches every
    rotation of :math:`B`. Before any assignment :math:`B = I`.

    Unlike torch's version, assigning a value that is not orthogonal raises
    :class:`~paramshape.InfeasibleValueError` with its deviation :math:`\lVert Q^\top Q - I \rVert_2`,
    instead of silently replacing it by the Q of its QR decomposition; ``init="project"`` moves it
    to the nearest orthogonal matrix (the polar factor :math:`U V^\top`) and says so.

    For an ``n x k`` tensor with ``n > k`` (columns orthonormal) the stored tensor keeps its shape.
    ``"matrix_exp"`` and ``"cayley"`` fill the first ``k`` columns of an ``n x n`` matrix whose
    exponential is taken, with :math:`B` the ``n x n`` completion of the value: the cost of an
    ``n x n`` exponential, for the longer side ``n`` (7.2 GB at 30000 x 50). ``"thin"`` never forms
    an ``n x n`` matrix: with :math:`B` the ``n x k`` value itself and :math:`Z` the stored tensor,

    .. math::

        f(Z) = e^{A} B, \quad A = Z B^\top - B Z^\top
             = U V^\top,\ U = [Z, B],\ V = [B, -Z], \qquad
        e^{U V^\top} B = B + U\, \varphi(V^\top U)\, V^\top B,

    with :math:`\varphi(M) = \sum_j M^j / (j + 1)!` read off the exponential of the
    ``4k x 4k`` block matrix :math:`\begin{pmatrix} M & I \\ 0 & 0 \end{pmatrix}`: time
    :math:`O(n k^2)` and memory a few ``n x k`` matrices, so a 30000 x 50 weight registers and steps
    in seconds on one CPU core, with tens of MB where the square maps need gigabytes. Its gradient at :math:`Z = 0` is :math:`G - B G^\top B`, the Riemannian
    gradient of the canonical metric. ``"auto"`` (the default) is ``"thin"`` when the longer side is
    at least :data:`THIN_RATIO` (4) times the shorter and ``"matrix_exp"`` otherwise. A wide tensor
    is handled transposed (rows orthonormal).

    Numerics: two Newton--Schulz steps after :math:`\phi` (outside autograd for the square maps: the
    gradient is that of :math:`\phi`, which the polish leaves unchanged to first order) bring the
    result to orthogonal within a few
    epsilons (``torch.matrix_exp`` of a skew matrix of norm 100 is off by 1e-4 in float32); and
    :math:`\operatorname{skew}(X)` is scaled down to Frobenius norm :math:`1/\sqrt{\epsilon}` (2896 in
    float32) where it is larger, beyond which the exponential's squaring steps lose orthogonality
    faster than the polish restores it (``"thin"``: :math:`Z` to float32's :math:`\epsilon^{-1/4}`, 54, in every
    dtype, whose rank-``2k`` formula rounds sooner; rotation angles still reach about 100
    radians). That only happens for entries far beyond any training trajectory.

    ``init="raw"`` is refused (:class:`~paramshape.SpecError`): the stored tensor is a rotation of the
    base, which the inverse sets, so raw values have no meaning of their own. Use
    ``init="project"`` (the nearest orthogonal matrix) or ``init="sample"``.

    **Not bijective**: :math:`e^A` is periodic and :math:`X` has more entries than the manifold has
    dimensions, so there is no log-det-Jacobian.

    * Domain: :math:`\mathbb{R}^{n \times k}`, on the last two dimensions; leading dimensions are a
      batch (the base has one matrix per batch entry).
    * Codomain: :math:`\{Q : Q^\top Q = I\}` (:math:`Q Q^\top = I` if wide),
      :data:`paramshape.transforms.matrix.orthogonal.orthogonal`. Membership per matrix:
      :math:`\lVert Q^\top Q - I \rVert_2` (the largest :math:`|\sigma_i^2 - 1|`) at most
      ``matrix_tolerance`` of the longer side (about ``10 n`` epsilons).

    Args:
        method: ``"auto"`` (default: ``"thin"`` for matrices at least 4 times longer than wide,
            ``"matrix_exp"`` otherwise), ``"matrix_exp"`` (reaches every rotation), ``"cayley"``
            (:math:`(I - A)^{-1}(I + A)`, one linear solve instead of an exponential; it approaches
            rotations by :math:`\pi` only as :math:`A` grows without bound) or ``"thin"`` (the
            exponential through its rank-``2k`` factors, above; for tall or wide matrices).

    Raises:
        SpecError: ``method`` is not one of the above.
        ShapeMismatchError: (from :func:`paramshape.constrain`) the tensor has fewer than two
            dimensions, or empty matrices.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(3, 3)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
        >>> _ = ps.constrain(layer, "weight", ps.Orthogonal())  # init="keep": kept exactly
        >>> layer.weight.detach()
        tensor([[ 0.,  1.,  0.],
                [ 1.,  0.,  0.],
                [ 0.,  0., -1.]])
        >>> try:
        ...     layer.weight = 2 * torch.eye(3)
        ... except ps.InfeasibleValueError as error:
        ...     print(error)
        'weight' of Linear (shape (3, 3), float32): 1 of 1 matrices lie outside Orthogonal(); worst: the
        matrix has |Q^T Q - I| = 3.0 (spectral norm; at most 4.4e-06 allowed). Assign a value inside the set.
    """

    supports_raw_init = False  # the inverse sets the base; a raw stored tensor would rotate twice

    square = False
    bijective = False
    manifold = True
    base: Tensor
    # One base matrix per stored matrix: a batch is inverted a block of matrices at a time.
    block_state = ("base",)

    def __init__(self, method: OrthogonalMethod = "auto") -> None:
        super().__init__()
        if method not in _METHODS:
            raise SpecError(f"{type(self).__name__}: method must be one of {list(_METHODS)}; got {method!r}.")
        self.method: OrthogonalMethod = method
        # Empty until a value is assigned: the base is then that value (completed to n x n).
        self.register_buffer("base", torch.zeros(0))

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        wide = x.shape[-2] < x.shape[-1]
        # conj_physical, not .mH: the gradient of a lazy conjugate is itself a lazy conjugate, which
        # the optimizers cannot view as real (Adam: "view_as_real doesn't work on unresolved
        # conjugated tensors"); for real tensors it is the plain transpose.
        tall = work.mT.conj_physical() if wide and work.is_complex() else (work.mT if wide else work)
        rows, cols = tall.shape[-2:]
        if _resolved(self.method, x.shape) == "thin":
            base = self.base.to(work.dtype) if self.base.numel() else _identity_columns(tall)
            # Capped lower than the square maps (float32's eps ** -1/4 = 53.8, rotation angles up to
            # about 100 radians): beyond, the rank-2k formula's rounding (which grows as |Z|^2 eps)
            # outgrows the polish. One cap for every dtype, float64's included (its own eps ** -1/4,
            # 8192, left errors of 2e-9 there), so that a move between dtypes rounds, never changes, the map.
            value = _thin_rotation(_cap_norm(tall, 0.25, torch.float32), base)
            return (value.mH.contiguous() if wide else value).to(x.dtype)
        if cols < rows:
            tall = torch.cat([tall, tall.new_zeros(*tall.shape[:-1], rows - cols)], -1)
        skew = tall * 0.5 - tall.mH * 0.5
        rotation = self._rotation(_cap_norm(skew))
        value = rotation[..., :cols]
        if self.base.numel():
            value = self.base.to(work.dtype) @ value
        return (value.mH.contiguous() if wide else value).to(x.dtype)

    def _rotation(self, skew: Tensor) -> Tensor:
        if self.method == "cayley":
            eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
            rotation = torch.linalg.solve(eye - skew, eye + skew)
        else:
            rotation = torch.matrix_exp(skew)
        # The polish only removes rounding: on an exactly orthogonal matrix it is the identity, and
        # its derivative there is the identity on the tangent directions the rotation moves in. So
        # the gradient is the rotation's, and the polish runs outside autograd: 2 matmuls forward
        # instead of 2 forward and 4 backward per step (n x n each; the 3 x Linear(256) step goes
        # from slower than geotorch's to on par).
        rotation = rotation.contiguous()  # solve returns column-major; the value is row-major
        with torch.no_grad():
            correction = _newton_schulz(_newton_schulz(rotation)) - rotation
        return rotation + correction

    def inverse(self, y: Tensor) -> Tensor:
        """Set the base to ``y`` (completed to a square orthogonal matrix) and return zeros.

        A value whose deviation from orthonormal is more than half the membership tolerance is
        replaced in the base by its polar factor (a change within the tolerance), so that the values
        computed from the base stay inside the set.
        """
        tall = _tall(y.to(torch.complex128 if y.is_complex() else torch.float64))
        drifted = _deviation(y.detach()) > matrix_tolerance(y.dtype, tall.shape[-2]) / 2
        if bool(drifted.any()):
            tall = torch.where(drifted, _polar(tall), tall)
        rows, cols = tall.shape[-2:]
        if cols < rows and _resolved(self.method, y.shape) != "thin":
            # Columns spanning the orthogonal complement: the last ones of a complete QR.
            complement = torch.linalg.qr(tall, mode="complete").Q[..., cols:]
            tall = torch.cat([tall, complement], -1)
        # A copy: parametrize passes the Parameter itself, whose storage it then overwrites.
        self.base = tall.detach().to(dtype=y.dtype, device=y.device, copy=True)
        self.__dict__.pop("_shapes_checked", None)  # the shapes the map accepts follow the base
        return torch.zeros_like(y)

    def check_shape(self, shape: torch.Size) -> None:
        super().check_shape(shape)
        base = self.base
        if base.numel() and len(shape) >= 2:
            side = max(shape[-2], shape[-1])
            if max(base.shape[-2], base.shape[-1]) != side or base.shape[:-2] != shape[:-2]:
                raise ShapeMismatchError(
                    f"{self!r}: its base was set by an inverse of a value whose matrices are "
                    f"{format_shape(base.shape)}, which does not fit a tensor "
                    f"of shape {format_shape(shape)}; use one Orthogonal per tensor shape."
                )

    @property
    def codomain(self) -> constraints.Constraint:
        return orthogonal

    def _excess(self, y: Tensor) -> Tensor:
        return _orthogonal_excess(y)

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        adjoint = "^H" if y.is_complex() else "^T"
        gram = f"Q Q{adjoint}" if y.shape[-2] < y.shape[-1] else f"Q{adjoint} Q"
        deviation = float(_deviation(y[index[:-2]]))
        tolerance = matrix_tolerance(y.dtype, max(y.shape[-2], y.shape[-1]))
        return (
            f"{matrix_label(index)} has |{gram} - I| = {format_value(deviation, y.dtype)} (spectral norm; at most "
            f"{tolerance:.2g} allowed)"
        )

    def to_interior(self, y: Tensor) -> Tensor:
        return _polar(finite_wide(y)).to(y.dtype)

    def riemannian_grad(self, point: Tensor, egrad: Tensor) -> Tensor:
        r"""The tangent part of ``egrad`` at ``Q`` for the Stiefel manifold's embedded metric:
        :math:`G - Q \operatorname{sym}(Q^\top G)` (rows instead of columns for a wide matrix)."""
        work = compute_dtype(point.dtype)
        q, g = _tall(point.to(work)), _tall(egrad.to(work))
        inner = q.mH @ g
        tangent = g - q @ (inner + inner.mH) * 0.5
        return (tangent.mH if point.shape[-2] < point.shape[-1] else tangent).to(egrad.dtype)

    def retract(self, point: Tensor, tangent: Tensor) -> Tensor:
        r"""The polar retraction, :math:`R_Q(V) = U W^\top` for the thin SVD :math:`Q + V = U S W^\top`:
        the nearest matrix with orthonormal columns (rows, if wide), orthonormal to the dtype's
        precision whatever the step's size."""
        work = compute_dtype(point.dtype)
        return _polar(point.to(work) + tangent.to(work)).to(point.dtype)

    def extra_repr(self) -> str:
        return "" if self.method == "auto" else f"method={self.method!r}"

    def _apply(self, fn: Any, recurse: bool = True) -> Transform:
        before = self.base.dtype
        result = super()._apply(fn, recurse)
        base = self.base
        if (
            base.numel()
            and base.device.type != "meta"
            and (base.is_floating_point() or base.is_complex())
            and torch.finfo(base.dtype).eps < torch.finfo(before).eps
        ):
            # Moved to a finer dtype, the base holds the old dtype's rounding and is orthogonal only
            # to that precision (1e-7 after float32 -> float64), which the finer tolerance refuses.
            # Two Newton-Schulz steps in float64 square the deviation twice: a change within the
            # old rounding, and orthogonal to the new precision (a move rounds, never changes the map).
            wide = torch.complex128 if base.is_complex() else torch.float64
            self.base = _newton_schulz(_newton_schulz(base.to(wide))).to(base.dtype)
        return result

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The base's shape is that of the value last assigned; a fresh transform has an empty one.
        incoming = state_dict.get(prefix + "base")
        if isinstance(incoming, Tensor) and incoming.shape != self.base.shape:
            self.base = torch.empty(incoming.shape, dtype=self.base.dtype, device=self.base.device)
        super()._load_from_state_dict(state_dict, prefix, *args)


def _identity_columns(like: Tensor) -> Tensor:
    """The first ``k`` columns of the ``n x n`` identity, for ``like`` of shape ``(*batch, n, k)``:
    the base before any assignment."""
    rows, cols = like.shape[-2:]
    return torch.eye(rows, cols, dtype=like.dtype, device=like.device).expand(like.shape)


def _thin_rotation(z: Tensor, base: Tensor) -> Tensor:
    r""":math:`e^{Z B^\top - B Z^\top} B` for ``n x k`` ``z`` and ``base``, without an ``n x n`` matrix.

    With :math:`U = [Z / s, B]` and :math:`V = [s B, -Z]` (:math:`U V^\top` is the skew matrix for
    every :math:`s`; :math:`s = \max(\lVert Z \rVert_F, 1)` puts the blocks of :math:`V^\top U` on
    one scale, which keeps the ``4k x 4k`` exponential accurate for large :math:`Z`), the value is
    :math:`B + U \varphi(V^\top U) V^\top B`. Two Newton--Schulz steps then pull
    :math:`Q^\top Q` to :math:`B^\top B` (not to :math:`I`): at :math:`Z = 0` the value is
    :math:`B` to the last bit, and elsewhere as orthonormal as the base."""
    cols = z.shape[-1]
    eye = torch.eye(cols, dtype=z.dtype, device=z.device).expand(*z.shape[:-2], cols, cols)
    scale = torch.linalg.matrix_norm(z.detach()).clamp_min(1.0)[..., None, None]
    across = base.mH @ z  # B^T Z
    gram = z.mH @ z
    small = torch.cat([torch.cat([across, scale * eye], -1), torch.cat([-gram / scale, -across.mH], -1)], -2)
    top = torch.cat([small, torch.eye(2 * cols, dtype=z.dtype, device=z.device).expand_as(small)], -1)
    phi = torch.matrix_exp(torch.cat([top, torch.zeros_like(top)], -2))[..., : 2 * cols, 2 * cols :]
    right = torch.cat([scale * eye, -across.mH], -2)  # V^T B
    value = base + torch.cat([z / scale, base], -1) @ (phi @ right)
    target = base.mH @ base
    for _ in range(2):
        value = value - 0.5 * (value @ (value.mH @ value - target))
    return value


def _cap_norm(skew: Tensor, power: float = 0.5, eps_of: torch.dtype | None = None) -> Tensor:
    """``skew`` scaled down to Frobenius norm ``eps ** -power`` (default ``1 / sqrt(eps)``; ``eps``
    of ``eps_of``, default ``skew``'s own dtype) where it
    is larger; exactly itself elsewhere. The norm is taken of a copy divided by its largest entry, so it cannot overflow, and
    the reciprocal is taken after the clamp, so no infinity reaches the gradient of a zero matrix."""
    largest = skew.detach().abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(skew.dtype).tiny)
    norm = torch.linalg.vector_norm(skew / largest, dim=(-2, -1), keepdim=True)
    limit = torch.finfo(eps_of or skew.dtype).eps ** -power
    return skew / ((largest / limit) * norm).clamp_min(1.0)


#: Matrices with orthonormal columns (rows, if wide), as a
#: :class:`torch.distributions.constraints.Constraint` (event_dim 2) with :class:`Orthogonal`'s
#: tolerance: ``orthogonal.check(value)`` is one boolean per matrix.
orthogonal = MatrixSet("Orthogonal()", _orthogonal_excess)
