"""Matrices with a positive determinant, GL+(n): :class:`PositiveDeterminant`.

A connected Lie group reached from a base point by the matrix exponential, the dynamic
trivialization :class:`~paramshape.Orthogonal` uses: :math:`f(X) = B e^{X}` with the base :math:`B`
set by assignment, and :math:`\\det e^{X} = e^{\\operatorname{tr} X} > 0`; and SL(n),
:class:`SpecialLinear`: the same product with a traceless exponent, divided by the :math:`n`-th root
of its determinant (computed in float64), since the rounding of the product with the base alone
moves the determinant by about cond(B) cond(e^X) epsilons.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.errors.report import format_index
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
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

__all__ = [
    "PositiveDeterminant",
    "SpecialLinear",
    "positive_determinant",
    "special_linear",
    "special_linear_tolerance",
]


def _generator_limit(dtype: torch.dtype) -> float:
    """The largest Frobenius norm of the exponent: :math:`\\tfrac14 \\log(1/\\epsilon)` of the value's
    dtype (1.7 for float16, 4.0 for float32, 9.0 for float64). :math:`e^{X}` then has condition number
    at most :math:`e^{2 \\lVert X \\rVert} \\le \\epsilon^{-1/2}`, so rounding its entries to the dtype
    can neither flip the sign of its determinant nor move it by more than the membership tolerance."""
    return 0.25 * math.log(1 / torch.finfo(dtype).eps)


def _cap(generator: Tensor, limit: float) -> Tensor:
    """``generator`` scaled down to Frobenius norm ``limit`` where it is larger; exactly itself
    elsewhere (the norm is taken of a copy divided by its detached largest entry: no overflow, and
    a zero matrix keeps a finite gradient)."""
    largest = (
        generator.detach().abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(generator.dtype).tiny)
    )
    norm: Tensor = largest * torch.linalg.vector_norm(generator / largest, dim=(-2, -1), keepdim=True)
    return generator / (norm / limit).clamp_min(1.0)


def _spectrum(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 ``(sign of det, log |det|, condition number)`` per matrix, ``(*batch, 1, 1)`` each,
    with NaN and infinity read as 0 (the callers mark those matrices)."""
    y64 = finite_float64(y)
    largest = y64.abs().amax((-2, -1), keepdim=True)
    scale = torch.where(largest > 0, largest, 1.0)
    sign, logabs = torch.linalg.slogdet(y64 / scale)
    singular = torch.linalg.svdvals(y64 / scale)
    condition = singular[..., :1] / singular[..., -1:]
    logabs = logabs + y.shape[-1] * torch.log(scale[..., 0, 0])
    return sign[..., None, None], logabs[..., None, None], condition[..., None]


def _positive_determinant_excess(y: Tensor) -> Tensor:
    """Per matrix: 0 for a positive determinant; for a negative one, how far the matrix lies from
    singular (its smallest over largest singular value) beyond :func:`matrix_tolerance`; so the test
    is on the closure, singular matrices included."""
    sign, _, condition = _spectrum(y)
    distance = torch.nan_to_num(1 / condition, nan=0.0)  # 1/inf = 0: singular
    excess = torch.where(sign > 0, 0.0, (distance - matrix_tolerance(y.dtype, y.shape[-1])).clamp_min(0.0))
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


def _interior(y: Tensor, unit_determinant: bool) -> Tensor:
    """A well-conditioned matrix with a positive determinant near ``y`` (float64): its SVD with the
    singular values raised to a thousandth of the largest and, for a negative determinant, the last
    left singular vector flipped; divided by :math:`\\det^{1/n}` for SL(n). A zero matrix gives I."""
    y64 = finite_float64(y)
    largest = y64.abs().amax((-2, -1), keepdim=True)
    scale = torch.where(largest > 0, largest, 1.0)
    u, s, vh = torch.linalg.svd(y64 / scale)
    s = torch.where(s[..., :1] > 0, s, 1.0)
    s = s.clamp_min(INTERIOR_FRACTION * s[..., :1])
    flip = torch.linalg.det(u @ vh) < 0
    u = torch.cat([u[..., :-1], torch.where(flip[..., None, None], -u[..., -1:], u[..., -1:])], -1)
    value: Tensor = (u * s[..., None, :]) @ vh
    if unit_determinant:
        value = value / torch.exp(torch.log(s).sum(-1) / y.shape[-1])[..., None, None]
    else:
        big = torch.finfo(y.dtype).max / (4 * y.shape[-1])
        value = value * scale.clamp_max(big)
    return value


class _Trivialized(MatrixTransform):
    """Shared code: :math:`f(X) = B e^{g(X)}` with a base :math:`B` set by assignment."""

    supports_raw_init = False  # the inverse sets the base; a raw stored tensor would move it twice
    bijective = False
    base: Tensor
    # One base matrix per stored matrix: a batch is inverted a block of matrices at a time.
    block_state = ("base",)
    _unit_determinant = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("base", torch.zeros(0))

    def _generator(self, work: Tensor) -> Tensor:
        return work

    def _limit(self, dtype: torch.dtype) -> float:
        """The exponent's cap for a tensor of ``dtype``: the smaller of that dtype's and the cap of
        the dtype the transform was constrained in (:meth:`map_dtype`), so a move to a wider dtype
        keeps the map (float32's 4.0 in float64), and a move to a narrower one is refused by
        :meth:`_check_stored_move` when an exponent lies beyond the narrower cap."""
        return min(_generator_limit(dtype), _generator_limit(self.map_dtype(dtype)))

    def _check_stored_move(self, stored: Tensor, dtype: torch.dtype) -> None:
        """Raise :class:`SpecError` if converting the stored exponent ``stored`` to ``dtype`` would
        change the value beyond rounding: the cap of ``dtype`` (1.7 for float16) is below the
        exponent's Frobenius norm, so the same stored numbers would map to another matrix. Changes
        nothing."""
        if stored.device.type == "meta" or not stored.numel() or dtype == stored.dtype:
            return
        if not (dtype.is_floating_point and stored.is_floating_point()):
            return  # refused elsewhere (a move to an integer or complex dtype)
        new, old = self._limit(dtype), self._limit(stored.dtype)
        if new >= old:
            return
        with torch.no_grad():
            generator = self._generator(stored.double())
            norms = torch.linalg.vector_norm(generator, dim=(-2, -1))
        if not bool((norms > new).any()):
            return
        flat = int(torch.argmax(norms.reshape(-1)))
        where = (
            tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), norms.shape)) if norms.dim() else ()
        )
        matrix = f"the matrix at {format_index(where)}" if where else "the matrix"
        raise SpecError(
            f"{self._target or repr(self)}: a move to {dtype} would change {self!r}'s value, not only round "
            f"it: {matrix} has an exponent of Frobenius norm {float(norms.reshape(-1)[flat]):.4g}, "
            f"above {dtype}'s cap {new:.4g} (beyond it, rounding to {dtype} could flip the "
            "determinant's sign). Re-assign the value first (layer.weight = layer.weight.detach(): it "
            "becomes the base and the exponent 0), then move."
        )

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        value = torch.matrix_exp(_cap(self._generator(work), self._limit(x.dtype)))
        if self.base.numel():
            value = self.base.to(work.dtype) @ value
        return value.to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        """Set the base to ``y`` and return zeros. A value inside the set only within the membership
        tolerance (nearly singular, or with a determinant off by rounding) is replaced in the base by
        the nearest well-conditioned member (:meth:`to_interior`), so later values stay inside."""
        base = y.double()
        marginal = self._excess_at(y, 0.5) > 0
        if bool(marginal.any()):
            base = torch.where(marginal, _interior(y, self._unit_determinant), base)
        # A copy: parametrize passes the Parameter itself, whose storage it then overwrites.
        self.base = base.detach().to(dtype=y.dtype, device=y.device, copy=True)
        return torch.zeros_like(y)

    def _excess_at(self, y: Tensor, fraction: float) -> Tensor:
        raise NotImplementedError

    def to_interior(self, y: Tensor) -> Tensor:
        return _interior(y, self._unit_determinant).to(y.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The base's shape is that of the value last assigned; a fresh transform has an empty one.
        incoming = state_dict.get(prefix + "base")
        if isinstance(incoming, Tensor) and incoming.shape != self.base.shape:
            self.base = torch.empty(incoming.shape, dtype=self.base.dtype, device=self.base.device)
        super()._load_from_state_dict(state_dict, prefix, *args)


@register("positive_determinant")
class PositiveDeterminant(_Trivialized):
    r"""Square matrices with a positive determinant, :math:`GL^+(n)`: invertible linear maps that
    keep orientation (invertible layers of normalising flows, changes of basis that must not reflect).

    .. math::

        f(X) = B\, e^{X}, \qquad f^{-1}(Y) = 0 \text{ with } B := Y

    A *dynamic trivialization*, as :class:`Orthogonal`: the base :math:`B` is a buffer (in
    ``state_dict``) that assignment sets to the assigned value, so ``init="keep"`` keeps it exactly;
    before any assignment :math:`B = I`. :math:`\det e^{X} = e^{\operatorname{tr} X} > 0`, so every
    value has the sign of :math:`\det B`. The exponent is scaled down to Frobenius norm
    :math:`\tfrac14 \log(1/\epsilon)` of the dtype where it is larger (4.0 in float32): each value
    is then within condition number :math:`\epsilon^{-1/2}` of the base, so its determinant's sign
    survives rounding. The cap is that of the dtype the tensor was constrained in, or of its current
    dtype if smaller: ``.double()`` keeps float32's 4.0 (the same map), and ``.half()`` is refused
    with :class:`SpecError`, before anything converts, while an exponent lies beyond float16's 1.7
    (re-assign the value first, which moves it into the base); training moves far beyond it only by assigning (or through the base of a
    checkpoint). ``init="raw"`` is refused; **not bijective** (no log-det-Jacobian); no projection
    (the set is open).

    * Domain: :math:`\mathbb{R}^{n \times n}`; leading dimensions are a batch.
    * Codomain: :math:`\{Y : \det Y > 0\}`, tested on its closure: a matrix with a negative
      determinant counts as a member only if its smallest singular value is within
      ``matrix_tolerance`` (about ``10 n`` epsilons) of the largest, i.e. singular to rounding.
      Such a value is replaced in the base by the nearest well-conditioned member on assignment.

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(3, 3), "weight", ps.PositiveDeterminant(), init="sample")
        >>> bool(torch.linalg.det(layer.weight) > 0)
        True
        >>> try:
        ...     layer.weight = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
        ... except ps.InfeasibleValueError as error:
        ...     print(str(error).split("worst: ")[1].split(".")[0])
        the matrix has determinant -1
    """

    def _excess(self, y: Tensor) -> Tensor:
        return _positive_determinant_excess(y)

    def _excess_at(self, y: Tensor, fraction: float) -> Tensor:
        sign, _, condition = _spectrum(y)
        margin = fraction * matrix_tolerance(y.dtype, y.shape[-1])
        return ((sign <= 0) | (1 / condition < margin)).to(torch.float64)

    @property
    def codomain(self) -> constraints.Constraint:
        return positive_determinant

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        det = float(torch.linalg.det(y.double()[index[:-2]]))
        return f"{matrix_label(index)} has determinant {format_value(det, y.dtype)}"


#: The largest tolerance on :math:`|\\log \\det Y|` that :class:`SpecialLinear` allows, however ill
#: conditioned ``Y``: beyond a condition number near ``1 / (n eps)`` the dtype holds no digit of the
#: determinant, and the test would accept anything with a positive one.
_LOG_DETERMINANT_CAP = 0.5


def special_linear_tolerance(y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Per matrix, ``(*batch, 1, 1)`` float64: how far :math:`\\log \\det Y` may lie from 0 for ``y`` in
    SL(n): ``(matrix_tolerance + n eps) cond(Y)``, at most :data:`_LOG_DETERMINANT_CAP`. Rounding
    each entry of ``Y`` by a relative ``eps / 2`` moves :math:`\\log \\det Y` by
    :math:`\\operatorname{tr}(Y^{-1} E) \\le \\tfrac{n}{2} \\operatorname{cond}(Y)\\,\\epsilon`; the
    matrix_tolerance part covers the products computed before the cast. ``dtype``: the precision
    the value was computed at, if coarser than ``y``'s (a float32 value moved to float64)."""
    _, _, condition = _spectrum(y)
    size = y.shape[-1]
    dtype = dtype or y.dtype
    per_unit = matrix_tolerance(dtype, size) + size * torch.finfo(dtype).eps
    return (per_unit * torch.nan_to_num(condition, nan=math.inf)).clamp_max(_LOG_DETERMINANT_CAP)


def _special_linear_excess(y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Per matrix: 0 for a positive determinant whose log lies within
    :func:`special_linear_tolerance` of 0; the log's excess beyond it otherwise (1 for a determinant
    at or below 0); infinite for a matrix holding NaN or infinity."""
    sign, logabs, _ = _spectrum(y)
    excess = (logabs.abs() - special_linear_tolerance(y, dtype)).clamp_min(0.0)
    excess = torch.where(sign > 0, torch.nan_to_num(excess, posinf=1.0), 1.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


@register("special_linear")
class SpecialLinear(_Trivialized):
    r"""Square matrices with determinant 1, :math:`SL(n)`: volume-preserving linear maps
    (incompressible flows, volume-preserving layers of normalising flows, shape-only deformations).

    .. math::

        f(X) = \frac{Y}{(\det Y)^{1/n}}, \quad Y = B\, e^{X - \frac{\operatorname{tr} X}{n} I}
        \ (\text{and } f(0) = B);
        \qquad f^{-1}(M) = 0 \text{ with } B := M

    A *dynamic trivialization*, as :class:`PositiveDeterminant`: the base :math:`B` is a buffer (in
    ``state_dict``) set by assignment; before any assignment :math:`B = I`. The exponent is made
    traceless, so :math:`\det Y = \det B = 1` in exact arithmetic; in floating point the product
    moves the determinant by about :math:`\operatorname{cond}(B) \operatorname{cond}(e^{X})`
    epsilons, so the value is divided by :math:`(\det Y)^{1/n}`, computed in float64 (an LU
    factorisation, differentiable): its determinant is then 1 to the rounding of its own entries.
    Where the stored matrix is exactly 0 the value is :math:`B` bit for bit (the division aims at
    :math:`\det B`, which lies within the membership tolerance of 1), so ``init="keep"`` keeps an
    assigned value exactly; the first step away from 0 moves the determinant to 1, a change within
    that tolerance. A value whose determinant is off by more than half the tolerance is stored
    divided by the ``n``-th root of its float64 determinant. The exponent is capped as :class:`PositiveDeterminant`'s (Frobenius norm
    :math:`\tfrac14 \log(1/\epsilon)`).
    ``init="raw"`` is refused; **not bijective** (no log-det-Jacobian); no projection (the Euclidean
    projection onto :math:`\det = 1` has no closed form: ``method="project"`` is refused).

    * Domain: :math:`\mathbb{R}^{n \times n}`; leading dimensions are a batch.
    * Codomain: :math:`\{M : \det M = 1\}`. Membership per matrix: a positive determinant with
      :math:`|\log \det M| \le (\text{matrix\_tolerance} + n \epsilon) \operatorname{cond}(M)`,
      at most 1/2: rounding each entry by half an ulp moves :math:`\log \det M` by up to
      :math:`\tfrac n2 \operatorname{cond}(M) \epsilon`, so no tighter test is possible for a
      matrix stored in the dtype (see docs/transforms.md, "Accuracy").

    Raises:
        ShapeMismatchError: (from :func:`paramshape.constrain`) the matrices are not square.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(3, 3), "weight", ps.SpecialLinear(), init="sample")
        >>> det = torch.linalg.det(layer.weight.double())
        >>> bool(abs(det - 1) < 1e-5)
        True
        >>> try:
        ...     layer.weight = 2 * torch.eye(3)
        ... except ps.InfeasibleValueError as error:
        ...     print(str(error).split("worst: ")[1].split(" (")[0])
        the matrix has determinant 8.0
    """

    _unit_determinant = True

    def _generator(self, work: Tensor) -> Tensor:
        size = work.shape[-1]
        trace = work.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        return work - (trace / size) * torch.eye(size, dtype=work.dtype, device=work.device)

    def forward(self, x: Tensor) -> Tensor:
        work = x.to(compute_dtype(x.dtype))
        value = torch.matrix_exp(_cap(self._generator(work), self._limit(x.dtype)))
        target = torch.zeros((), dtype=torch.float64, device=x.device)
        if self.base.numel():
            base = self.base.to(work.dtype)
            value = base @ value
            # Where the stored matrix is exactly 0 the value is the base, bit for bit: the rescaling
            # below then aims at det B (a factor of exactly 1) instead of 1, so an assigned value comes
            # back unchanged. det B is 1 within B's membership tolerance, so this is a step of at most
            # that tolerance, not a change of the set; the gradient is the same on both sides.
            at_base = (work == 0).all(-1).all(-1)
            base_log = torch.linalg.slogdet(base.double()).logabsdet
            # Only a base inside the set at this precision: one rounded by a move to a narrower
            # dtype and back (float16's determinant) is rescaled to 1 like any other value.
            inside = (
                base_log.abs() <= special_linear_tolerance(base, self._membership_dtype(x.dtype))[..., 0, 0]
            )
            target = torch.where(at_base & inside, base_log, 0.0)
        # det(value) is 1 only up to cond(B) cond(e^X) epsilons: rescale it, with the logs computed in
        # float64, so that the rescaling is the only rounding left.
        logabs = torch.linalg.slogdet(value.double()).logabsdet
        factor = torch.exp((target - logabs) / x.shape[-1])[..., None, None]
        return (value * factor.to(work.dtype)).to(x.dtype)

    def _excess_at(self, y: Tensor, fraction: float) -> Tensor:
        sign, logabs, _ = _spectrum(y)
        tolerance = special_linear_tolerance(y, self._membership_dtype(y.dtype))
        return ((sign <= 0) | (logabs.abs() > fraction * tolerance)).to(torch.float64)

    def inverse(self, y: Tensor) -> Tensor:
        """Set the base to ``y`` and return zeros; a value whose determinant is off by more than half
        the membership tolerance is stored divided by the ``n``-th root of its float64 determinant,
        so the values computed from the base keep a determinant within the tolerance."""
        marginal = self._excess_at(y, 0.5) > 0
        base = y.double()
        if bool(marginal.any()):
            logabs = torch.linalg.slogdet(base).logabsdet[..., None, None]
            base = torch.where(marginal, base / torch.exp(logabs / y.shape[-1]), base)
        # A copy: parametrize passes the Parameter itself, whose storage it then overwrites.
        self.base = base.detach().to(dtype=y.dtype, device=y.device, copy=True)
        return torch.zeros_like(y)

    def _membership_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The coarser of ``dtype`` and the dtype the map was constrained in: a float32 value moved
        to float64 has float32's determinant (1 within float32's tolerance), and must stay inside."""
        fixed = self.map_dtype(dtype)
        if fixed.is_floating_point and torch.finfo(fixed).eps > torch.finfo(dtype).eps:
            return fixed
        return dtype

    def _excess(self, y: Tensor) -> Tensor:
        return _special_linear_excess(y, self._membership_dtype(y.dtype))

    @property
    def codomain(self) -> constraints.Constraint:
        return special_linear

    def _describe_finite(self, y: Tensor, index: tuple[int, ...]) -> str:
        matrix = y[index[:-2]]
        det = float(torch.linalg.det(matrix.double()))
        allowed = float(special_linear_tolerance(matrix, self._membership_dtype(y.dtype)))
        return (
            f"{matrix_label(index)} has determinant {format_value(det, y.dtype)} (|log det| at most "
            f"{allowed:.2g} allowed for its condition number)"
        )


#: SL(n) as a :class:`torch.distributions.constraints.Constraint` (event_dim 2), with
#: :class:`SpecialLinear`'s tolerance.
special_linear = MatrixSet("SpecialLinear()", _special_linear_excess)


#: GL+(n) as a :class:`torch.distributions.constraints.Constraint` (event_dim 2), with
#: :class:`PositiveDeterminant`'s tolerance.
positive_determinant = MatrixSet("PositiveDeterminant()", _positive_determinant_excess)
