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
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import ConstraintConflictError, InfeasibleValueError, ShapeMismatchError
from paramshape.errors.report import format_shape, tensor_label
from paramshape.lookup.modules import paramshape_transform, type_name
from paramshape.strategies.state import state_of

__all__ = ["install_parameter_assignment", "install_plain_assignment_check"]

_plain_hook: Any = None
_PLAIN_HINT = (
    "A tensor constrained with method='{method}' is projected only after an optimizer step; a "
    "Parameter assigned to it must already lie in the set (project it first: "
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
    with torch.no_grad():
        value = param.detach()
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
                    value, hint=_PLAIN_HINT.format(method=entry.method) + " Nothing was changed."
                )
            finally:
                transform._target = saved
        elif not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise InfeasibleValueError(
                f"{tensor_label(label, value)}: {bad} of {value.numel()} values of the Parameter assigned "
                f"are NaN or infinite (method='{entry.method}'). Nothing was changed."
            )


def install_parameter_assignment(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the ``register_parameter`` described above. Idempotent."""
    if not parametrize.is_parametrized(owner):
        return
    cls = type(owner)
    if "register_parameter" in cls.__dict__:
        return
    plain: type[nn.Module] = parametrize.type_before_parametrizations(owner)
    base = plain.register_parameter

    def register_parameter(self: nn.Module, name: str, param: Any) -> None:
        if parametrize.is_parametrized(self, name) and paramshape_transform(self, name) is not None:
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
