"""Bound handling shared by the elementwise transforms: conversion, validation, membership and the
messages that go with them."""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_index, format_scalar, format_setting, format_shape, tensor_label
from paramshape.numerics import torch_typed
from paramshape.numerics.host import host_reads_free
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
    "positive_setting",
]

#: What a bound may be given as: a number, a tensor, or a (nested) sequence of numbers.
BoundLike = float | int | Tensor | Sequence[float]


def as_bound(value: BoundLike, name: str, owner: str, *, exact: bool = False) -> Tensor:
    """Convert a bound to a floating tensor (the default dtype unless already floating; with
    ``exact``, float64 for Python numbers and lists, so ``1e-4`` is read as the float64 number 1e-4).

    Raises :class:`SpecError` for booleans, complex or non-numeric values and for NaN.
    """
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise SpecError(f"{owner}: '{name}' must be a real number or tensor, not a boolean.")
    try:
        tensor = torch.as_tensor(value)
        if (
            exact
            and tensor.is_floating_point()
            and not isinstance(value, Tensor)
            and not hasattr(value, "__array__")
        ):
            tensor = torch.as_tensor(value, dtype=torch.float64)
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
            result = torch_typed.broadcast_shapes(bound.shape, shape)
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
    return excess.broadcast_to(torch_typed.broadcast_shapes(excess.shape, y.shape))


def describe_bound_violation(
    y: Tensor, index: tuple[int, ...], low: Tensor | None, high: Tensor | None
) -> str:
    """``value 1.7 at [2, 3] is above high=1.0``."""
    shape = y.shape
    for bound in (low, high):
        if bound is not None:
            shape = torch_typed.broadcast_shapes(shape, bound.shape)
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

    Bounds changed behind the transform's back are caught before they reach a value: assigning one
    (``transform.low = 0.5``) is checked like a construction, and an in-place write
    (``transform.low.fill_(nan)``, ``.copy_(...)``) is noticed by the bounds' version counters at the
    next read of the constrained tensor (or membership check, or projection), which then re-checks
    them: valid new bounds take effect, invalid ones raise :class:`SpecError` naming the tensor.

    Learnable bounds (``learnable=True`` of the subclasses that take it) are stored as
    :class:`~torch.nn.Parameter` s instead (named by ``_learnable_names``, from which
    :meth:`_learned_bounds` computes the bounds at every read, with their gradients), so that an
    optimizer trains them with the model; the same version counters then notice each optimizer
    step, and the re-check also refuses a bound that is no longer finite (a diverged step).
    """

    bound_names: ClassVar[tuple[str, ...]] = ()
    #: Whether the bounds are trained (stored as parameters, see :meth:`_learned_bounds`).
    learnable: bool = False
    #: The names of the parameters learnable bounds are stored in.
    _learnable_names: ClassVar[tuple[str, ...]] = ()
    #: The bounds' version counters when they were last checked (``None`` before construction ends).
    _bound_versions: tuple[int, ...] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.bound_names and "_layout" in self.__dict__ and "_loading" not in self.__dict__:
            self._assign_bound(name, value)
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # A learnable Box stores its centre and spread, not ``low``/``high``: compute them.
        if name in type(self).bound_names and self.__dict__.get("learnable"):
            return self._bounds()[name]
        return super().__getattr__(name)

    def _store(self) -> dict[str, Tensor]:
        """The tensors the bounds are stored in: the bound buffers, or the learnable parameters."""
        table, names = self._store_table()
        # The ignore: registered names always hold a tensor (torch types the slots Optional).
        return {name: table[name] for name in names}  # type: ignore[misc]

    def _store_table(self) -> tuple[Mapping[str, Tensor | None], tuple[str, ...]]:
        """Where :meth:`_store` reads the bounds' tensors: the table and the names, in order."""
        if self.learnable:
            return self._parameters, self._learnable_names
        return self._buffers, self.bound_names

    def _learned_bounds(self, store: dict[str, Tensor]) -> dict[str, Tensor]:
        """The bounds as functions of the learnable parameters (the identity by default: a learnable
        floor or ceiling is its own parameter)."""
        return dict(store)

    def _learnable_store(self, bounds: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        """The parameters, in ``dtype``, whose :meth:`_learned_bounds` are ``bounds`` (valid, in any
        floating dtype) to the precision of ``dtype``: the inverse of :meth:`_learned_bounds`."""
        return {name: bound.to(dtype) for name, bound in bounds.items()}

    def _check_learned(self, bounds: dict[str, Tensor]) -> Any:
        """:meth:`_analyse_bounds` of learnable bounds, which must also be finite."""
        for name, bound in bounds.items():
            ensure_finite(
                bound,
                name,
                type(self).__name__,
                "learnable bounds must stay finite (a diverged optimizer step? lower the learning "
                "rate, or load a checkpoint).",
            )
        return self._analyse_bounds(bounds)

    def _assign_bound(self, name: str, value: Any) -> None:
        """``transform.low = value``: checked as a construction would, in the bound's dtype and device,
        against the other bounds and the constrained tensor's shape; nothing changes on failure."""
        self._check_bounds_unchanged()
        if self.learnable:
            raise SpecError(
                f"{self._where()}'{name}' of {self!r} is learnable: it is computed from the parameters "
                f"{list(self._learnable_names)}. Write those in place under torch.no_grad() (checked "
                "at the next read), or load a state dict. The bound is unchanged."
            )
        current = self._buffers[name]
        assert current is not None
        where = self._where()
        try:
            exact = as_bound(value, name, type(self).__name__, exact=True)
            bound = exact.to(dtype=current.dtype, device=current.device)
            if _overflows(exact, bound):
                raise SpecError(
                    f"{name} overflows {str(current.dtype).removeprefix('torch.')}, the dtype of the bound "
                    f"it replaces (largest {format_scalar(torch.finfo(current.dtype).max)}): it would "
                    "become infinite."
                )
            bounds = {**self._bounds(), name: bound}
            if self._value_shape is not None:
                check_broadcast(bounds, self._value_shape, repr(self))
            layout = self._analyse_bounds(bounds)
        except SpecError as error:
            raise SpecError(
                f"{where}assigning '{name}' of {self!r}: {error} The bound is unchanged."
            ) from None
        self._buffers[name] = bound
        self._layout = layout
        self._exact = {**getattr(self, "_exact", {}), name: exact.to(torch.float64)}
        self._bounds_checked()

    def _where(self) -> str:
        """``'weight' of Linear (shape (2, 2), float32): `` for a bound transform, else ``""``."""
        like = self._value_like
        if not self._target or like is None or self._value_shape is None:
            return f"{self._target}: " if self._target else ""
        return f"{tensor_label(self._target, like.new_empty(self._value_shape, device='meta'))}: "

    def __deepcopy__(self, memo: dict[int, Any]) -> Transform:
        # A copy's bounds are new tensors, whose version counters start afresh: bounds that were
        # valid in the original are valid in the copy, so the copy does not check them again.
        new = super().__deepcopy__(memo)
        versions = self._bound_versions
        store = self._store()
        if (
            versions is not None
            and isinstance(new, BoundedTransform)
            and all(t._version == v for t, v in zip(store.values(), versions, strict=True))
        ):
            new._bounds_checked()
        return new

    def _bounds_checked(self, *, same_shapes: bool = False) -> None:
        """Remember the bounds' version counters: they are valid as they are now. ``same_shapes``:
        their shapes cannot have changed (written in place), so the shapes checked still hold."""
        stored = list(self._store().values())
        # Inference tensors (made under torch.inference_mode) have no version counter: not watched.
        watched = not any(t is None or t.is_inference() for t in stored)
        self.__dict__["_bound_versions"] = tuple(t._version for t in stored) if watched else None
        if not same_shapes:
            self.__dict__.pop("_shapes_checked", None)

    def _check_bounds_unchanged(self) -> None:
        """Re-check the bounds if one was written in place since they were last checked (a version
        counter moved): new valid bounds take effect (their layout and exact copy follow them),
        invalid ones raise :class:`SpecError` naming the tensor, the bound and its worst entry."""
        versions = self._bound_versions
        if versions is None:
            return
        # At every read: the table read directly, in _store's order, without building its dict.
        table, names = self._store_table()
        for name, version in zip(names, versions, strict=True):
            if table[name]._version != version:  # type: ignore[union-attr]  # registered: a tensor
                break
        else:
            return
        bounds = self._plain_bounds()
        if any(bound.device.type == "meta" for bound in bounds.values()):
            self._bounds_checked()  # no values to check; to_empty() brings the kept ones back
            return
        if self.learnable and not all(host_reads_free(bound) for bound in bounds.values()):
            # Learnable bounds change at every optimizer step, and this runs at the next read: on a
            # GPU a host check would wait for the device at every step. Finite learnable bounds keep
            # their layout (low < high by construction), so finiteness is all there is to check,
            # and it is asserted on the device (a non-finite bound stops the run there).
            # (The message names the tensor and the class, not the bounds' values: a repr reads them.)
            for name, bound in bounds.items():
                torch._assert_async(
                    torch.isfinite(bound).all(),
                    f"paramshape: {self._where()}the learnable bound '{name}' of {type(self).__name__} is "
                    "no longer finite (a diverged optimizer step? lower the learning rate, or load a "
                    "checkpoint).",
                )
            self._bounds_checked(same_shapes=True)
            return
        try:
            layout = self._check_learned(bounds) if self.learnable else self._analyse_bounds(bounds)
        except SpecError as error:
            where = self._where()
            shapes = ", ".join(
                f"'{n}' {format_shape(b.shape)} {str(b.dtype).removeprefix('torch.')}"
                for n, b in bounds.items()
            )
            if self.learnable:
                raise SpecError(
                    f"{where}the learnable bounds of {self!r} ({shapes}) changed (an optimizer step or a "
                    f"write to {list(self._learnable_names)}) and are no longer valid: {error} Every read "
                    "would be wrong, so none is made."
                ) from None
            raise SpecError(
                f"{where}a bound of {self!r} ({shapes}) was written in place behind the transform's back "
                f"and is no longer valid: {error} Every read would be wrong, so none is made. Set a bound "
                "by assignment (transform.low = value, checked), or constrain the tensor again with "
                "ps.constrain."
            ) from None
        self._layout = layout
        # The exact copy stays where the bound still holds its rounding (a write of the same value).
        self._exact = self._exact_bounds(bounds)
        # Learnable bounds change in place at every optimizer step, which keeps their shapes: the
        # shapes checked still hold (one shape check per step spared).
        self._bounds_checked(same_shapes=self.learnable)

    def _check_input_shape(self, shape: torch.Size) -> None:
        # Every read of a constrained tensor passes here (outside compiled regions): the cheapest
        # place to notice bounds written in place before they reach a value.
        self._check_bounds_unchanged()
        super()._check_input_shape(shape)

    def _set_bounds(self, learnable: bool = False, **given: BoundLike) -> None:
        """Convert the bounds as given (:func:`as_bound`) and register them as buffers.

        A bound given as a Python number (or list, or NumPy array) means that number at the tensor's
        precision: an exact float64 copy is kept (``_exact``, not in ``state_dict``) and every dtype
        move rebuilds the buffer from it, so ``GreaterThan(1e-4)`` on a float64 tensor is 1e-4 in
        float64, not the float32 rounding converted up. Until then the buffers hold the bounds in
        the default dtype (in a tensor bound's own dtype, promoted across bounds), or in float64 when
        a finite bound would overflow the default dtype (``Box(-1e300, 1e300)``: moving it to a
        dtype where it overflows is refused).
        """
        owner = type(self).__name__
        exact = {name: as_bound(value, name, owner, exact=True) for name, value in given.items()}
        working: torch.dtype | None = None
        for name, value in given.items():
            dtype = exact[name].dtype if isinstance(value, Tensor) else torch.get_default_dtype()
            working = dtype if working is None else torch.promote_types(working, dtype)
        bounds = {name: bound.to(working) for name, bound in exact.items()}
        if any(_overflows(exact[name], bound) for name, bound in bounds.items()):
            bounds = {name: bound.to(torch.float64) for name, bound in exact.items()}
        if not isinstance(learnable, bool):
            raise SpecError(f"{owner}: learnable must be True or False; got {learnable!r}.")
        if learnable:
            self._layout = self._check_learned(bounds)
            for name, value in self._learnable_store(bounds, bounds[self.bound_names[0]].dtype).items():
                self.register_parameter(name, torch.nn.Parameter(value))
            self.__dict__["learnable"] = True
            # The fused kernels take bounds as constants; looking them up would compute the bounds
            # once per bound and read, only for the dispatch to decline (they require grad).
            self.__dict__["fusable"] = None
            # The numbers given, at full precision: a dtype move of bounds not trained since (equal
            # to them within rounding) rebuilds from these, as fixed bounds do.
            self._exact = {name: bound.to(torch.float64) for name, bound in exact.items()}
            self._bounds_checked()
            return
        for name, bound in bounds.items():
            self.register_buffer(name, bound)
        self._exact = {name: bound.to(torch.float64) for name, bound in exact.items()}
        self._layout = self._analyse_bounds(bounds)
        self._bounds_checked()

    @abc.abstractmethod
    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> Any:
        """Raise :class:`SpecError` for invalid bounds; return what ``forward`` needs to know."""

    def _bounds(self) -> dict[str, Tensor]:
        """The bounds; learnable ones computed from their parameters, with their gradients."""
        if self.learnable:
            return self._learned_bounds(self._store())
        return {name: self._buffers[name] for name in self.bound_names}  # type: ignore[misc]

    def _plain_bounds(self) -> dict[str, Tensor]:
        """The bounds as plain values, without gradients (for checks, membership, projection)."""
        if self.learnable:
            with torch.no_grad():
                return {n: b.detach() for n, b in self._bounds().items()}
        return self._bounds()

    def _checked_bounds(self) -> dict[str, Tensor]:
        """The bounds, re-checked first if one was written in place (membership and projection)."""
        self._check_bounds_unchanged()
        return self._plain_bounds()

    def _low(self) -> Tensor | None:
        return self._checked_bounds().get("low")

    def _high(self) -> Tensor | None:
        return self._checked_bounds().get("high")

    def _excess(self, y: Tensor) -> Tensor:
        return elementwise_excess(y, self._low(), self._high())

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        return describe_bound_violation(y, index, self._low(), self._high())

    def check_shape(self, shape: torch.Size) -> None:
        bounds = self._bounds()
        if all(bound.dim() == 0 or bound.shape == shape for bound in bounds.values()):
            return  # the usual case, without building the repr the message would need
        check_broadcast(bounds, shape, repr(self))

    def extra_repr(self) -> str:
        # On the meta device the values are kept aside (see _apply); show those.
        bounds = getattr(self, "_meta_source", None) or self._plain_bounds()
        text = ", ".join(f"{name}={format_setting(bound)}" for name, bound in bounds.items())
        return text + (", learnable=True" if self.learnable else "")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.learnable:
            store = {name: state_dict.get(prefix + name, t) for name, t in self._store().items()}
            with torch.no_grad():
                incoming = self._learned_bounds({n: torch.as_tensor(t).detach() for n, t in store.items()})
            if all(b.device.type != "meta" for b in incoming.values()):
                layout = self._check_learned(incoming)
            else:
                layout = self._layout
            super()._load_from_state_dict(state_dict, prefix, *args)
            self._layout = layout
            self._bounds_checked()
            return
        incoming = {name: state_dict.get(prefix + name, bound) for name, bound in self._bounds().items()}
        kept = self.__dict__.get("_meta_source") or {}
        # A bound on ``meta`` that the checkpoint does not carry is checked at the value kept aside
        # when it went to meta (what to_empty() gives it back).
        incoming = {
            name: kept[name] if bound.device.type == "meta" and name in kept else bound
            for name, bound in incoming.items()
        }
        without_values = any(bound.device.type == "meta" for bound in incoming.values())
        layout = self._layout if without_values else self._analyse_bounds(incoming)
        # Checked together just above: ``assign=True`` sets each bound by attribute, which must not
        # check it one at a time against the other bound, still the old one (on ``meta``, no value).
        self.__dict__["_loading"] = True
        try:
            super()._load_from_state_dict(state_dict, prefix, *args)
        finally:
            del self.__dict__["_loading"]
        if without_values:  # nothing to check or to keep exactly
            return
        if any(bound.device.type == "meta" for bound in self._bounds().values()):
            return  # a bound the checkpoint lacks stays on meta; to_empty() gives it the kept value
        self._layout = layout
        # The checkpoint's numbers, at the precision it stored them, are the bounds from now on.
        self._exact = {name: bound.detach().to(torch.float64) for name, bound in self._bounds().items()}
        self._bounds_checked()

    def _exact_bounds(self, reference: dict[str, Tensor]) -> dict[str, Tensor]:
        """The bounds at full precision: the exact copy while ``reference`` (the buffers, or the
        values kept aside on ``meta``) still holds its rounding, else ``reference`` itself (changed in
        place since, or loaded)."""
        exact = getattr(self, "_exact", None) or {}
        result = {}
        for name, bound in reference.items():
            kept = exact.get(name)
            if (
                kept is None
                or bound.device.type == "meta"
                or not torch.equal(kept.to(bound.dtype).cpu(), bound.cpu())
            ):
                kept = bound.detach().to(torch.float64)
            result[name] = kept
        return result

    def check_conversion(self, fn: Any) -> None:
        """Raise :class:`SpecError` if ``fn`` (what ``module.half()``, ``.to(dtype)`` or
        ``.to_empty()`` applies to every tensor) would turn a finite bound infinite or leave invalid
        bounds; changes nothing. Lets a whole model be checked before any module is converted."""
        if self.learnable:
            self._converted_learned(fn)
            return
        converted, _ = self._converted_bounds(fn)
        if all(bound.device.type != "meta" for bound in converted.values()):
            self._analyse_bounds(converted)

    def _converted_bounds(self, fn: Any) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The bounds after ``fn``, checked, and the values kept aside from a move to ``meta`` that
        replace them when they come back (``to_empty()``), if any. A move to another dtype rebuilds
        each bound from its exact value (:meth:`_set_bounds`): one rounding, not two."""
        current = self._bounds()
        converted = {name: _convert(fn, bound) for name, bound in current.items()}
        was_meta = any(bound.device.type == "meta" for bound in current.values())
        to_meta = any(bound.device.type == "meta" for bound in converted.values())
        source = getattr(self, "_meta_source", None) if was_meta and not to_meta else None
        if source is None and not to_meta and not was_meta and _is_to_empty(fn):
            # to_empty() allocates every tensor anew, uninitialised: the bounds are settings, not
            # values to initialise, so they keep theirs (FSDP materialises models this way).
            source = {name: bound.detach() for name, bound in current.items()}
        if source is not None:
            converted = {
                name: source[name].to(device=bound.device, dtype=bound.dtype)
                for name, bound in converted.items()
            }
        if not to_meta:
            reference = source if source is not None else current
            exact = self._exact_bounds(reference)
            for name, bound in converted.items():
                if bound.is_floating_point() and bound.dtype != reference[name].dtype:
                    bound = converted[name] = exact[name].to(device=bound.device, dtype=bound.dtype)
                if _overflows(exact[name], bound):
                    raise SpecError(
                        f"{type(self).__name__}: converting '{name}' to {bound.dtype} would turn a finite "
                        f"bound into infinity (the largest {bound.dtype} is "
                        f"{format_scalar(torch.finfo(bound.dtype).max)}); use bounds within its range."
                    )
        return converted, source

    def _converted_learned(self, fn: Any) -> tuple[Any, dict[str, Tensor] | None]:
        """The layout of learnable bounds after ``fn`` converts their parameters, and the parameters'
        new values (``None, None`` on ``meta``), checked: a move that breaks them (``.half()`` of a
        bound beyond 65504) raises. A dtype move keeps the bounds, rounded once to the new dtype (the
        parameters are re-derived from them: converting the parameters alone would move a Box's
        bounds by its half-width floor, which depends on the dtype)."""
        with torch.no_grad():
            store = self._store()
            converted = {name: _convert(fn, tensor.detach()) for name, tensor in store.items()}
            if any(t.device.type == "meta" for t in converted.values()):
                return None, None
            kept = getattr(self, "_meta_source", None)
            if kept is None and _is_to_empty(fn):
                kept = {name: tensor.detach() for name, tensor in store.items()}
            if kept is not None and all(t.device.type != "meta" for t in kept.values()):
                # Back from meta (to_empty), or to_empty() of real bounds: the learnable bounds keep
                # their values instead of uninitialised memory.
                converted = {
                    name: kept[name].to(device=t.device, dtype=t.dtype) for name, t in converted.items()
                }
                store = {name: kept[name].to(device=t.device) for name, t in converted.items()}
            target = next(iter(converted.values()))
            if target.is_floating_point() and target.dtype != next(iter(store.values())).dtype:
                exact = {
                    name: bound.to(device=target.device, dtype=torch.float64)
                    for name, bound in self._untrained_exact(self._plain_bounds()).items()
                }
                try:
                    converted = self._learnable_store(exact, target.dtype)
                except SpecError as error:
                    raise SpecError(
                        f"{type(self).__name__}: converting the learnable bounds to {target.dtype}: {error}"
                    ) from None
            bounds = self._learned_bounds(converted)
        try:
            return self._check_learned(bounds), converted
        except SpecError as error:
            raise SpecError(
                f"{type(self).__name__}: the conversion would break the learnable bounds: {error}"
            ) from None

    def _untrained_exact(self, bounds: dict[str, Tensor]) -> dict[str, Tensor]:
        """The numbers the learnable bounds were given, where ``bounds`` (their current values) still
        equal them within a few units of their dtype's rounding (not trained since); else ``bounds``."""
        exact = getattr(self, "_exact", None) or {}
        if set(exact) != set(bounds) or any(b.device.type == "meta" for b in bounds.values()):
            return bounds
        for name, bound in bounds.items():
            kept = exact[name].to(bound.device)
            if kept.shape != bound.shape and kept.dim() > 0:
                return bounds
            slack = 4 * torch.finfo(bound.dtype).eps * kept.abs().clamp_min(torch.finfo(bound.dtype).tiny)
            if not bool(((bound.to(torch.float64) - kept).abs() <= slack).all()):
                return bounds
        return {name: exact[name].to(bound.device).expand_as(bound) for name, bound in bounds.items()}

    def _apply(self, fn: Any, recurse: bool = True) -> Transform:
        if self.learnable:
            # Parameters convert as any module's do; checked first, so a failing .half() changes nothing.
            store = self._store()
            if all(t.device.type != "meta" for t in store.values()) and any(
                _convert(fn, t.detach()).device.type == "meta" for t in store.values()
            ):
                # Kept aside for to_empty(), as fixed bounds are (see below).
                self._meta_source = {n: t.detach().cpu().clone() for n, t in store.items()}
            layout, values = self._converted_learned(fn)
            result = super()._apply(functools.partial(_convert, fn), recurse)
            if values is not None:
                self.__dict__.pop("_meta_source", None)
            if values is not None:
                with torch.no_grad():
                    for name, value in values.items():
                        parameter = self._parameters[name]
                        assert parameter is not None
                        if parameter.dtype == value.dtype and not torch.equal(parameter, value):
                            parameter.copy_(value)
                self._layout = layout
            self._bounds_checked()
            return result
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
        result = super()._apply(functools.partial(_convert, fn), recurse)
        if not to_meta:
            # The checked (and, on a dtype move, rebuilt) bounds, not fn's second conversion.
            for name, bound in converted.items():
                self._buffers[name] = bound
            self._layout = layout
        if source is not None:
            self.__dict__.pop("_meta_source", None)
        self._bounds_checked()
        return result


def _is_to_empty(fn: Any) -> bool:
    """Whether ``fn`` is the conversion of ``Module.to_empty()`` (fresh, uninitialised memory)."""
    return str(getattr(fn, "__qualname__", "")).startswith("Module.to_empty")


def _convert(fn: Any, tensor: Tensor) -> Tensor:
    """``fn(tensor)``; for a ``meta`` tensor that ``fn`` would copy out (``.to("cpu")``, which torch
    refuses: no data), an uninitialised tensor where ``fn`` would put it, for the values kept aside
    to replace."""
    if tensor.device.type != "meta":
        return cast(Tensor, fn(tensor))
    probe = fn(torch.empty(0, dtype=tensor.dtype))
    if probe.device.type == "meta":
        return cast(Tensor, fn(tensor))
    return torch.empty(tensor.shape, dtype=probe.dtype, device=probe.device)


def _overflows(exact: Tensor, bound: Tensor) -> bool:
    """Whether a finite entry of ``exact`` became infinite in ``bound``."""
    return not torch.equal(torch.isfinite(bound), torch.isfinite(exact).to(bound.device))


def positive_setting(value: object, setting: str, owner: str) -> float:
    """``value`` as a float; :class:`SpecError` naming ``owner`` and ``setting`` unless it is a
    positive finite number (booleans refused). The check of every scalar shape setting of the
    elementwise maps: ``slope``, ``softness``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SpecError(f"{owner}: {setting} must be a positive finite number; got {value!r}.")
    return float(value)
