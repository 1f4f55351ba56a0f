"""Putting modules back exactly as they were when an operation that changes them fails half-way.

:class:`ModuleRollback` records, before a change, everything paramshape may touch on a module: its
class (parametrize swaps it for a ``Parametrized<Cls>`` subclass), the order and identity of its
parameters, buffers and submodules, which buffers are persistent, every hook dictionary, the
contents of its parametrization lists, paramshape's per-module state, and the data of the tensors
named. :meth:`ModuleRollback.restore` puts all of it back with plain dictionary and ``set_``
operations, which cannot fail half-way for a reason of their own (no transform runs, nothing is
validated), so a ``KeyboardInterrupt`` or a broken user transform during the change leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.strategies.state import STATE_ATTRIBUTE, discard_state_if_empty, state_of

__all__ = ["ModuleRollback", "rollback_on_failure"]

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


class _Contents:
    """The dictionaries, class and persistent-buffer set of one module, by object."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.cls = type(module)
        self.class_attributes = dict(vars(self.cls))
        self.dicts = {key: dict(module.__dict__[key]) for key in _DICTS if key in module.__dict__}
        self.non_persistent = set(module._non_persistent_buffers_set)
        self.unsafe = getattr(module, "unsafe", None)

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

    def __init__(self, modules: Iterable[nn.Module], tensors: Iterable[Tensor] = ()) -> None:
        self._contents: list[_Contents] = []
        self._states: list[tuple[nn.Module, object, dict | None]] = []
        seen: set[int] = set()
        for module in modules:
            for part in _with_parametrizations(module):
                if id(part) not in seen:
                    seen.add(id(part))
                    self._contents.append(_Contents(part))
            state = state_of(module)
            self._states.append((module, state, dict(state.plain) if state is not None else None))
        self._data: list[tuple[Tensor, Tensor]] = []
        stored: set[int] = set()
        for tensor in tensors:
            if tensor is not None and id(tensor) not in stored:
                stored.add(id(tensor))
                self._data.append((tensor, tensor.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for contents in reversed(self._contents):
                contents.restore()
            for tensor, backup in self._data:
                tensor.set_(backup)
        for module, state, plain in self._states:
            current = state_of(module)
            if current is not None:
                for name in list(current.plain):
                    current.pop_plain(name)
            if state is not None:
                module.__dict__[STATE_ATTRIBUTE] = state
                for name in list(state.plain):  # type: ignore[attr-defined]
                    state.pop_plain(name)  # type: ignore[attr-defined]
                for name, entry in (plain or {}).items():
                    state.put_plain(name, entry)  # type: ignore[attr-defined]
            discard_state_if_empty(module)


def rollback_on_failure(modules: Iterable[nn.Module], tensors: Iterable[Tensor] = ()) -> ModuleRollback:
    """A :class:`ModuleRollback` taken now; call ``restore()`` on it in an ``except BaseException``."""
    return ModuleRollback(list(modules), list(tensors))


def _with_parametrizations(module: nn.Module) -> list[nn.Module]:
    parts = [module]
    if parametrize.is_parametrized(module):
        holder = module._modules["parametrizations"]
        parts.append(holder)
        parts.extend(holder._modules.values())
    return parts
