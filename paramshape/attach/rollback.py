"""Putting modules back exactly as they were when an operation that changes them fails half-way.

:class:`ModuleRollback` records, before a change, everything paramshape may touch on a module: its
class (parametrize swaps it for a ``Parametrized<Cls>`` subclass), the order and identity of its
parameters, buffers and submodules, which buffers are persistent, every hook dictionary, the
contents of its parametrization lists, paramshape's per-module state, and the data of the tensors
named (a tensor that alone holds its storage is not copied: the change replaces its storage with
``set_`` instead of writing into it, and the old storage is the backup). :meth:`ModuleRollback.restore` puts all of it back with plain dictionary and ``set_``
operations, which cannot fail half-way for a reason of their own (no transform runs, nothing is
validated), so a ``KeyboardInterrupt`` or a broken user transform during the change leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from paramshape.lookup.modules import is_parametrized
from paramshape.strategies.state import (
    STATE_ATTRIBUTE,
    ModuleState,
    PlainConstraint,
    discard_state_if_empty,
    state_of,
)

__all__ = ["ModuleRollback", "replace_data", "rollback_on_failure", "sole_owner"]

# Every dictionary of nn.Module that paramshape (or parametrize, on its behalf) may change.
_DICTS = (
    "_parameters",
    "_buffers",
    "_modules",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


#: Instance attributes paramshape may set on a module (a root's move check and its marker).
_ATTRIBUTES = ("_apply", "_paramshape_root")


class _Contents:
    """The dictionaries, class and persistent-buffer set of one module, by object."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.attributes = {key: module.__dict__[key] for key in _ATTRIBUTES if key in module.__dict__}
        self.cls = type(module)
        self.class_attributes = dict(vars(self.cls))
        self.dicts = {key: dict(module.__dict__[key]) for key in _DICTS if key in module.__dict__}
        self.non_persistent = set(module._non_persistent_buffers_set)
        # A ParametrizationList's flag, a plain attribute (getattr on any other module would raise
        # an AttributeError inside Module.__getattr__, for each module recorded).
        self.unsafe = module.__dict__.get("unsafe")

    def restore(self) -> None:
        module = self.module
        # A property parametrize added to an existing Parametrized<Cls> class for a new tensor.
        for attribute in set(vars(self.cls)) - set(self.class_attributes):
            delattr(self.cls, attribute)
        # A property parametrize removed from it (remove_parametrizations, during ps.unconstrain).
        for attribute, saved in self.class_attributes.items():
            if attribute not in vars(self.cls):
                setattr(self.cls, attribute, saved)
        module.__class__ = self.cls
        for key in _ATTRIBUTES:
            if key in self.attributes:
                module.__dict__[key] = self.attributes[key]
            else:
                module.__dict__.pop(key, None)
        for key, saved in self.dicts.items():
            current = module.__dict__[key]
            current.clear()
            current.update(saved)
        module._non_persistent_buffers_set.clear()
        module._non_persistent_buffers_set.update(self.non_persistent)
        if self.unsafe is not None:
            module.unsafe = self.unsafe


class ModuleRollback:
    """Everything needed to undo a change to ``modules`` and to the data of ``tensors``.

    The modules' parametrization lists (``module.parametrizations.<name>``) are recorded with them,
    since registering or replacing a transform changes their contents in place.
    """

    def __init__(
        self, modules: Iterable[nn.Module], tensors: Iterable[Tensor] = (), swapped: Iterable[Tensor] = ()
    ) -> None:
        self._contents: list[_Contents] = []
        self._states: list[tuple[nn.Module, ModuleState | None, dict[str, PlainConstraint] | None]] = []
        seen: set[int] = set()
        # Each module once, however many of its tensors the change touches.
        for module in {id(module): module for module in modules}.values():
            for part in _with_parametrizations(module):
                if id(part) not in seen:
                    seen.add(id(part))
                    self._contents.append(_Contents(part))
            state = state_of(module)
            self._states.append((module, state, dict(state.plain) if state is not None else None))
        self._data: list[tuple[Tensor, Tensor]] = []
        stored: set[int] = set()
        # Tensors the change will give new storage (replace_data) rather than write into: their
        # current storage is kept by reference, not copied (a full copy would sit at the peak).
        for tensor in swapped:
            if tensor is not None and id(tensor) not in stored:
                stored.add(id(tensor))
                self._data.append((tensor, tensor.detach()))
        for tensor in tensors:
            if tensor is not None and id(tensor) not in stored:
                stored.add(id(tensor))
                self._data.append((tensor, tensor.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for contents in reversed(self._contents):
                contents.restore()
            for tensor, backup in self._data:
                tensor.set_(backup)  # type: ignore[call-overload]  # torch's stubs lack set_(Tensor)
        for module, state, plain in self._states:
            current = state_of(module)
            if current is not None:
                for name in list(current.plain):
                    current.pop_plain(name)
            if state is not None:
                module.__dict__[STATE_ATTRIBUTE] = state
                for name in list(state.plain):
                    state.pop_plain(name)
                for name, entry in (plain or {}).items():
                    state.put_plain(name, entry)
            discard_state_if_empty(module)


def rollback_on_failure(
    modules: Iterable[nn.Module], tensors: Iterable[Tensor] = (), swapped: Iterable[Tensor] = ()
) -> ModuleRollback:
    """A :class:`ModuleRollback` taken now; call ``restore()`` on it in an ``except BaseException``.
    ``swapped``: tensors whose data the change only replaces through :func:`replace_data`."""
    return ModuleRollback(list(modules), list(tensors), list(swapped))


def sole_owner(tensor: Tensor, aliases: int = 0) -> bool:
    """Whether ``tensor`` is the only tensor on its storage, apart from ``aliases`` known views of
    it: no other parameter is tied to it, no view of a flat buffer (DDP, FSDP) shares it. Then its
    data can be replaced by :func:`replace_data` without breaking a sharing. False when torch cannot
    tell (the storage's use count is a private function), or for a tensor without storage."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or tensor.device.type == "meta":
        return False
    storage = tensor.untyped_storage()
    # References: the tensor itself, the known aliases, and this function's storage object.
    return bool(use_count(storage._cdata) == 2 + aliases)


def replace_data(tensor: Tensor, value: Tensor, swap: bool) -> None:
    """Give ``tensor`` the data of ``value``: by pointing it at ``value``'s storage (``swap``, for a
    :func:`sole_owner` tensor whose old storage a rollback keeps) or by copying into its storage.
    Nothing when ``value`` already is ``tensor``'s data."""
    with torch.no_grad():
        if value.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() and (
            value.storage_offset() == tensor.storage_offset() and value.stride() == tensor.stride()
        ):
            return
        if swap:
            tensor.set_(value)  # type: ignore[call-overload]  # torch's stubs lack set_(Tensor)
        else:
            tensor.copy_(value)


def _with_parametrizations(module: nn.Module) -> list[nn.Module]:
    parts = [module]
    if is_parametrized(module):
        holder = module._modules["parametrizations"]
        assert holder is not None  # is_parametrized(module): parametrize put the ModuleDict there
        parts.append(holder)
        parts.extend(part for part in holder._modules.values() if part is not None)
    return parts
