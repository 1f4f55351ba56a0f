"""Checkpoints and serialization of constrained models.

Plain :mod:`torch.nn.utils.parametrize` renames a constrained tensor's state-dict key from ``weight``
to ``parametrizations.weight.original`` (so checkpoints saved before constraining no longer load)
and makes ``torch.save(model)`` and ``pickle`` raise. paramshape closes both:

* a state dict with plain ``weight`` keys (saved before constraining, or by :func:`plain_state_dict`)
  loads into a constrained model with ``model.load_state_dict(sd)``; the values go through the
  transform's inverse, so an infeasible value raises :class:`~paramshape.InfeasibleValueError`, as
  an assignment does, before anything is loaded;
* :func:`plain_state_dict` exports constrained values under the original names, for a model without
  paramshape;
* ``torch.save(model)``/``pickle`` of a constrained model work and load back constrained.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.lookup.modules import constrained_tensors, paramshape_transform

__all__ = ["install_module_support", "plain_state_dict"]

_STORED = "parametrizations.{name}.original"
_CHECKPOINT_HINT = (
    "The checkpoint's '{key}' does not fit the constraint: load it into the unconstrained model, "
    "fix the values (or constrain with init='project'), or load with a different constraint."
)


def plain_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every paramshape-constrained tensor stored as its constrained
    value under its own name (``weight``), and the transforms' own entries left out.

    The result loads into the same architecture without paramshape, and into a constrained one
    (through the inverse). Tensors are detached; other entries are as ``state_dict`` returns them.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> model = ps.constrain(nn.Sequential(nn.Linear(2, 2)), "0.weight", ps.Box(-1, 1))
        >>> sorted(ps.plain_state_dict(model))
        ['0.bias', '0.weight']
        >>> _ = nn.Sequential(nn.Linear(2, 2)).load_state_dict(ps.plain_state_dict(model))
    """
    state = module.state_dict()
    replacements: dict[str, tuple[str, Tensor]] = {}
    dropped: list[str] = []
    for path, owner, name, _ in constrained_tensors(module):
        prefix = path[: len(path) - len(name)]
        stored = prefix + _STORED.format(name=name)
        with torch.no_grad():
            replacements[stored] = (prefix + name, getattr(owner, name).detach())
        dropped.append(prefix + f"parametrizations.{name}.")
    plain: dict[str, Tensor] = OrderedDict()
    for key, value in state.items():
        if key in replacements:
            new_key, new_value = replacements[key]
            plain[new_key] = new_value
        elif not any(key.startswith(stem) for stem in dropped):
            plain[key] = value
    return plain


def install_module_support(root: nn.Module, owner: nn.Module) -> None:
    """Called by :func:`~paramshape.constrain` after attaching a transform to a tensor of ``owner``:
    make plain-key checkpoints load into ``owner`` (and, validated all at once, into ``root``) and
    make ``owner`` picklable. Idempotent."""
    for module in {id(root): root, id(owner): owner}.values():
        if not any(
            getattr(hook, "hook", hook) is _load_plain_keys
            for hook in module._load_state_dict_pre_hooks.values()
        ):
            module._register_load_state_dict_pre_hook(_load_plain_keys, with_module=True)
    cls = type(owner)
    if parametrize.is_parametrized(owner) and cls.__dict__.get("__reduce_ex__") is not _reduce_parametrized:
        cls.__reduce_ex__ = _reduce_parametrized  # the dynamic Parametrized<Cls> class only


# ------------------------------------------------------------------------ plain-key checkpoints
def _load_plain_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Rewrite ``<prefix>weight`` into ``<prefix>parametrizations.weight.original`` through the inverse,
    for every paramshape tensor under ``module``, before any of them is loaded."""
    converted: dict[str, Tensor] = {}
    for path, _owner, name, transform in constrained_tensors(module):
        stem = prefix + path[: len(path) - len(name)]
        plain_key, stored_key = stem + name, stem + _STORED.format(name=name)
        if plain_key not in state_dict or stored_key in state_dict:
            continue
        # The same conversion, shape rule (exact, as load_state_dict's), check and message as an
        # assignment, raised before any tensor is loaded.
        value = transform.admit(
            state_dict[plain_key], hint=_CHECKPOINT_HINT.format(key=plain_key), broadcast=False
        )
        with torch.no_grad():
            converted[stored_key] = transform.inverse(value)
        for buffer_name, buffer in transform.named_buffers():
            converted.setdefault(stem + f"parametrizations.{name}.0.{buffer_name}", buffer)
        converted[plain_key] = None  # type: ignore[assignment]  # marks the key for removal
    for key, value in converted.items():
        if value is None:
            del state_dict[key]
        else:
            state_dict.setdefault(key, value)


# ---------------------------------------------------------------------------------- pickling
def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple:
    """Pickle a parametrized module as its original class plus the chains to re-attach: parametrize's
    dynamic ``Parametrized<Cls>`` class cannot be found by name when unpickling."""
    base = parametrize.type_before_parametrizations(self)
    state = dict(self.__dict__)
    modules = dict(state["_modules"])
    chains = modules.pop("parametrizations")
    state["_modules"] = modules
    entries = []
    for name, chain in chains.items():
        if not chain.is_tensor:
            raise RuntimeError(
                f"Cannot pickle {base.__name__}: its tensor '{name}' is parametrized in terms of several "
                "tensors (weight_norm style), which paramshape cannot rebuild. Save model.state_dict() "
                "instead, or call ps.unconstrain(model) first."
            )
        entries.append((name, chain.original, list(chain), chain.unsafe))
    return _rebuild_parametrized, (base, state, entries)


def _rebuild_parametrized(base: type[nn.Module], state: dict[str, Any], entries: list) -> nn.Module:
    module = base.__new__(base)
    module.__dict__.update(state)
    for name, original, chain, unsafe in entries:
        raw = original.detach().clone()
        with torch.no_grad():
            # Register from the first link's value, then put the raw tensor back exactly.
            original.set_(chain[0](raw))
        holder = module._parameters if isinstance(original, nn.Parameter) else module._buffers
        holder[name] = original
        for link in chain:
            parametrize.register_parametrization(module, name, link, unsafe=True)
        with torch.no_grad():
            original.set_(raw)
        module.parametrizations[name].unsafe = unsafe
    if any(paramshape_transform(module, name) is not None for name, *_ in entries):
        install_module_support(module, module)
    return module
