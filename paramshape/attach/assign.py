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
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from paramshape.errors import ConstraintConflictError
from paramshape.lookup.modules import paramshape_transform, type_name

__all__ = ["install_parameter_assignment"]


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
