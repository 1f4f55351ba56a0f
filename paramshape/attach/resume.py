"""Optimizer resume across a change of parameter order.

Registering a parametrization moves the tensor it stores after its siblings in ``parameters()``
(``LayerNorm``: ``[weight, bias]`` becomes ``[bias, parametrizations.weight.original]``), and
torch's ``Optimizer.load_state_dict`` matches saved state to parameters by position. A run that
built its optimizer before ``constrain`` and a resumed run that builds it after would hand the
weight's Adam moments to the bias, silently when the shapes agree. The order cannot be kept
(``nn.Module`` lists a module's own parameters before its submodules'), so paramshape detects it:

* ``constrain`` records the name (as ``named_parameters`` spelled it before constraining) of every
  parameter of the module it was given;
* after the first ``step()`` of each optimizer, a checksum of that name (an ``int``: torch's
  ``load_state_dict`` copies non-tensor entries as they are, except iterables such as strings) is
  written into the per-parameter state, where ``state_dict()`` saves it and ``load_state_dict``
  carries it, by position, to the parameter that receives the state;
* before the first ``step()`` of each optimizer, a parameter whose state carries another name than
  its own raises :class:`~paramshape.ConstraintConflictError` naming both, before any update.

Both run from :mod:`paramshape.strategies.dispatch` once per optimizer; later steps skip them.
"""

from __future__ import annotations

import warnings
import weakref
import zlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import ConstraintConflictError, ParamshapeWarning
from paramshape.lookup.modules import parametrizations_of
from paramshape.strategies import dispatch

__all__ = ["STATE_KEY", "record_learnable", "record_names"]

#: The per-parameter optimizer-state entry holding the checksum of the parameter's name.
STATE_KEY = "paramshape_name"

# By id, with a weak reference to check it is still that tensor (tensors compare elementwise, so
# they cannot be keys of a WeakKeyDictionary).
_NAMES: dict[int, tuple[weakref.ref[Tensor], str]] = {}
_CHECKED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
_STAMPED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
# By id of a stored tensor: its name and the learnable bounds of its transform (weakly held).
_LEARNABLE: dict[int, tuple[weakref.ref[Tensor], str, list[tuple[str, weakref.ref[Tensor]]]]] = {}


def record_names(root: nn.Module) -> None:
    """Remember every parameter's public name under ``root`` (``parametrizations.weight.original``
    is recorded as ``weight``), unless already known, and make sure the hooks are on."""
    for key in [key for key, (ref, _) in _NAMES.items() if ref() is None]:
        del _NAMES[key]
    for name, tensor in root.named_parameters():
        if _name_of(tensor) is None:
            _NAMES[id(tensor)] = (weakref.ref(tensor), _public(name))
    dispatch.changed()
    dispatch.enable(_HANDLER)


def _concerns(optimizer: torch.optim.Optimizer) -> bool:
    """An optimizer not yet checked or stamped that steps a parameter with a recorded name."""
    if optimizer in _CHECKED and optimizer in _STAMPED:
        return False
    return any(
        _name_of(p) is not None or id(p) in _LEARNABLE
        for group in optimizer.param_groups
        for p in group["params"]
    )


def record_learnable(root: nn.Module) -> None:
    """Remember, for every stored tensor under ``root`` whose transform has learnable bounds, those
    bounds: an optimizer built before ``constrain`` holds the stored tensor but not them, and would
    leave them untrained without a word (:func:`_check_before_first_step` warns)."""
    for key in [key for key, (ref, _, _) in _LEARNABLE.items() if ref() is None]:
        del _LEARNABLE[key]
    for prefix, module in root.named_modules():
        # parametrize's dictionary only, not a submodule of the model's own of that name.
        chains = parametrizations_of(module) if "parametrizations" in module._modules else None
        if chains is None:
            continue
        for name, listed in chains.items():
            chain: parametrize.ParametrizationList = listed  # type: ignore[assignment]  # checked above
            first = chain[0]
            if not first._parameters and not first._modules:
                continue  # no learnable bounds (nearly every transform), without a walk of it
            bounds = list(first.named_parameters())
            if not bounds or not hasattr(chain, "original"):
                continue
            path = f"{prefix}.{name}" if prefix else name
            refs: list[tuple[str, weakref.ref[Tensor]]] = [
                (f"{path}.0.{n}", weakref.ref(p)) for n, p in bounds
            ]
            _LEARNABLE[id(chain.original)] = (weakref.ref(chain.original), path, refs)
    dispatch.changed()
    dispatch.enable(_HANDLER)


def _warn_missing_bounds(optimizer: torch.optim.Optimizer) -> None:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for param_id in held:
        entry = _LEARNABLE.get(param_id)
        if entry is None or entry[0]() is None or id(entry[0]()) != param_id:
            continue
        missing = [
            name
            for name, ref in entry[2]
            if (bound := ref()) is not None and bound.requires_grad and id(bound) not in held
        ]
        if missing:
            warnings.warn(
                f"The optimizer holds '{entry[1]}' but not its learnable bounds ({', '.join(missing)}), "
                "which it will not train: it was built before ps.constrain(..., learnable=True) added "
                "them. Build the optimizer after ps.constrain, or add them with "
                "optimizer.add_param_group; freeze them with requires_grad_(False) to keep them fixed.",
                ParamshapeWarning,
                stacklevel=5,
            )


def _name_of(tensor: Tensor) -> str | None:
    entry = _NAMES.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None


def _public(name: str) -> str:
    parts = name.split(".")
    if "parametrizations" in parts:
        i = parts.index("parametrizations")
        if i + 2 < len(parts) and not parts[i + 2].startswith("original"):
            # A parameter of the transform itself (a learnable bound): ``weight.0.centre``, not the
            # tensor's own name.
            return ".".join(parts[:i] + parts[i + 1 :])
        return ".".join(parts[:i] + parts[i + 1 : i + 2])
    return name


def _check_before_first_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if optimizer in _CHECKED:
        return
    _CHECKED.add(optimizer)
    if _LEARNABLE:
        _warn_missing_bounds(optimizer)
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        state = optimizer.state.get(param)
        saved = state.get(STATE_KEY) if isinstance(state, dict) else None
        own = _name_of(param)
        if saved is None or own is None or saved == _checksum(own):
            continue
        saved_name = next((name for _, name in _NAMES.values() if _checksum(name) == saved), "?")
        _CHECKED.discard(optimizer)
        raise ConstraintConflictError(
            f"The optimizer state loaded for parameter {index} ('{own}', shape "
            f"{tuple(param.shape)}) was saved for '{saved_name}': the optimizer was built with its "
            "parameters in another order than the one that saved it (ps.constrain moves a "
            "constrained tensor after its siblings in parameters()). Build the optimizer at the same "
            "point in both runs (before ps.constrain, or after it), or from ps.param_groups(model) "
            "in both; nothing was updated."
        )


def _stamp_after_first_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if optimizer in _STAMPED:
        return
    _STAMPED.add(optimizer)
    dispatch.forget(optimizer)  # done with it: its later steps skip this handler
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            name = _name_of(param)
            if name is not None and isinstance(state, dict) and state:
                state[STATE_KEY] = _checksum(name)


#: First of all (nothing updated before the check), and last after the step.
_HANDLER = dispatch.StepHandler(
    "resume", order=0, concerns=_concerns, pre=_check_before_first_step, post=_stamp_after_first_step
)


def _checksum(name: str) -> int:
    return zlib.crc32(name.encode())
