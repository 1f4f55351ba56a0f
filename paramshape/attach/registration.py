"""Registering a paramshape transform on a tensor: what
:func:`torch.nn.utils.parametrize.register_parametrization` builds, built without its generic work.

For a tensor not yet parametrized, ``register_parametrization(module, name, transform)`` builds a
``ParametrizationList`` (``Module.__init__``, ``ModuleList.extend``, ``add_module`` with an
``hasattr`` that raises inside ``Module.__getattr__``), calls the transform's ``right_inverse``,
swaps the result into the tensor with ``set_``, registers it as ``original``, deletes the tensor from
the module, subclasses the module's class (first tensor only), adds a ``ModuleDict`` and a property,
and stores the list in the dictionary. For a model of 200 small tensors that is most of
:func:`paramshape.constrain`'s time that is not paramshape's own (docs/performance.md).

:func:`register` builds the same objects, in the same order, with the same global registration
hooks called: the ``Module`` state of the list and of the dictionary is copied from a module torch
built (empty tables made anew), children and tensors go straight into their tables, and the class
and the property come from torch's own ``_inject_new_class`` and ``_inject_property``, so the getter,
the setter, ``parametrize.cached()``, ``remove_parametrizations``, deep copies and the pickling
refusal are torch's. The generic checks are the caller's: :func:`paramshape.constrain`'s plan has
already checked names, dtype, shape and the round trip.

Whenever anything differs from the case it is written for (torch's private helpers missing or with
another signature, a list or dictionary whose ``__init__`` sets attributes it does not know, a module
class with its own ``__setattr__`` or ``__delattr__``, a transform with its own ``right_inverse``, a
name that clashes with an attribute), it calls ``register_parametrization`` itself.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals
from torch.nn.utils import parametrize

from paramshape.lookup.modules import parametrization_chain
from paramshape.transforms.base import Transform

__all__ = ["fast_registration_available", "register"]

#: The attributes ``ParametrizationList.__init__`` sets beyond ``Module.__init__``'s, for one tensor.
_LIST_ATTRIBUTES = ("unsafe", "is_tensor", "ntensors")
#: The private helpers of parametrize the fast path calls, with the parameters it passes.
_HELPERS = {"_inject_new_class": ("module",), "_inject_property": ("module", "tensor_name")}
#: What was found for the helpers now in parametrize (keyed by their identities): the state
#: ``Module.__init__`` gives a module, or ``None`` when the fast path is not available.
_checked: dict[tuple[int, ...], _Template | None] = {}
_EMPTY_TABLES = (dict, OrderedDict, set)


def fast_registration_available() -> bool:
    """Whether :func:`register` can build parametrizations itself with this version of torch."""
    return _module_state() is not None


def register(owner: nn.Module, name: str, transform: Transform, *, unsafe: bool) -> None:
    """``parametrize.register_parametrization(owner, name, transform, unsafe=True)`` for a tensor
    ``owner.name`` not yet parametrized, then ``module.parametrizations[name].unsafe = unsafe``:
    the same objects, tables, order, class and hooks, built without the generic checks (see the
    module's docstring); torch's own function wherever the case differs."""
    template = _module_state()
    if template is None or not _plain_case(owner, name, transform, template):
        parametrize.register_parametrization(owner, name, transform, unsafe=True)
        parametrization_chain(owner, name).unsafe = unsafe
        return
    # register_parametrization: the transform takes the module's training mode.
    if type(transform).train is nn.Module.train and not transform._modules:
        transform.__dict__["training"] = owner.training  # what Module.train sets, without its walk
    else:
        transform.train(owner.training)
    original = owner._parameters[name] if name in owner._parameters else owner._buffers[name]
    assert original is not None  # _plain_case: a tensor is there
    chain = _new_module(parametrize.ParametrizationList, template)
    _add_child(chain, "0", transform)
    chain.__dict__["unsafe"] = unsafe
    with torch.no_grad():  # as torch runs right_inverse and set_ (one block for both)
        new = transform.right_inverse(original)
        if not isinstance(new, Tensor):  # the plan's dry run checked the inverse: not expected
            raise ValueError(  # noqa: TRY004  # torch's type for this refusal
                f"'right_inverse' must return a Tensor. Got {type(new).__name__}"
            )
        chain.__dict__["is_tensor"] = True
        chain.__dict__["ntensors"] = 1
        # ParametrizationList.__init__'s two checks, with its messages.
        if original.dtype != new.dtype:
            raise ValueError(
                "When `right_inverse` outputs one tensor, it may not change the dtype.\n"
                f"original.dtype: {original.dtype}\nright_inverse(original).dtype: {new.dtype}"
            )
        if original.device != new.device:
            raise ValueError(
                "When `right_inverse` outputs one tensor, it may not change the device.\n"
                f"original.device: {original.device}\nright_inverse(original).device: {new.device}"
            )
        parametrize._maybe_set(original, new)
    if isinstance(original, nn.Parameter):
        for hook in _module_globals._global_parameter_registration_hooks.values():
            output = hook(chain, "original", original)
            if output is not None:
                original = output
        chain._parameters["original"] = original
    else:
        for hook in _module_globals._global_buffer_registration_hooks.values():
            output = hook(chain, "original", original)
            if output is not None:
                original = output
        chain._buffers["original"] = original
    # delattr(owner, name), as Module.__delattr__ does it.
    if name in owner._parameters:
        del owner._parameters[name]
    else:
        del owner._buffers[name]
        owner._non_persistent_buffers_set.discard(name)
    holder = owner._modules.get("parametrizations")
    if not isinstance(holder, nn.ModuleDict):
        parametrize._inject_new_class(owner)
        holder = _new_module(nn.ModuleDict, template)
        # owner.parametrizations = ModuleDict(), as Module.__setattr__ does it (_plain_case: the
        # name is in none of the owner's tables).
        for hook in _module_globals._global_module_registration_hooks.values():
            output = hook(owner, "parametrizations", holder)
            if output is not None:
                holder = output
        owner._modules["parametrizations"] = holder
    parametrize._inject_property(owner, name)
    _add_child(holder, name, chain)  # module.parametrizations[name] = chain


def _plain_case(owner: nn.Module, name: str, transform: Transform, template: _Template) -> bool:
    """Whether ``register_parametrization`` would take the path :func:`register` rebuilds, with no
    method of the module's, the transform's or the dictionary's own on the way."""
    cls = type(owner)
    if (
        cls.__setattr__ is not nn.Module.__setattr__
        or cls.__delattr__ is not nn.Module.__delattr__
        or type(transform).right_inverse is not Transform.right_inverse
        or name in owner.__dict__
        or hasattr(cls, name)  # a class attribute: torch's hasattr checks would see it
        or hasattr(nn.ModuleDict, name)  # add_module into the ModuleDict refuses these two
        or name in template.state  # a module's own attributes ('training')
        or (name not in owner._parameters and name not in owner._buffers)
    ):
        return False
    tensor = owner._parameters.get(name, owner._buffers.get(name))
    if tensor is None or (isinstance(tensor, nn.Parameter) and tensor.grad_fn is not None):
        return False
    holder = owner._modules.get("parametrizations", owner.__dict__.get("parametrizations"))
    if holder is None:
        # The owner gets its Parametrized class and dictionary here: nothing of that name anywhere.
        return (
            "parametrizations" not in owner._parameters
            and "parametrizations" not in owner._buffers
            and "parametrizations" not in owner.__dict__
            and not hasattr(cls, "parametrizations")
        )
    # A second tensor of a module parametrize subclassed: its dictionary holds others, not this one.
    return type(holder) is nn.ModuleDict and len(holder) > 0 and name not in holder._modules


def _add_child(parent: nn.Module, name: str, child: nn.Module) -> None:
    """``parent.add_module(name, child)`` for a name that is free (checked by the caller)."""
    for hook in _module_globals._global_module_registration_hooks.values():
        output = hook(parent, name, child)
        if output is not None:
            child = output
    parent._modules[name] = child


class _Template:
    """The state ``Module.__init__`` gives a module (``state``, in its order) and which of its
    entries are tables (``tables``: key and type), which each new module gets empty and its own."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.tables = tuple(
            (key, type(value)) for key, value in state.items() if type(value) in _EMPTY_TABLES
        )


def _new_module(cls: type[nn.Module], template: _Template) -> Any:
    """An instance of ``cls`` with the state ``Module.__init__`` gives it (empty tables made anew)."""
    module = cls.__new__(cls)
    attributes = module.__dict__
    attributes.update(template.state)  # every key in Module.__init__'s order; the tables replaced below
    for key, kind in template.tables:
        attributes[key] = kind()
    return module


def _module_state() -> _Template | None:
    """The state ``Module.__init__`` gives a module, when the fast path applies to the torch now
    imported: its helpers have the expected signatures, and ``ModuleDict()`` and a one-tensor
    ``ParametrizationList`` set nothing but that state (and the list's three attributes)."""
    helpers: list[Callable[..., Any] | None] = [
        getattr(parametrize, helper, None) for helper in (*_HELPERS, "_maybe_set")
    ]
    key = tuple(id(helper) for helper in helpers)
    if key not in _checked:
        _checked[key] = _probe(helpers)
    return _checked[key]


def _probe(helpers: list[Callable[..., Any] | None]) -> _Template | None:
    expected = [*_HELPERS.values(), ("dest", "src")]
    for helper, parameters in zip(helpers, expected, strict=True):
        if not callable(helper):
            return None
        try:
            if tuple(inspect.signature(helper).parameters) != parameters:
                return None
        except (TypeError, ValueError):
            return None
    state = dict(nn.Module().__dict__)
    if any(type(value) in _EMPTY_TABLES and value for value in state.values()) or any(
        type(value) not in (*_EMPTY_TABLES, bool, type(None)) for value in state.values()
    ):
        return None
    holder = nn.ModuleDict()
    chain = parametrize.ParametrizationList([nn.Identity()], nn.Parameter(torch.zeros(1)), unsafe=True)
    if list(holder.__dict__) != list(state) or list(chain.__dict__) != [*state, *_LIST_ATTRIBUTES]:
        return None
    return _Template(state)
