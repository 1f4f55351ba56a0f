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

import contextlib
import copy
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.attach.assign import install_parameter_assignment, plain_base, sync_plain_assignment
from paramshape.attach.moves import install_move_check, install_root_move_check
from paramshape.attach.reinit import ProjectingInit, install_init_support
from paramshape.errors import (
    ConstraintConflictError,
    InfeasibleValueError,
    ParamshapeError,
    ShapeMismatchError,
    SpecError,
    UnsupportedTensorError,
)
from paramshape.errors.report import format_shape, tensor_label
from paramshape.lookup.modules import (
    constrained_tensors,
    fast_read,
    is_parametrized,
    paramshape_transform,
    type_before_parametrizations,
    type_name,
)
from paramshape.strategies.state import state_of
from paramshape.transforms.base import Transform

__all__ = ["check_checkpoint", "install_module_support", "plain_state_dict"]

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
    for path, owner, name, _ in constrained_tensors(module, remove_duplicate=False):
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


def install_module_support(root: nn.Module, owner: nn.Module, *, root_installed: bool = False) -> None:
    """Called by :func:`~paramshape.constrain` after attaching a transform to a tensor of ``owner``:
    make plain-key checkpoints load into ``owner`` (and, validated all at once, into ``root``),
    check loads and moves of ``root`` as a whole before any child changes, and make ``owner``
    picklable. Idempotent. ``root_installed``: the root's checks are in place already (installed
    for an earlier tensor of the same call), so only ``owner``'s own support is added."""
    if root_installed:
        _install_load_check(owner)
    else:
        for module in {id(root): root, id(owner): owner}.values():
            _install_load_check(module)
        install_root_checks(root)
    cls = type(owner)
    if is_parametrized(owner) and cls.__dict__.get("__reduce_ex__") is not _reduce_parametrized:
        cls.__reduce_ex__ = _reduce_parametrized  # the dynamic Parametrized<Cls> class only


def _install_load_check(module: nn.Module) -> None:
    if not any(
        getattr(hook, "hook", hook) is _load_plain_keys for hook in module._load_state_dict_pre_hooks.values()
    ):
        module._register_load_state_dict_pre_hook(_load_plain_keys, with_module=True)


#: Set in the ``__dict__`` of a module whose loads and moves are checked as a whole (a root).
_ROOT = "_paramshape_root"
_registration_hook: Any = None


def install_root_checks(root: nn.Module) -> None:
    """Make ``root.load_state_dict`` and ``root.half()`` (any ``_apply``) check every constrained
    tensor under it before any child is loaded or converted, and do the same for every module
    ``root`` is registered under later (torch's global module-registration hook; it is not
    retroactive, so parents that already hold ``root`` are not reached). Idempotent."""
    global _registration_hook
    _install_load_check(root)  # each idempotent: a rollback may have removed one and not the other
    install_root_move_check(root)
    root.__dict__[_ROOT] = True
    if _registration_hook is None:
        _registration_hook = nn.modules.module.register_module_module_registration_hook(_on_registration)


def _on_registration(parent: nn.Module, name: str, child: Any) -> None:
    """torch's hook for ``parent.name = child`` and ``add_module``: a parent of a checked root is
    checked as a whole too, so its plain children are not loaded or converted before a refusal."""
    if isinstance(child, nn.Module) and child.__dict__.get(_ROOT) and not parent.__dict__.get(_ROOT):
        install_root_checks(parent)


# ------------------------------------------------------------------------ plain-key checkpoints
def _load_plain_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Check the whole checkpoint once (before any tensor of the load is written), then rewrite
    ``<prefix>weight`` into ``<prefix>parametrizations.weight.original`` through the inverse, for
    every paramshape tensor under ``module``."""
    root, whole, root_prefix = _outermost_load(module, state_dict, prefix)
    if not getattr(whole, _CHECKED, False):
        try:
            check_checkpoint(root, whole, root_prefix)
        except ParamshapeError as error:
            loaded = _loaded_before(root, module, whole)
            if not loaded:
                raise
            message = str(error).replace("Nothing was loaded.", "No constrained tensor was loaded.")
            raise type(error)(
                f"{message} torch loaded these modules before the check could run (load_state_dict "
                f"has no hook before it starts): {', '.join(loaded)}; constrain from the root module "
                "(ps.constrain(model, 'path.to.weight', ...)) so that its check runs first."
            ) from None
        with contextlib.suppress(AttributeError):  # a plain dict (no outer load_state_dict frame)
            setattr(whole, _CHECKED, True)
    converted: dict[str, Tensor] = {}
    assign = bool(args and isinstance(args[0], dict) and args[0].get("assign_to_params_buffers"))
    for path, owner, name, transform in constrained_tensors(module, remove_duplicate=False):
        stem = prefix + path[: len(path) - len(name)]
        plain_key, stored_key = stem + name, stem + _STORED.format(name=name)
        if plain_key not in state_dict or stored_key in state_dict:
            continue
        original = owner.parametrizations[name].original
        incoming = state_dict[plain_key]
        if (
            assign
            and original.device.type == "meta"
            and isinstance(incoming, Tensor)
            and incoming.device.type != "meta"
        ):
            # The inverse would run with the transform's meta settings and store a meta tensor:
            # the model would stay without values, silently.
            raise UnsupportedTensorError(
                f"Checkpoint key {tensor_label(repr(plain_key) + ' of ' + type_name(module), incoming)}: "
                "a plain (constrained-value) checkpoint cannot be loaded with assign=True into a "
                "constrained model on the meta device. Call model.to_empty(device=...) first and load "
                "without assign, or load the model's own state_dict() format (the stored tensors), "
                "which assign=True takes as is. Nothing was loaded."
            )
        # The same conversion, shape rule (exact, as load_state_dict's), check and message as an
        # assignment, raised before any tensor is loaded.
        value = transform.admit(
            state_dict[plain_key], hint=_CHECKPOINT_HINT.format(key=plain_key), broadcast=False
        )
        with torch.no_grad():
            converted[stored_key] = transform.inverse_in_blocks(value)
        for buffer_name, buffer in (*transform.named_buffers(), *transform.named_parameters()):
            if buffer_name not in transform._non_persistent_buffers_set:
                # Settings the plain checkpoint lacks (it holds values only) keep their current values.
                converted.setdefault(stem + f"parametrizations.{name}.0.{buffer_name}", buffer.detach())
        converted[plain_key] = None  # type: ignore[assignment]  # marks the key for removal
    for key, value in converted.items():
        if value is None:
            del state_dict[key]
        else:
            state_dict.setdefault(key, value)


def _loaded_before(root: nn.Module, current: nn.Module, whole: Mapping[str, Any]) -> list[str]:
    """The modules ``root``'s ``load_state_dict`` wrote before reaching ``current``'s pre-hook: torch
    loads in pre-order, each module its own tensors, so every module before ``current`` (ancestors
    included) with a key of its own in the checkpoint."""
    loaded: list[str] = []
    for name, module in root.named_modules():
        if module is current:
            return loaded
        prefix = f"{name}." if name else ""
        own = [*module._parameters, *module._buffers]
        if any(prefix + key in whole for key in own):
            loaded.append(
                f"'{name}' ({type(module).__name__})" if name else f"the root ({type(module).__name__})"
            )
    return []


#: Set on the state dict of a ``load_state_dict`` call once it has been checked as a whole.
_CHECKED = "_paramshape_checked"


def _outermost_load(module: nn.Module, state_dict: dict[str, Any], prefix: str) -> tuple[nn.Module, Any, str]:
    """The module ``load_state_dict`` was called on, and its whole state dict.

    torch gives each module's pre-hook only its own slice of the checkpoint, after the modules
    before it in the tree were loaded; the caller's frame holds the whole one. Without it (a hook
    called by hand), the module's own slice is all there is."""
    frame = sys._getframe(1)
    outer = None
    while frame is not None:
        if frame.f_code is _LOAD_CODE and isinstance(frame.f_locals.get("self"), nn.Module):
            outer = frame
        frame = frame.f_back
    if outer is None:
        return module, state_dict, prefix
    return outer.f_locals["self"], outer.f_locals["state_dict"], ""


_LOAD_CODE = nn.Module.load_state_dict.__code__


def check_checkpoint(root: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> None:
    """Check every value ``state_dict`` would write into a paramshape-constrained tensor under
    ``root``, before anything is written: plain keys (through the set, as an assignment),
    stored unconstrained keys (finite, right shape), the transforms' settings (bounds), and
    ``method="project"`` and ``"riemannian"`` tensors (in the set) or ``"penalty"`` and
    ``"lagrangian"`` ones (finite).

    Raises:
        InfeasibleValueError: a value outside the set, or NaN/infinite.
        ShapeMismatchError: a value of another shape than the tensor it loads into.
        SpecError: stored bounds that are invalid (NaN, ``low >= high``).
    """
    for path, owner, name, transform in constrained_tensors(root, remove_duplicate=False):
        stem = prefix + path[: len(path) - len(name)]
        plain_key, stored_key = stem + name, stem + _STORED.format(name=name)
        original = owner.parametrizations[name].original
        checker = _with_stored_settings(transform, state_dict, stem + f"parametrizations.{name}.0.")
        if stored_key in state_dict and plain_key in state_dict:
            # Two values for one tensor (a plain_state_dict merged into a state_dict): torch would
            # load one and call the other unexpected; which one was meant is not ours to guess.
            raise ConstraintConflictError(
                f"Checkpoint for {tensor_label(repr(stem + name) + ' of ' + type_name(root), original)}: "
                f"it holds both the constrained value '{plain_key}' and the stored unconstrained tensor "
                f"'{stored_key}'; keep one of them (ps.plain_state_dict gives the first, state_dict the "
                "second). Nothing was loaded."
            )
        if stored_key in state_dict:
            value = _tensor_entry(state_dict, stored_key, original, original.shape)
            if value is not None and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise InfeasibleValueError(
                    f"Checkpoint key {tensor_label(repr(stored_key) + ' of ' + type_name(root), value)}: "
                    f"{bad} of {value.numel()} stored unconstrained values are NaN or infinite, so every "
                    "read of the constrained tensor would be NaN. Nothing was loaded."
                )
        elif plain_key in state_dict:
            value = _tensor_entry(state_dict, plain_key, original, transform.forward_shape(original.shape))
            if value is not None:
                with _labelled(checker, f"'{plain_key}' of {type_name(root)}"):
                    checker.validate(
                        value, hint=_CHECKPOINT_HINT.format(key=plain_key) + " Nothing was loaded."
                    )
    for prefix_path, module in root.named_modules(remove_duplicate=False):
        state = state_of(module)
        if state is None:
            continue
        for name, entry in state.plain.items():
            key = prefix + (f"{prefix_path}.{name}" if prefix_path else name)
            if key not in state_dict:
                continue
            tensor = module._parameters.get(name)
            if tensor is None:
                continue
            value = _tensor_entry(state_dict, key, tensor, tensor.shape)
            if value is None:
                continue
            transform = entry.transform_for(tensor)
            if entry.method in ("project", "riemannian"):  # kept in the set after every step
                with _labelled(transform, f"'{key}' of {type_name(root)}"):
                    transform.validate(value, hint=_CHECKPOINT_HINT.format(key=key) + " Nothing was loaded.")
            elif not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise InfeasibleValueError(
                    f"Checkpoint key {tensor_label(repr(key) + ' of ' + type_name(root), value)}: "
                    f"{bad} of {value.numel()} values are NaN or infinite. Nothing was loaded."
                )


@contextlib.contextmanager
def _labelled(transform: Transform, label: str) -> Iterator[None]:
    """Name the tensor by its checkpoint key in ``transform``'s messages, for the duration."""
    saved = transform._target
    transform._target = label
    try:
        yield
    finally:
        transform._target = saved


def _tensor_entry(state_dict: Mapping[str, Any], key: str, like: Tensor, shape: torch.Size) -> Tensor | None:
    """The checkpoint's tensor under ``key`` in ``like``'s dtype and device, its shape checked."""
    value = state_dict[key]
    if not isinstance(value, Tensor) or like.device.type == "meta":
        return None
    if value.shape != shape:
        raise ShapeMismatchError(
            f"Checkpoint key '{key}' has shape {format_shape(value.shape)}; the tensor it loads into "
            f"needs {format_shape(shape)}. Nothing was loaded."
        )
    if value.is_complex() and not like.is_complex():
        # load_state_dict's copy_ would drop the imaginary part (torch only warns).
        raise UnsupportedTensorError(
            f"Checkpoint key '{key}' holds a complex value ({value.dtype}) for a real constrained tensor "
            f"({like.dtype}); save or convert real values. Nothing was loaded."
        )
    if like.is_floating_point() or like.is_complex():
        # An integer or boolean checkpoint tensor too: load_state_dict's copy_ casts it, so it is
        # checked as the value it becomes (the membership tolerance needs a floating dtype).
        return value.detach().to(device=like.device, dtype=like.dtype)
    return value.detach()


def _with_stored_settings(transform: Transform, state_dict: Mapping[str, Any], stem: str) -> Transform:
    """``transform``, or a copy holding the settings (bounds) the checkpoint would load into it,
    checked as the transform checks them on load."""
    # Learnable bounds are parameters of the transform: checked on load like fixed ones.
    keys = {name: stem + name for name, _ in (*transform.named_buffers(), *transform.named_parameters())}
    incoming = {name: state_dict[key] for name, key in keys.items() if key in state_dict}
    if not incoming:
        return transform
    checker = copy.deepcopy(transform)
    # On meta (a model built there) the settings hold no values: the checker takes the checkpoint's.
    on_meta = any(t.device.type == "meta" for t in (*checker.buffers(), *checker.parameters()))
    try:
        checker.load_state_dict(incoming, strict=False, assign=on_meta)
    except SpecError as error:
        raise SpecError(f"Checkpoint keys under '{stem}': {error} Nothing was loaded.") from None
    except RuntimeError as error:  # torch's own size mismatch
        raise ShapeMismatchError(f"Checkpoint keys under '{stem}': {error} Nothing was loaded.") from None
    return checker


# ---------------------------------------------------------------------------------- pickling
def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple:
    """Pickle a parametrized module as its original class plus the chains to re-attach: parametrize's
    dynamic ``Parametrized<Cls>`` class cannot be found by name when unpickling."""
    base = plain_base(type_before_parametrizations(self))  # a class found by name
    # A ProjectingInit refers back to the module (a reduce argument that is the object being
    # reduced would recurse); the rebuilt class's own reset_parameters/apply project instead.
    state = {k: v for k, v in self.__dict__.items() if not isinstance(v, ProjectingInit)}
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
        # What paramshape keeps on the chain itself: whether the stored tensor is a non-persistent
        # buffer (it stays out of state_dict), and fold=True's cached value.
        extra = {
            "persistent": "original" not in chain._non_persistent_buffers_set,
            "attributes": {k: v for k, v in chain.__dict__.items() if k.startswith("_paramshape")},
        }
        entries.append((name, chain.original, list(chain), chain.unsafe, extra))
    return _rebuild_parametrized, (base, state, entries)


def _rebuild_parametrized(base: type[nn.Module], state: dict[str, Any], entries: list) -> nn.Module:
    module = base.__new__(base)
    module.__dict__.update(state)
    for name, original, chain, unsafe, *rest in entries:
        extra = rest[0] if rest else {}
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
        rebuilt = module.parametrizations[name]
        rebuilt.unsafe = unsafe
        if not extra.get("persistent", True):
            rebuilt._non_persistent_buffers_set.add("original")
        rebuilt.__dict__.update(extra.get("attributes", {}))
    if any(paramshape_transform(module, name) is not None for name, *_ in entries):
        install_module_support(module, module)
        install_init_support(module)
        install_move_check(module)
        install_parameter_assignment(module)
        for name, *_ in entries:
            if paramshape_transform(module, name) is not None:
                fast_read(module, name)  # the same getter (and lost-write check) as before pickling
    sync_plain_assignment(module)  # numbers assigned to its plain tensors, as before pickling
    return module
