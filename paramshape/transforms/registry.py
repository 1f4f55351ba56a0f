"""The registry table: the transform families enrol here under a name.

This is the bottom half of the registry, below the families that enrol in it with the
:func:`register` decorator. Turning a spec (a name string, a torch constraint, a pair of
functions) into a transform happens above the families, in :mod:`paramshape.spec.resolve`,
whose ``register`` is the public :func:`paramshape.register`.
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Callable
from typing import TypeVar, overload

from paramshape.errors import RegistryError, SpecError
from paramshape.transforms.base import Transform

__all__ = ["available", "register", "registered_class"]

TransformType = TypeVar("TransformType", bound=type[Transform])

_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")
_REGISTRY: dict[str, type[Transform]] = {}


@overload
def register(name: str) -> Callable[[TransformType], TransformType]: ...
@overload
def register(name: str, transform: TransformType) -> TransformType: ...
def register(
    name: str, transform: TransformType | None = None
) -> TransformType | Callable[[TransformType], TransformType]:
    """Enrol a :class:`~paramshape.Transform` subclass under ``name`` (decorator or call).

    The families use this as a decorator; users call :func:`paramshape.register`, which also
    accepts a pair of functions. Re-registering the same class (same module and qualified name,
    as when a notebook cell is run again) replaces the entry; another class under a taken name
    raises :class:`~paramshape.RegistryError`.
    """

    def decorator(cls: TransformType) -> TransformType:
        _check_name(name)
        if not (isinstance(cls, type) and issubclass(cls, Transform)):
            raise RegistryError(f"register({name!r}) needs a subclass of paramshape.Transform; got {cls!r}.")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing) != _qualified(cls):
            raise RegistryError(
                f"The name {name!r} is already registered to {_qualified(existing)}; choose another "
                "name for " + _qualified(cls) + "."
            )
        _REGISTRY[name] = cls
        return cls

    return decorator if transform is None else decorator(transform)


def available() -> tuple[str, ...]:
    """The registered transform names, sorted.

    Example:
        >>> import paramshape as ps
        >>> [name for name in ps.available() if name in ("box", "positive", "simplex")]
        ['box', 'positive', 'simplex']
    """
    return tuple(sorted(_REGISTRY))


def registered_class(name: str) -> type[Transform]:
    """The class registered under ``name``; :class:`SpecError` listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        raise SpecError(
            f"Unknown transform {name!r}.{suggestion} Registered names: {', '.join(available())}."
        ) from None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise RegistryError(
            f"Transform names are lowercase snake_case identifiers such as 'my_box'; got {name!r}."
        )
    if name in ("inf", "nan"):
        raise RegistryError(f"{name!r} is reserved for numbers in spec strings.")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
