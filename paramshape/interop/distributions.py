"""torch.distributions interop: constraint objects as specs, and :class:`TorchTransform`, which wraps
any bijective ``torch.distributions.transforms.Transform`` as a paramshape transform."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions import transforms as torch_transforms

from paramshape.errors import SpecError, SpecTypeError
from paramshape.errors.report import format_index
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import elementwise_excess
from paramshape.transforms.registry import available, registered_class

__all__ = [
    "TorchTransform",
    "constraint_excess",
    "describe_constraint_failure",
    "from_constraint",
    "interior_through",
    "toward_centre",
]


# --------------------------------------------------------------------------- constraint specs
def from_constraint(constraint: constraints.Constraint) -> Transform:
    """The paramshape transform for a :mod:`torch.distributions.constraints` object.

    paramshape's own transform where it has one (with the constraint's bounds), otherwise
    ``torch.distributions.biject_to(constraint)`` wrapped in :class:`TorchTransform`:

    ======================================================  =========================================
    constraint                                              transform
    ======================================================  =========================================
    ``real``, ``real_vector``                                ``Affine()`` (the identity)
    ``positive``, ``nonnegative``                            ``Positive()``
    ``greater_than(l)``, ``greater_than_eq(l)``              ``GreaterThan(l)``
    ``less_than(h)``                                         ``LessThan(h)``
    ``unit_interval``                                        ``UnitInterval()``
    ``interval(l, h)``, ``half_open_interval(l, h)``         ``Box(l, h)``
    ``simplex``                                              ``Simplex(method="ilr")`` (bijective, as
                                                             ``biject_to`` is)
    ``corr_cholesky``, ``lower_cholesky``,                   paramshape's ``CorrCholesky()``, ...,
    ``positive_definite``, ``symmetric``                     where registered
    ``independent(c, n)``                                    the transform for ``c``
    anything else ``biject_to`` knows                        ``TorchTransform(biject_to(c))``
    ======================================================  =========================================

    Closed sets (``nonnegative``, ``greater_than_eq``, ``half_open_interval``) map to the open ones:
    a bijection from the real numbers reaches every interior point, as ``biject_to`` does.

    Raises:
        SpecError: ``biject_to`` has no bijection for the constraint either (``boolean``, integer
            sets, ``square``, ...); the message names the constraint.

    Example:
        >>> import paramshape as ps
        >>> from torch.distributions import constraints
        >>> ps.resolve(constraints.interval(0.0, 2.0))
        Box(low=0.0, high=2.0)
        >>> ps.resolve(constraints.positive)
        Positive()
    """
    from paramshape.transforms.elementwise.affine import Affine
    from paramshape.transforms.elementwise.interval import Box, UnitInterval
    from paramshape.transforms.elementwise.positive import GreaterThan, LessThan, Positive
    from paramshape.transforms.vector.simplex import Simplex

    if isinstance(constraint, constraints._IndependentConstraint):
        return from_constraint(constraint.base_constraint)
    kind = type(constraint)
    if kind is constraints._Real:
        return Affine()
    # The kinds are compared exactly (a subclass may mean another set); the casts tell the type
    # checker what the comparison established.
    if kind in (constraints._GreaterThan, constraints._GreaterThanEq):
        low = cast(constraints._GreaterThan, constraint).lower_bound
        return Positive() if _is_number(low, 0.0) else GreaterThan(low)
    if kind is constraints._LessThan:
        return LessThan(cast(constraints._LessThan, constraint).upper_bound)
    if kind in (constraints._Interval, constraints._HalfOpenInterval):
        interval = cast(constraints._Interval, constraint)
        low, high = interval.lower_bound, interval.upper_bound
        if _is_number(low, 0.0) and _is_number(high, 1.0):
            return UnitInterval()
        return Box(low, high)
    if kind is constraints._Simplex:
        return Simplex(method="ilr")
    name = _REGISTERED.get(kind)
    if name is not None and name in available():
        return registered_class(name)()
    try:
        bijection = biject_to(constraint)
    except NotImplementedError:
        raise SpecError(
            f"No bijection onto the torch constraint {constraint!r} ({kind.__name__}): neither "
            "paramshape nor torch.distributions.biject_to has one. Constrain with a paramshape "
            f"transform instead; registered names: {', '.join(available())}."
        ) from None
    return TorchTransform(bijection)


# Matrix constraints that paramshape transforms cover, by registered name (looked up at call time,
# so this module does not depend on the matrix family's).
_REGISTERED: dict[type, str] = {
    constraints._CorrCholesky: "corr_cholesky",
    constraints._LowerCholesky: "lower_cholesky",
    constraints._PositiveDefinite: "positive_definite",
    constraints._Symmetric: "symmetric",
}


def _is_number(bound: object, value: float) -> bool:
    """Whether ``bound`` is the plain number ``value`` (a Python number or a 0-d tensor)."""
    if isinstance(bound, Tensor):
        return bound.dim() == 0 and float(bound) == value
    return isinstance(bound, (int, float)) and not isinstance(bound, bool) and float(bound) == value


# ------------------------------------------------------------------------ generic membership
def constraint_excess(constraint: constraints.Constraint, y: Tensor) -> Tensor:
    """Float64 excess of ``y`` outside a torch constraint, keepdim over its event dimensions.

    Constraints with a ``lower_bound`` or ``upper_bound`` (intervals, half-lines) get paramshape's
    tolerance of a few ulps of the bound, so a value that rounds onto an open bound is accepted as
    the forward map produced it. Other constraints use their own ``check``; an entry that fails has
    excess 1 (a distance is not known) and one that passes 0.
    """
    low = _bound(getattr(constraint, "lower_bound", None), y)
    high = _bound(getattr(constraint, "upper_bound", None), y)
    if constraint.event_dim == 0 and (low is not None or high is not None):
        return elementwise_excess(y, low, high)
    passed = torch_typed.constraint_check(constraint, y)
    for _ in range(constraint.event_dim):
        passed = passed.unsqueeze(-1)
    return torch.where(passed, 0.0, 1.0).to(torch.float64)


def _bound(value: object, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    bound = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    return bound if bool(torch.isfinite(bound).any()) else None


def describe_constraint_failure(constraint: constraints.Constraint, y: Tensor, index: tuple[int, ...]) -> str:
    """``the value at [0, 2] fails Simplex().check``."""
    kind = "slice" if constraint.event_dim else "value"
    return f"the {kind} at {format_index(index)} fails {type(constraint).__name__.lstrip('_')}().check"


def interior_through(transform: Transform, y: Tensor) -> Tensor:
    """A point inside the set for each value, found through the unconstrained space: non-finite
    values read as 0, mapped back with :meth:`~paramshape.Transform.inverse`, each coordinate
    clamped to :math:`\\pm\\log(1 / \\text{INTERIOR\\_FRACTION})` (about 6.9, where a sigmoid's slope
    is still about 1e-3 of its largest) and mapped forward again. For transforms that know no
    better (a wrapped torch transform, a pair of functions)."""
    clean = torch.where(torch.isfinite(y), y, torch.zeros_like(y))
    radius = math.log(1 / INTERIOR_FRACTION)
    with torch.no_grad():
        u = transform.inverse(clean)
        u = torch.where(torch.isfinite(u), u, torch.zeros_like(u)).clamp(-radius, radius)
        return toward_centre(transform, transform.forward(u))


def toward_centre(transform: Transform, value: Tensor) -> Tensor:
    """For elementwise transforms, move each value 8 ulps (of itself, in its dtype) toward the image
    of 0, where that stays in the set. A point a thousandth inside the set in the unconstrained space
    can round onto a bound in a narrow dtype (``sigmoid(6.9)`` is 1.0 in bfloat16), where the slope is
    dead; 8 ulps is the margin paramshape's own ``to_interior`` keeps from a bound. Vector and matrix
    values are returned as they are."""
    if transform.event_dim:
        return value
    with torch.no_grad():
        zero = torch.zeros(transform.inverse_shape(value.shape), dtype=value.dtype, device=value.device)
        centre = transform.forward(zero).double()
        current = value.double()
        finfo = torch.finfo(value.dtype)
        step = torch.minimum(8 * finfo.eps * current.abs().clamp_min(finfo.tiny), (centre - current).abs())
        moved = (current + torch.sign(centre - current) * step).to(value.dtype)
        return torch.where(transform.contains(moved), moved, value)


# ------------------------------------------------------------------------------ the wrapper
class TorchTransform(Transform):
    r"""A bijective ``torch.distributions.transforms.Transform`` used as a paramshape transform.

    .. math::

        f(x) = t(x), \qquad f^{-1}(y) = t^{-1}(y), \qquad
        \log\lvert\det J_f(x)\rvert = t.\text{log\_abs\_det\_jacobian}(x, y)

    Everything is delegated to the wrapped transform ``t``: the maps, the log-det-Jacobian, the
    shapes (``forward_shape``/``inverse_shape``, so ``biject_to(simplex)``'s ``K - 1 -> K`` works),
    the event dimensions (the trailing ``t.codomain.event_dim``) and :attr:`codomain`. Half
    precision is computed in float32, as everywhere in paramshape. Membership uses the codomain's
    ``check``, except for bounded elementwise sets (intervals, half-lines), which get paramshape's
    tolerance of a few ulps of the bound. :meth:`to_interior` goes through the unconstrained space
    (:func:`interior_through`).

    The contract is only as good as the wrapped transform: torch's ``ExpTransform`` overflows to
    ``inf`` for large inputs and ``StickBreakingTransform``'s inverse of a vertex is ``-inf``;
    :func:`paramshape.testing.check_transform` says which property a wrapped transform breaks.
    Tensor settings of ``t`` (an ``AffineTransform``'s ``loc``) are plain attributes, not buffers:
    they do not follow ``.to()`` or ``state_dict``; paramshape's own transforms do.

    * Domain: ``t.domain``.
    * Codomain: ``t.codomain``.

    Args:
        transform: a bijective ``torch.distributions.transforms.Transform``.

    Raises:
        SpecTypeError: ``transform`` is not a torch ``Transform``.
        SpecError: it is not bijective (``SoftmaxTransform``: use :class:`Simplex`).

    Example:
        >>> import torch, paramshape as ps
        >>> from torch.distributions import transforms
        >>> t = ps.TorchTransform(transforms.SigmoidTransform())
        >>> t
        TorchTransform(SigmoidTransform())
        >>> t(torch.tensor([0.0])), bool(t.contains(torch.tensor([1.5])))
        (tensor([0.5000]), False)
    """

    def __init__(self, transform: torch_transforms.Transform) -> None:
        super().__init__()
        if not isinstance(transform, torch_transforms.Transform):
            raise SpecTypeError(
                f"TorchTransform wraps a torch.distributions.transforms.Transform; got {type(transform).__name__}."
            )
        if not transform.bijective:
            raise SpecError(
                f"TorchTransform needs a bijective transform; {type(transform).__name__} is not "
                "(for SoftmaxTransform use ps.Simplex())."
            )
        self.transform = transform
        # Per instance: the ClassVar defaults of Transform do not fit a wrapper of any torch transform.
        self.event_dim = transform.codomain.event_dim  # type: ignore[misc]
        self.element_noun = "slices" if self.event_dim else "values"  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TorchTransform({' '.join(repr(self.transform).split())})"

    def forward(self, x: Tensor) -> Tensor:
        value: Tensor = self.transform(x.to(compute_dtype(x.dtype)))
        return value.to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        stored: Tensor = self.transform.inv(y.to(compute_dtype(y.dtype)))
        return stored.to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """The wrapped transform's ``log_abs_det_jacobian(x, y)``, computed as the maps are."""
        work = compute_dtype(x.dtype)
        # torch.distributions' Transform methods are unannotated.
        log_det: Tensor = self.transform.log_abs_det_jacobian(x.to(work), y.to(work))  # type: ignore[no-untyped-call]
        return log_det.to(x.dtype)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(self.transform.forward_shape(shape))  # type: ignore[no-untyped-call]  # unannotated in torch

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(self.transform.inverse_shape(shape))  # type: ignore[no-untyped-call]  # unannotated in torch

    def domain_coordinates(self, x: Tensor) -> Tensor:
        count = self.transform.domain.event_dim
        return x.reshape(*x.shape[: x.dim() - count], -1)

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        """All entries of each event; for a simplex, all but the last (which is one minus the
        others), the coordinates torch's ``StickBreakingTransform`` measures its density in."""
        flat = super().codomain_coordinates(y)
        return flat[..., :-1] if isinstance(self.codomain, constraints._Simplex) else flat

    @property
    def codomain(self) -> constraints.Constraint:
        return self.transform.codomain

    @property
    def domain(self) -> constraints.Constraint:
        return self.transform.domain

    def _excess(self, y: Tensor) -> Tensor:
        return constraint_excess(self.codomain, y)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_constraint_failure(self.codomain, y, index)

    def to_interior(self, y: Tensor) -> Tensor:
        return interior_through(self, y)
