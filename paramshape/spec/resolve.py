"""Constraint specs and their resolution into transforms, and the public ``register``.

A *spec* says which transform to use. It is one of

* a :class:`~paramshape.Transform` instance: ``ps.Box(-1, 1)``;
* a :class:`~paramshape.Transform` subclass that takes no arguments: ``ps.Positive``;
* a registered name: ``"positive"``;
* a registered name with literal arguments: ``"box(-1, 1)"``, ``"simplex(dim=0)"``,
  ``"greater_than(low=0.5)"``, ``"box(0, inf)"``;
* a :mod:`torch.distributions.constraints` object: ``constraints.interval(0, 2)`` gives
  ``Box(0, 2)`` (paramshape's own transform where one exists, ``biject_to`` wrapped in
  :class:`~paramshape.TorchTransform` otherwise; see :func:`paramshape.interop.distributions.from_constraint`).

Strings let constraints live in configuration files. They are parsed, never evaluated.

Example:
    >>> import paramshape as ps
    >>> ps.resolve("box(-1, 1)")
    Box(low=-1.0, high=1.0)
    >>> "unit_interval" in ps.available()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import RegistryError, SpecError, SpecTypeError
from paramshape.interop.distributions import from_constraint
from paramshape.interop.function import TensorMap, function_transform_class
from paramshape.spec.parse import parse_spec
from paramshape.transforms.base import Transform
from paramshape.transforms.registry import available, registered_class
from paramshape.transforms.registry import register as enrol

__all__ = ["Spec", "available", "register", "resolve"]

#: Anything :func:`resolve` accepts.
Spec = Transform | type[Transform] | str | constraints.Constraint

TransformType = TypeVar("TransformType", bound=type[Transform])


@overload
def register(name: str) -> Callable[[TransformType], TransformType]: ...
@overload
def register(name: str, transform: TransformType) -> TransformType: ...
@overload
def register(
    name: str,
    *,
    forward: TensorMap,
    inverse: TensorMap,
    codomain: constraints.Constraint = ...,
    log_abs_det_jacobian: Callable[[Tensor, Tensor], Tensor] | None = ...,
) -> type[Transform]: ...
def register(
    name: str,
    transform: TransformType | None = None,
    *,
    forward: TensorMap | None = None,
    inverse: TensorMap | None = None,
    codomain: constraints.Constraint = constraints.real,
    log_abs_det_jacobian: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> TransformType | type[Transform] | Callable[[TransformType], TransformType]:
    """Register a :class:`~paramshape.Transform` subclass, or a pair of functions, under ``name``.

    Usable as a decorator (``@ps.register("my_name")``), as a call
    (``ps.register("my_name", MyTransform)``), or with two functions
    (``ps.register("cube", forward=..., inverse=..., codomain=...)``), which builds a
    :class:`~paramshape.FunctionTransform` subclass taking no arguments, checks the pair on a few
    points and registers it. Once registered, the name works wherever a spec is accepted, with or
    without literal arguments, and the contract test suite picks it up.

    Args:
        name: lowercase snake_case identifier (``[a-z][a-z0-9_]*``), so it parses in spec strings.
        transform: the class to register; omit it to get a decorator (or to give functions).
        forward: with ``inverse``: the forward map of a function transform.
        inverse: its inverse.
        codomain: the function transform's set (default ``constraints.real``).
        log_abs_det_jacobian: optional ``(x, y) -> Tensor`` for the function transform.

    Returns:
        The class itself (or a decorator returning it, or the new function-transform class).

    Raises:
        RegistryError: the name is malformed or already taken by another class, or both a class
            and functions are given. Re-registering the same class (same module and qualified
            name, as when a notebook cell is run again) replaces the entry instead.
        SpecError: the functions are not an inverse pair on the probe points.

    Example:
        >>> import torch, paramshape as ps
        >>> @ps.register("doc_example_negative")
        ... class Negative(ps.LessThan):
        ...     def __init__(self) -> None:
        ...         super().__init__(0.0)
        >>> ps.resolve("doc_example_negative")(torch.tensor([3.0])) < 0
        tensor([True])
        >>> Sinh = ps.register("doc_example_sinh", forward=torch.sinh, inverse=torch.asinh)
        >>> ps.resolve("doc_example_sinh")
        DocExampleSinh(forward=sinh, inverse=asinh, codomain=Real)
    """
    if forward is not None or inverse is not None:
        if transform is not None:
            raise RegistryError(f"register({name!r}) takes a class or forward/inverse functions, not both.")
        if forward is None or inverse is None:
            raise RegistryError(f"register({name!r}) needs both forward= and inverse=.")
        cls = function_transform_class(name, forward, inverse, codomain, log_abs_det_jacobian)
        return enrol(name, cls)
    return enrol(name) if transform is None else enrol(name, transform)


def resolve(spec: Spec) -> Transform:
    """Turn a spec into a :class:`~paramshape.Transform` instance (the instance itself if given one).

    Raises:
        SpecError: malformed string, unknown name (the message lists the registered ones),
            arguments the transform rejects, or a torch constraint that has no bijection.
        SpecTypeError: ``spec`` is none of the accepted kinds (also a ``TypeError``); a list or
            tuple of specs is refused with a pointer to :class:`~paramshape.Compose`.

    Example:
        >>> import paramshape as ps
        >>> ps.resolve("greater_than(low=0.5)")
        GreaterThan(low=0.5)
    """
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, type) and issubclass(spec, Transform):
        return _instantiate(spec, (), {}, spec.__name__)
    if isinstance(spec, str):
        parsed = parse_spec(spec)
        return _instantiate(registered_class(parsed.name), parsed.args, parsed.kwargs, spec)
    if isinstance(spec, constraints.Constraint):
        return from_constraint(spec)
    if isinstance(spec, (list, tuple)):
        raise SpecTypeError(
            f"A constraint spec is one transform, not a {type(spec).__name__}. To apply several "
            "transforms one after the other, use ps.Compose(a, b, ...)."
        )
    raise SpecTypeError(
        f"A constraint spec must be a paramshape.Transform, a Transform class, a string such as "
        f"'box(-1, 1)' or a torch.distributions constraint; got {type(spec).__name__}. "
        f"Registered names: {', '.join(available())}."
    )


def _instantiate(cls: type[Transform], args: tuple[Any, ...], kwargs: dict[str, Any], spec: str) -> Transform:
    try:
        return cls(*args, **kwargs)
    except TypeError as error:
        raise SpecError(f"Cannot build {cls.__name__} from spec {spec!r}: {error}.") from None
