"""Transforms from a pair of functions: :class:`FunctionTransform`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError, SpecTypeError
from paramshape.errors.report import format_scalar
from paramshape.interop.distributions import constraint_excess, describe_constraint_failure, interior_through
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.base import Transform

__all__ = ["FunctionTransform", "TensorMap", "function_transform_class"]

#: A function from tensors to tensors of the same shape.
TensorMap = Callable[[Tensor], Tensor]

# Where the pair is tried at construction, per event dimension of the codomain: a spread of
# moderate values, and the shape of one small batch of events.
_PROBES = torch.tensor([-3.0, -1.0, -0.1, 0.0, 0.1, 1.0, 3.0], dtype=torch.float64)
_EVENT_SHAPES = {0: (7,), 1: (3, 4), 2: (2, 3, 3)}


class FunctionTransform(Transform):
    r"""A transform made of two functions, ``forward`` and its ``inverse``.

    .. math::

        f(x) = \text{forward}(x), \qquad f^{-1}(y) = \text{inverse}(y)

    The quick route to a custom transform: no subclass, only the two maps and the set, given as a
    :mod:`torch.distributions.constraints` object. At construction the pair is tried on a few
    float64 points (:math:`\pm 3, \pm 1, \pm 0.1, 0` elementwise; a fixed random draw of shape
    ``(3, 4)`` or ``(2, 3, 3)`` for vector or matrix codomains): the values must be finite and in
    ``codomain``, ``forward(inverse(y))`` must give ``y`` back and, for a bijective pair,
    ``inverse(forward(x))`` must give ``x`` back, each to :math:`\sqrt{\varepsilon}` relative
    accuracy (a check that the functions belong together, not of their precision;
    :func:`paramshape.testing.check_transform` checks that).

    The log-det-Jacobian is the ``log_abs_det_jacobian(x, y)`` function if one is given; otherwise,
    for an elementwise bijective pair, :math:`\log\lvert f'(x)\rvert` from autograd (floored at the
    smallest normal number, so it stays finite where the slope underflows).

    The functions must keep the shape, work in the input's dtype (float16 and bfloat16 inputs are
    passed to them in float32), and be pure tensor math if the tensor is to be compiled. Membership
    uses ``codomain.check``, with paramshape's few-ulp tolerance for bounded elementwise sets;
    :meth:`to_interior` goes through the unconstrained space. For a shape-changing map, settings
    that must follow ``.to()`` or a better ``to_interior``, subclass :class:`Transform` instead
    (see ``docs/registry.md``). To give the pair a name usable in spec strings, use
    ``ps.register(name, forward=..., inverse=..., codomain=...)``.

    * Domain: :math:`\mathbb{R}^n` (``codomain.event_dim`` trailing dimensions per event).
    * Codomain: ``codomain``.

    Args:
        forward: the map from unconstrained tensors onto the set.
        inverse: its inverse on the set.
        codomain: the set (default: ``constraints.real``).
        log_abs_det_jacobian: optional ``(x, y) -> Tensor`` with torch's event-dimension rules.
        bijective: whether ``forward`` is a bijection onto ``codomain`` (default ``True``); when
            ``False``, only ``forward(inverse(y)) == y`` is required and there is no log-det-Jacobian.

    Raises:
        SpecTypeError: ``forward`` or ``inverse`` is not callable, or ``codomain`` is not a
            constraint.
        SpecError: the pair fails on the probe points; the message says how.

    Example:
        >>> import torch, paramshape as ps
        >>> from torch.distributions import constraints
        >>> arcsinh_scale = ps.FunctionTransform(torch.sinh, torch.asinh)  # log-like steps, any sign
        >>> arcsinh_scale(torch.tensor([0.0, 3.0]))
        tensor([ 0.0000, 10.0179])
        >>> rate = ps.FunctionTransform(torch.exp, torch.log, codomain=constraints.positive)
        >>> rate.log_abs_det_jacobian(torch.tensor([2.0]), rate(torch.tensor([2.0])))  # log e^x = x
        tensor([2.])
        >>> try:
        ...     ps.FunctionTransform(torch.exp, torch.log1p, codomain=constraints.positive)
        ... except ps.SpecError as error:
        ...     print(str(error)[:60])
        FunctionTransform(forward=exp, inverse=log1p, codomain=Great
    """

    def __init__(
        self,
        forward: TensorMap,
        inverse: TensorMap,
        codomain: constraints.Constraint = constraints.real,
        *,
        log_abs_det_jacobian: Callable[[Tensor, Tensor], Tensor] | None = None,
        bijective: bool = True,
    ) -> None:
        super().__init__()
        for label, function in (("forward", forward), ("inverse", inverse)):
            if not callable(function):
                raise SpecTypeError(
                    f"FunctionTransform: {label} must be callable; got {type(function).__name__}."
                )
        if not isinstance(codomain, constraints.Constraint):
            raise SpecTypeError(
                "FunctionTransform: codomain must be a torch.distributions.constraints object, e.g. "
                f"constraints.positive; got {type(codomain).__name__}."
            )
        if log_abs_det_jacobian is not None and not callable(log_abs_det_jacobian):
            raise SpecTypeError("FunctionTransform: log_abs_det_jacobian must be callable or None.")
        self._forward = forward
        self._inverse = inverse
        self._codomain = codomain
        self._ldj = log_abs_det_jacobian
        self.bijective = bool(bijective)
        # Per instance: the ClassVar defaults of Transform do not fit a wrapper of any constraint.
        self.event_dim = codomain.event_dim  # type: ignore[misc]
        self.element_noun = "slices" if self.event_dim else "values"  # type: ignore[misc]
        self._try_pair()

    def extra_repr(self) -> str:
        return (
            f"forward={_name(self._forward)}, inverse={_name(self._inverse)}, "
            f"codomain={type(self._codomain).__name__.lstrip('_')}"
        )

    # ------------------------------------------------------------------------------- the map
    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x.to(compute_dtype(x.dtype))).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        return self._inverse(y.to(compute_dtype(y.dtype))).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """The given function's result, or the log-slope from autograd for an elementwise pair.

        Raises:
            NotImplementedError: the pair is not bijective, or it is not elementwise and no
                ``log_abs_det_jacobian`` function was given.
        """
        if not self.bijective:
            raise NotImplementedError(self._no_jacobian_reason())
        work = compute_dtype(x.dtype)
        if self._ldj is not None:
            return self._ldj(x.to(work), y.to(work)).to(x.dtype)
        if self.event_dim:
            raise NotImplementedError(
                f"{self!r} acts on events of {self.event_dim} dimension(s); pass "
                "log_abs_det_jacobian=... to FunctionTransform (autograd gives it only for "
                "elementwise maps)."
            )
        with torch.enable_grad():
            point = x.to(work)
            if not point.requires_grad:
                point = point.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self._forward(point).sum(), point, create_graph=x.requires_grad)
        floor = torch.finfo(work).tiny
        return torch.log(slope.abs().clamp_min(floor)).to(x.dtype)

    # ------------------------------------------------------------------------------- the set
    @property
    def codomain(self) -> constraints.Constraint:
        return self._codomain

    def _excess(self, y: Tensor) -> Tensor:
        return constraint_excess(self._codomain, y)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_constraint_failure(self._codomain, y, index)

    def to_interior(self, y: Tensor) -> Tensor:
        return interior_through(self, y)

    # ------------------------------------------------------------------------------ checking
    def _try_pair(self) -> None:
        """Raise :class:`SpecError` unless the functions invert each other on the probe points."""
        shape = _EVENT_SHAPES.get(self.event_dim, (2,) + (3,) * self.event_dim)
        if self.event_dim == 0:
            x = _PROBES.clone()
        else:
            x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        accuracy = torch.finfo(torch.float64).eps ** 0.5
        with torch.no_grad():
            try:
                y = self._forward(x)
                _expect(isinstance(y, Tensor) and y.shape == x.shape, self, "forward must keep the shape")
                _expect(bool(torch.isfinite(y).all()), self, "forward gave non-finite values")
                _expect(
                    bool(torch_typed.constraint_check(self._codomain, y).all()),
                    self,
                    "forward left the codomain",
                )
                back = self._inverse(y)
                _expect(
                    isinstance(back, Tensor) and back.shape == y.shape, self, "inverse must keep the shape"
                )
                _expect(bool(torch.isfinite(back).all()), self, "inverse gave non-finite values")
                again = self._forward(back)
            except SpecError:
                raise
            except Exception as error:
                raise SpecError(f"{self!r}: the functions failed on float64 probe values: {error}") from error
        _close(again, y, accuracy, self, "forward(inverse(y)) != y")
        if self.bijective:
            _close(back, x, accuracy, self, "inverse(forward(x)) != x; pass bijective=False if intended")


def _expect(condition: bool, transform: FunctionTransform, what: str) -> None:
    if not condition:
        raise SpecError(f"{transform!r}: {what} on float64 probe values.")


def _close(got: Tensor, want: Tensor, accuracy: float, transform: FunctionTransform, what: str) -> None:
    error = (got - want).abs() / (1 + want.abs())
    if not bool((error <= accuracy).all()):
        worst = int(torch.argmax(error.nan_to_num(nan=torch.inf)))
        raise SpecError(
            f"{transform!r} is not an inverse pair: {what} (at {format_scalar(want.flatten()[worst].item())} "
            f"it gives {format_scalar(got.flatten()[worst].item())}). Check that inverse undoes forward."
        )


def _name(function: Callable[..., object]) -> str:
    return getattr(function, "__name__", type(function).__name__)


def function_transform_class(
    name: str,
    forward: TensorMap,
    inverse: TensorMap,
    codomain: constraints.Constraint,
    log_abs_det_jacobian: Callable[[Tensor, Tensor], Tensor] | None,
) -> type[FunctionTransform]:
    """A :class:`FunctionTransform` subclass without arguments, named after ``name`` in CamelCase
    (``"my_cube"`` -> ``MyCube``), for :func:`paramshape.register`. The pair is checked once here."""
    FunctionTransform(forward, inverse, codomain, log_abs_det_jacobian=log_abs_det_jacobian)
    class_name = "".join(part.capitalize() for part in name.split("_")) or "Function"

    def __init__(self: FunctionTransform) -> None:
        FunctionTransform.__init__(
            self, forward, inverse, codomain, log_abs_det_jacobian=log_abs_det_jacobian
        )

    doc = (
        f"Registered as {name!r} from functions: forward={_name(forward)}, inverse={_name(inverse)}.\n\n"
        ".. math::\n\n    f(x) = \\text{forward}(x), \\qquad f^{-1}(y) = \\text{inverse}(y)\n\n"
        f"* Domain: real tensors.\n* Codomain: {type(codomain).__name__.lstrip('_')}.\n\n"
        f"Example:\n    >>> import paramshape as ps\n    >>> ps.resolve({name!r})  # doctest: +SKIP\n"
    )
    return type(
        class_name, (FunctionTransform,), {"__init__": __init__, "__doc__": doc, "__module__": __name__}
    )
