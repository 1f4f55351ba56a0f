"""Bound handling shared by the elementwise transforms: conversion, validation, membership and the
messages that go with them."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_index, format_scalar, format_setting, format_shape
from paramshape.numerics.precision import excess_above, excess_below
from paramshape.transforms.base import Transform

__all__ = [
    "BoundLike",
    "BoundedTransform",
    "as_bound",
    "as_bound_pair",
    "check_broadcast",
    "describe_bound_violation",
    "elementwise_excess",
    "ensure_finite",
]

#: What a bound may be given as: a number, a tensor, or a (nested) sequence of numbers.
BoundLike = float | int | Tensor | Sequence[float]


def as_bound(value: BoundLike, name: str, owner: str) -> Tensor:
    """Convert a bound to a floating tensor (the default dtype unless already floating).

    Raises :class:`SpecError` for booleans, complex or non-numeric values and for NaN.
    """
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise SpecError(f"{owner}: '{name}' must be a real number or tensor, not a boolean.")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise SpecError(
            f"{owner}: '{name}' must be a real number or tensor; got {type(value).__name__}."
        ) from None
    if tensor.is_complex():
        raise SpecError(f"{owner}: '{name}' must be real; got a complex value.")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    tensor = tensor.detach().clone()
    if bool(torch.isnan(tensor).any()):
        where = _first_index(torch.isnan(tensor))
        raise SpecError(f"{owner}: '{name}' is NaN at {format_index(where)}; bounds must be numbers.")
    return tensor


def as_bound_pair(low: BoundLike, high: BoundLike, owner: str) -> tuple[Tensor, Tensor]:
    """:func:`as_bound` for a lower and an upper bound, promoted to one common dtype."""
    low_tensor, high_tensor = as_bound(low, "low", owner), as_bound(high, "high", owner)
    dtype = torch.promote_types(low_tensor.dtype, high_tensor.dtype)
    return low_tensor.to(dtype), high_tensor.to(dtype)


def ensure_finite(bound: Tensor, name: str, owner: str, advice: str) -> None:
    """Raise :class:`SpecError` if ``bound`` has an infinite entry."""
    if not bool(torch.isfinite(bound).all()):
        where = _first_index(~torch.isfinite(bound))
        value = bound[where].item() if bound.dim() else bound.item()
        raise SpecError(f"{owner}: '{name}' is {format_scalar(value)} at {format_index(where)}; {advice}")


def check_broadcast(bounds: dict[str, Tensor], shape: torch.Size, owner: str) -> None:
    """Raise :class:`ShapeMismatchError` unless every bound broadcasts to ``shape`` unchanged."""
    for name, bound in bounds.items():
        if bound.dim() == 0 or bound.shape == shape:
            continue  # torch.broadcast_shapes costs tens of microseconds; constrain() calls this per tensor
        try:
            result = torch.broadcast_shapes(bound.shape, shape)
        except RuntimeError:
            result = None
        if result != shape:
            raise ShapeMismatchError(
                f"{owner}: '{name}' has shape {format_shape(bound.shape)}, which does not broadcast "
                f"to the tensor's shape {format_shape(shape)}. Give a bound of a shape that does, "
                f"for example {format_shape(_per_row_example(shape))} for one bound per row."
            )


def elementwise_excess(y: Tensor, low: Tensor | None, high: Tensor | None) -> Tensor:
    """Float64 distance of each element outside ``[low, high]`` beyond the membership tolerance."""
    excess = torch.zeros((), dtype=torch.float64, device=y.device)
    if low is not None:
        excess = excess + excess_below(y, low)
    if high is not None:
        excess = excess + excess_above(y, high)
    if excess.shape == y.shape:  # bounds that broadcast to y: skip torch.broadcast_shapes, per check
        return excess
    return excess.broadcast_to(torch.broadcast_shapes(excess.shape, y.shape))


def describe_bound_violation(
    y: Tensor, index: tuple[int, ...], low: Tensor | None, high: Tensor | None
) -> str:
    """``value 1.7 at [2, 3] is above high=1.0``."""
    shape = y.shape
    for bound in (low, high):
        if bound is not None:
            shape = torch.broadcast_shapes(shape, bound.shape)
    value = y.broadcast_to(shape)[index].item()
    text = f"value {format_scalar(value, y.dtype)} at {format_index(index)}"
    if low is not None:
        low_value = low.broadcast_to(shape)[index].item()
        if value < low_value:
            return f"{text} is below low={format_scalar(low_value, low.dtype)}"
    if high is not None:
        high_value = high.broadcast_to(shape)[index].item()
        return f"{text} is above high={format_scalar(high_value, high.dtype)}"
    return text


def _first_index(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0]) if mask.dim() else ()


def _per_row_example(shape: torch.Size) -> tuple[int, ...]:
    return (shape[0],) + (1,) * (len(shape) - 1) if len(shape) else ()


class BoundedTransform(Transform):
    """Abstract base of the elementwise transforms whose settings are ``low``/``high`` buffers.

    Bounds are validated once, by :meth:`_analyse_bounds`, when they are set: at construction, when
    ``load_state_dict`` replaces them (before anything is copied), and after ``.to()``/``.half()``
    converts them (a finite bound that overflows the new dtype is an error, not a silently dropped
    bound). ``forward`` never checks them. Subclasses store what the analysis returns in ``_layout``.
    """

    bound_names: ClassVar[tuple[str, ...]] = ()

    def _set_bounds(self, **bounds: Tensor) -> None:
        for name, bound in bounds.items():
            self.register_buffer(name, bound)
        self._layout = self._analyse_bounds(bounds)

    @abc.abstractmethod
    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> Any:
        """Raise :class:`SpecError` for invalid bounds; return what ``forward`` needs to know."""

    def _bounds(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.bound_names}

    def _low(self) -> Tensor | None:
        return self._bounds().get("low")

    def _high(self) -> Tensor | None:
        return self._bounds().get("high")

    def _excess(self, y: Tensor) -> Tensor:
        return elementwise_excess(y, self._low(), self._high())

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_bound_violation(y, index, self._low(), self._high())

    def check_shape(self, shape: torch.Size) -> None:
        check_broadcast(self._bounds(), shape, repr(self))

    def extra_repr(self) -> str:
        # On the meta device the values are kept aside (see _apply); show those.
        bounds = getattr(self, "_meta_source", None) or self._bounds()
        return ", ".join(f"{name}={format_setting(bound)}" for name, bound in bounds.items())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        incoming = {name: state_dict.get(prefix + name, bound) for name, bound in self._bounds().items()}
        layout = self._analyse_bounds(incoming)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._layout = layout

    def check_conversion(self, fn: Any) -> None:
        """Raise :class:`SpecError` if ``fn`` (what ``module.half()``, ``.to(dtype)`` or
        ``.to_empty()`` applies to every tensor) would turn a finite bound infinite or leave invalid
        bounds; changes nothing. Lets a whole model be checked before any module is converted."""
        converted, _ = self._converted_bounds(fn)
        if all(bound.device.type != "meta" for bound in converted.values()):
            self._analyse_bounds(converted)

    def _converted_bounds(self, fn: Any) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The bounds after ``fn``, checked, and the values kept aside from a move to ``meta`` that
        replace them when they come back (``to_empty()``), if any."""
        current = self._bounds()
        converted = {name: fn(bound) for name, bound in current.items()}
        was_meta = any(bound.device.type == "meta" for bound in current.values())
        to_meta = any(bound.device.type == "meta" for bound in converted.values())
        source = getattr(self, "_meta_source", None) if was_meta and not to_meta else None
        if source is not None:
            converted = {
                name: source[name].to(device=bound.device, dtype=bound.dtype)
                for name, bound in converted.items()
            }
        if not to_meta:
            for name, bound in converted.items():
                reference = source[name] if source is not None else current[name]
                before = torch.isfinite(reference).to(bound.device)
                if not torch.equal(torch.isfinite(bound), before):
                    raise SpecError(
                        f"{type(self).__name__}: converting '{name}' to {bound.dtype} would turn a finite "
                        f"bound into infinity (the largest {bound.dtype} is "
                        f"{format_scalar(torch.finfo(bound.dtype).max)}); use bounds within its range."
                    )
        return converted, source

    def _apply(self, fn: Any, recurse: bool = True) -> BoundedTransform:
        # Convert copies first and check them, so a failing .half() leaves the bounds untouched
        # (instead of infinite bounds with a stale layout, which would make every value NaN).
        current = self._bounds()
        converted, source = self._converted_bounds(fn)
        to_meta = any(bound.device.type == "meta" for bound in converted.values())
        if to_meta and all(bound.device.type != "meta" for bound in current.values()):
            # A move to ``meta`` drops the values; keep them, so that ``to_empty()`` (the deferred
            # initialisation path) gets the same bounds back instead of uninitialised memory.
            self._meta_source = {name: bound.detach().cpu().clone() for name, bound in current.items()}
        layout = None if to_meta else self._analyse_bounds(converted)
        result = super()._apply(fn, recurse)
        if source is not None:
            for name, bound in converted.items():
                self._buffers[name] = bound
            del self._meta_source
        if not to_meta:
            self._layout = layout
        return result
