"""Assigning an ``nn.Parameter`` to a constrained name.

``layer.weight = nn.Parameter(w)`` is the most natural way to set a weight, but on a constrained
``weight`` torch's ``Module.__setattr__`` takes any ``Parameter`` to ``register_parameter``, which
raises ``KeyError: "attribute 'weight' already exists"`` (the name is parametrize's property). The
``Parametrized<Cls>`` class of each module paramshape constrains gets a ``register_parameter`` that
treats a ``Parameter`` given for a constrained name as the value it holds: checked by the transform
(:meth:`~paramshape.Transform.admit`: dtype, device, shape, the set) and stored through its inverse,
exactly as ``layer.weight = w`` is. The module keeps its own stored tensor (what an optimizer built
earlier holds); the ``Parameter`` object given is not registered. ``register_parameter(name, None)``
on a constrained name raises :class:`~paramshape.ConstraintConflictError` saying to call
:func:`~paramshape.unconstrain` first.

A tensor kept plain (``method="project"``, ``"riemannian"``, ``"penalty"``, ``"lagrangian"``) is
replaced by a new ``Parameter`` as torch does it, but torch's global parameter-registration hook
(:func:`install_plain_assignment_check`) checks the new one first, as a checkpoint load is checked:
its shape, and for ``"project"`` and ``"riemannian"`` that it lies in the set (it would otherwise
stay outside until the next optimizer step, and forever in inference), for the other two that it
is finite. A refused ``Parameter`` is not registered; the module keeps its tensor.

Anything else assigned to a plain name (``layer.weight = 0.5``, a list, a NumPy array, a tensor)
torch refuses with a raw ``TypeError``; the module's ``__setattr__`` is the only place to intercept
it, so :func:`sync_plain_assignment` gives the module a per-instance subclass (named as the user's
class, pickled as it) whose ``__setattr__`` converts the value by the rule of the reparametrised
path (:func:`~paramshape.transforms.base.coerce_value`: the tensor's dtype and device, its shape or
one that broadcasts to it), checks it as a ``Parameter`` is checked above, and copies it into the
existing ``Parameter`` under ``no_grad`` (the same object, so an optimizer keeps stepping it). A
module parametrize already subclassed gets the method on that class instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from paramshape.errors import ConstraintConflictError, InfeasibleValueError, ShapeMismatchError
from paramshape.errors.report import format_shape, tensor_label
from paramshape.lookup.modules import (
    is_parametrized,
    paramshape_transform,
    type_before_parametrizations,
    type_name,
)
from paramshape.strategies.state import state_of
from paramshape.transforms.base import coerce_value

__all__ = [
    "install_parameter_assignment",
    "install_plain_assignment_check",
    "plain_base",
    "sync_plain_assignment",
]

_plain_hook: Any = None
_PLAIN_HINT = (
    "A tensor constrained with method='{method}' is projected only after an optimizer step; a "
    "{what} assigned to it must already lie in the set (project it first: "
    "transform.project(value)), or it would stay outside until then, and in inference for good."
)


def install_plain_assignment_check() -> None:
    """Register (once per process) torch's global parameter-registration hook that checks a
    ``Parameter`` assigned to a name paramshape keeps plain (see the module's docstring)."""
    global _plain_hook
    if _plain_hook is None:
        _plain_hook = nn.modules.module.register_module_parameter_registration_hook(_check_plain_assignment)


def _check_plain_assignment(module: nn.Module, name: str, param: Tensor) -> None:
    state = state_of(module)
    entry = state.plain.get(name) if state is not None else None
    if entry is None or param is entry.tensor:
        return
    label = f"'{name}' of {type_name(module)}"
    current = entry.tensor
    if param.shape != current.shape:
        raise ShapeMismatchError(
            f"{tensor_label(label, current)}: the Parameter assigned has shape {format_shape(param.shape)}; "
            f"the constrained tensor needs {format_shape(current.shape)}. Nothing was changed."
        )
    if param.device.type == "meta":
        return  # no values yet (deferred initialisation)
    _check_plain_value(entry, label, param.detach(), "Parameter")


def _check_plain_value(entry: Any, label: str, value: Tensor, what: str) -> None:
    """Raise unless ``value`` may enter the plain tensor of ``entry``: for ``"project"`` and
    ``"riemannian"`` it lies in the set (the transform's own tolerance and message), for the
    other methods it is finite. ``what`` names the value in the message."""
    current = entry.tensor
    with torch.no_grad():
        if entry.method in ("project", "riemannian"):
            transform = entry.transform
            if value.dtype != current.dtype or value.device != current.device:
                # Checked at the new tensor's own precision, without moving the module's transform.
                dtype = value.dtype.to_real() if value.is_complex() else value.dtype
                transform = copy.deepcopy(transform).to(device=value.device, dtype=dtype)
            saved = transform._target
            transform._target = label
            try:
                transform.validate(
                    value, hint=_PLAIN_HINT.format(method=entry.method, what=what) + " Nothing was changed."
                )
            finally:
                transform._target = saved
        elif not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise InfeasibleValueError(
                f"{tensor_label(label, value)}: {bad} of {value.numel()} values of the {what} assigned "
                f"are NaN or infinite (method='{entry.method}'). Nothing was changed."
            )


# ---------------------------------------------------------------- numbers and arrays, plain tensors
#: Marks the per-instance class :func:`sync_plain_assignment` makes (its value: the user's class).
_PLAIN_CLASS = "_paramshape_plain_base"


def plain_base(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` without paramshape's plain-assignment subclass (the class the user wrote)."""
    base: type[nn.Module] = cls.__dict__.get(_PLAIN_CLASS, cls)
    return base


def _assign_plain(module: nn.Module, name: str, value: Any) -> bool:
    """Copy ``value`` (not a ``Parameter``) into the plain tensor ``module.name`` if paramshape keeps
    one there, after converting and checking it; ``False`` when the name is not such a tensor."""
    state = state_of(module)
    entry = state.plain.get(name) if state is not None else None
    params = module.__dict__.get("_parameters")
    current = params.get(name) if params is not None else None
    if entry is None or current is None or value is None or isinstance(value, nn.Parameter):
        # torch's own rule: a Parameter is checked by the registration hook above; None removes the
        # tensor for a moment, and the constraint follows the Parameter assigned next (state.sync).
        return False
    state.sync(module)  # type: ignore[union-attr]  # entry is not None: state is not None
    label = f"'{name}' of {type_name(module)}"
    tensor = coerce_value(
        value,
        shape=current.shape,
        dtype=current.dtype,
        device=current.device,
        label=label,
        complex_ok=entry.transform.supports_complex,
    )
    if tensor.device.type != "meta":
        _check_plain_value(entry, label, tensor, "value")
    with torch.no_grad():
        current.copy_(tensor)  # in place: the Parameter (and what optimizers hold) stays
    return True


def _make_setattr(owner: type[nn.Module]) -> Any:
    def __setattr__(self: nn.Module, name: str, value: Any) -> None:
        if not _assign_plain(self, name, value):
            super(owner, self).__setattr__(name, value)

    return __setattr__


def _new_plain(base: type[nn.Module]) -> nn.Module:
    """An empty instance of ``base``'s plain-assignment class (unpickling; state follows)."""
    cls = _plain_class(base)
    module: nn.Module = cls.__new__(cls)
    return module


def _reduce_plain(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    """Pickle (and deep-copy) the module as its user's class plus its state: the per-instance class
    cannot be found by name."""
    return _new_plain, (plain_base(type(self)),), self.__getstate__()  # type: ignore[no-untyped-call]


def _plain_class(base: type[nn.Module]) -> type[nn.Module]:
    cls = type(
        base.__name__,
        (base,),
        {_PLAIN_CLASS: base, "__reduce_ex__": _reduce_plain, "__module__": base.__module__},
    )
    cls.__qualname__ = base.__qualname__
    cls.__setattr__ = _make_setattr(cls)  # type: ignore[method-assign]
    return cls


def sync_plain_assignment(module: nn.Module) -> None:
    """Give ``module`` the ``__setattr__`` that accepts numbers and arrays for its plain tensors
    while it holds one, and its own class back once it holds none. Idempotent."""
    state = state_of(module)
    wanted = state is not None and bool(state.plain)
    cls = type(module)
    if is_parametrized(module):
        # parametrize's per-instance class: the method joins it (it checks the state at each call).
        if (
            wanted
            and "__setattr__" not in cls.__dict__
            and not any(_PLAIN_CLASS in k.__dict__ for k in cls.__mro__)
        ):
            cls.__setattr__ = _make_setattr(cls)  # type: ignore[method-assign]
        return
    if wanted and _PLAIN_CLASS not in cls.__dict__:
        module.__class__ = _plain_class(cls)
    elif not wanted and _PLAIN_CLASS in cls.__dict__:
        module.__class__ = cls.__dict__[_PLAIN_CLASS]


def install_parameter_assignment(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the ``register_parameter`` described above. Idempotent."""
    if not is_parametrized(owner):
        return
    cls = type(owner)
    if "register_parameter" in cls.__dict__:
        return
    plain: type[nn.Module] = type_before_parametrizations(owner)
    base = plain.register_parameter

    def register_parameter(self: nn.Module, name: str, param: Any) -> None:
        if is_parametrized(self, name) and paramshape_transform(self, name) is not None:
            if param is None:
                raise ConstraintConflictError(
                    f"'{name}' of {type_name(self)} is constrained; it cannot be registered as None. "
                    f"Call ps.unconstrain(module, '{name}') first to give it back its plain Parameter."
                )
            # The property's setter: the transform's admit and inverse, under no_grad.
            setattr(self, name, param.detach())
            return
        base(self, name, param)

    register_parameter.__doc__ = base.__doc__
    cls.register_parameter = register_parameter  # type: ignore[method-assign]
