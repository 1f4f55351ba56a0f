"""Finding tensors in module trees: dotted paths, paramshape's parametrizations, shared tensors."""

from __future__ import annotations

import difflib
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks
from torch.nn.utils import parametrize

from paramshape.errors import (
    CompiledRegionError,
    ConstraintConflictError,
    NotAModuleError,
    ParamshapeWarning,
    TensorNotFoundError,
)
from paramshape.transforms.base import Transform

__all__ = [
    "AliasIndex",
    "TensorRef",
    "aliases_of",
    "constrained_tensors",
    "fast_read",
    "is_parametrized",
    "locate",
    "memory_span",
    "parametrizations_of",
    "parametrization_chain",
    "parametrized_names",
    "paramshape_transform",
    "refuse_inside_compile",
    "shares_memory",
    "spans_overlap",
    "through_parametrize",
    "type_before_parametrizations",
    "type_name",
    "unwrap",
]


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor lives: its owning module, its name there, and its path from the root given."""

    owner: nn.Module
    name: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.path} ({type(self.owner).__name__}.{self.name})"

    def storage(self) -> Tensor:
        """The Parameter or buffer object that holds the data (``original`` when parametrized)."""
        chains = parametrizations_of(self.owner)
        if chains is not None and self.name in chains:
            return cast(parametrize.ParametrizationList, chains[self.name]).original
        return self.owner._parameters.get(self.name, self.owner._buffers.get(self.name))


def parametrizations_of(owner: nn.Module) -> nn.ModuleDict | None:
    """``owner.parametrizations`` when parametrize has registered one (what
    :func:`~torch.nn.utils.parametrize.is_parametrized` looks up), read from the submodules it is
    kept in: ``getattr`` on a module without it goes through ``Module.__getattr__``, which builds and
    raises an AttributeError, several times per tensor in a call of :func:`~paramshape.constrain`.
    A submodule of the module's own under that name (a layer, or a ``ModuleDict`` of anything but
    parametrization lists) is not parametrize's: ``None``."""
    found = owner.__dict__.get("_modules", {}).get("parametrizations")
    if not isinstance(found, nn.ModuleDict):
        return None
    for first in found._modules.values():  # the first entry says (a loop: no iter/next calls)
        return found if isinstance(first, parametrize.ParametrizationList) else None
    return None


def is_parametrized(module: nn.Module, name: str | None = None) -> bool:
    """:func:`torch.nn.utils.parametrize.is_parametrized`, read from the module's submodule table
    (see :func:`_chains`): called a dozen times per tensor by :func:`~paramshape.constrain`."""
    chains = parametrizations_of(module)
    if chains is None:
        return False
    return len(chains) > 0 if name is None else name in chains


def type_before_parametrizations(module: nn.Module) -> type[nn.Module]:
    """:func:`torch.nn.utils.parametrize.type_before_parametrizations`, with :func:`is_parametrized`."""
    cls = type(module)
    return cls.__bases__[0] if is_parametrized(module) else cls  # parametrize's subclass has one base


def locate(root: nn.Module, dotted: str) -> TensorRef:
    """Resolve ``"encoder.0.weight"`` against ``root``; :class:`TensorNotFoundError` if it is not a
    parameter, buffer or parametrized tensor."""
    if not isinstance(dotted, str) or not dotted:
        raise TensorNotFoundError(f"A tensor name must be a non-empty string; got {dotted!r}.")
    module_path, _, name = dotted.rpartition(".")
    if "parametrizations" in dotted.split("."):
        if through_parametrize(root, dotted):
            raise TensorNotFoundError(
                f"{dotted!r} is parametrize's internal storage; name the tensor itself, e.g. "
                f"{_public_name(dotted)!r}."
            )
        raise ConstraintConflictError(
            f"{dotted!r} of {type_name(root)}: a submodule named 'parametrizations' holds it, the name "
            "under which torch's parametrize keeps a module's parametrizations (so every path through "
            "it reads as parametrize's storage). Rename that submodule to constrain its tensors."
        )
    try:
        owner = root.get_submodule(module_path) if module_path else root
    except AttributeError:
        owner = None
    if owner is None or not _holds_tensor(owner, name):
        raise TensorNotFoundError(_not_found_message(root, dotted))
    return TensorRef(owner, name, dotted)


def parametrization_chain(owner: nn.Module, name: str) -> parametrize.ParametrizationList:
    """``owner.parametrizations[name]`` (``owner.name`` must be parametrized), typed: torch types
    ``Module.__getattr__`` as ``Tensor | Module``, which is neither indexable nor a chain."""
    holder = cast(nn.ModuleDict, owner.parametrizations)
    return cast(parametrize.ParametrizationList, holder[name])


def parametrized_names(owner: nn.Module) -> list[str]:
    """The names of ``owner``'s parametrized tensors (``owner`` must be parametrized)."""
    return list(cast(nn.ModuleDict, owner.parametrizations).keys())


def paramshape_transform(owner: nn.Module, name: str, *, stacked: bool = False) -> Transform | None:
    """The paramshape transform on ``owner.name``, if it carries exactly one; with ``stacked``, also
    when other parametrizations (``spectral_norm``, ``weight_norm``) were registered on top of it."""
    chains = parametrizations_of(owner)
    if chains is None or name not in chains:
        return None
    chain = cast(parametrize.ParametrizationList, chains[name])
    if isinstance(chain[0], Transform) and (len(chain) == 1 or stacked):
        return chain[0]
    return None


def constrained_tensors(
    root: nn.Module, *, remove_duplicate: bool = True, stacked: bool = False
) -> Iterator[tuple[str, nn.Module, str, Transform]]:
    """Every tensor under ``root`` that carries a paramshape transform: (path, owner, name, transform).
    ``remove_duplicate=False`` lists a submodule reused under several paths once per path (as
    ``state_dict`` does); ``stacked`` includes tensors with foreign parametrizations on top."""
    for prefix, module in root.named_modules(remove_duplicate=remove_duplicate):
        if not is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            transform = paramshape_transform(module, name, stacked=stacked)
            if transform is not None:
                yield (f"{prefix}.{name}" if prefix else name), module, name, transform


class AliasIndex:
    """Every parameter and buffer under ``root``, by object and by storage, from one walk of the tree.

    Asking :func:`aliases_of` about each tensor walks the whole tree each time, so constraining every
    tensor of a model that way is quadratic in its size (200 tensors: 40,000 visits); ``constrain()``
    builds this index once for all the tensors of one call, while the tree does not change."""

    def __init__(self, root: nn.Module) -> None:
        self.by_object: dict[int, list[tuple[nn.Module, str, str]]] = {}
        self.by_storage: dict[int, list[tuple[nn.Module, str, str, tuple[int, int, int]]]] = {}
        # Each tensor's span, kept for span(): asked again of every tensor constrained.
        self._spans: dict[int, tuple[Tensor, tuple[int, int, int] | None]] = {}
        for prefix, module in root.named_modules(remove_duplicate=False):
            for name, tensor in (*module._parameters.items(), *module._buffers.items()):
                if tensor is None:
                    continue
                path = f"{prefix}.{name}" if prefix else name
                self.by_object.setdefault(id(tensor), []).append((module, name, path))
                span = self.span(tensor)
                if span is not None:
                    self.by_storage.setdefault(span[0], []).append((module, name, path, span))

    def span(self, tensor: Tensor) -> tuple[int, int, int] | None:
        """:func:`memory_span` of ``tensor``, computed once per tensor while the index is in use
        (the tree and its tensors' storage do not change meanwhile)."""
        kept = self._spans.get(id(tensor))
        if kept is not None and kept[0] is tensor:
            return kept[1]
        span = _byte_span(tensor)
        self._spans[id(tensor)] = (tensor, span)
        return span

    def aliases(self, ref: TensorRef) -> list[str]:
        """What :func:`aliases_of` returns for ``ref``."""
        storage = ref.storage()
        own_list = ref.owner.parametrizations[ref.name] if is_parametrized(ref.owner, ref.name) else None
        candidates = list(self.by_object.get(id(storage), ()))
        span = self.span(storage)
        if span is not None:
            candidates += [
                (module, name, path)
                for module, name, path, other in self.by_storage.get(span[0], ())
                if _overlap(span, other)
            ]
        return sorted(
            {
                path
                for module, name, path in candidates
                if not (module is ref.owner and name == ref.name) and module is not own_list
            }
        )


def aliases_of(root: nn.Module, ref: TensorRef) -> list[str]:
    """Paths under ``root``, other than ``ref`` itself, that hold the same tensor or overlap its memory.

    Views of one flat storage that cover disjoint bytes are not aliases. Tensors without memory (on
    the ``meta`` device, where every data pointer is 0) alias only by identity."""
    return AliasIndex(root).aliases(ref)


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are one tensor or overlap in memory (never for memoryless tensors)."""
    return a is b or _overlap(_byte_span(a), _byte_span(b))


def _byte_span(tensor: Tensor) -> tuple[int, int, int] | None:
    """(storage pointer, first byte, one past the last byte) that ``tensor`` can reach, or ``None``
    for a tensor without memory (empty, or on ``meta``)."""
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return None
    pointer = tensor.untyped_storage().data_ptr()
    size = tensor.element_size()
    start = tensor.storage_offset() * size
    reach = sum(
        (extent - 1) * abs(stride) for extent, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    return pointer, start, start + (reach + 1) * size


def _overlap(a: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> bool:
    return a is not None and b is not None and a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


#: Public names for the two helpers above, for checks that index many tensors by storage pointer
#: (the first entry of a span) instead of comparing every pair.
memory_span = _byte_span
spans_overlap = _overlap


def refuse_inside_compile(what: str) -> None:
    if torch.compiler.is_compiling():
        raise CompiledRegionError(
            f"ps.{what}() changes the module, which cannot happen inside a torch.compile region. "
            "Call it before compiling (or outside the compiled function)."
        )


def unwrap(module: nn.Module) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise NotAModuleError(f"Expected an nn.Module; got {type(module).__name__}.")
    # torch.compile's wrapper forwards to the module it wraps; constrain that one (dynamo's guards
    # notice the change and recompile).
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else module


def _holds_tensor(module: nn.Module, name: str) -> bool:
    if is_parametrized(module, name):
        return True
    # A registered-but-None entry (Linear(bias=False).bias) holds no tensor.
    return module._parameters.get(name) is not None or module._buffers.get(name) is not None


def _not_found_message(root: nn.Module, dotted: str) -> str:
    names = [name for name, _ in root.named_parameters()] + [name for name, _ in root.named_buffers()]
    names = [_public_name(name) for name in names]
    close = difflib.get_close_matches(dotted, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return (
        f"{type(root).__name__} has no parameter or buffer {dotted!r}.{hint} "
        f"Its tensors: {listing or 'none'}."
    )


def through_parametrize(root: nn.Module, dotted: str) -> bool:
    """Whether the first ``parametrizations`` in ``dotted`` is parametrize's dictionary (not a
    submodule of the model's own that took the name)."""
    parts = dotted.split(".")
    index = parts.index("parametrizations")
    try:
        owner = root.get_submodule(".".join(parts[:index])) if index else root
    except AttributeError:
        return True  # no such module: the name is read as parametrize's, and not found
    return parametrizations_of(owner) is not None


def _public_name(name: str) -> str:
    """``encoder.parametrizations.weight.original`` -> ``encoder.weight``."""
    parts = name.split(".")
    if "parametrizations" in parts:
        i = parts.index("parametrizations")
        return ".".join(parts[:i] + parts[i + 1 : i + 2])
    return name


def type_name(module: nn.Module) -> str:
    """The module's class name as the user wrote it (not parametrize's ``Parametrized...`` subclass)."""
    return type_before_parametrizations(module).__name__


# ------------------------------------------------------------------------------ reading a value
#: A value the fast getter returned is held (detached: its data, not its autograd graph) until the
#: next read when it has at most this many elements, so that a write into it held nowhere else
#: (``nn.init.uniform_(layer.weight)``) is still seen; a larger one is held weakly (a write is seen
#: while the caller keeps the value, ``w = layer.weight``), so no large copy stays alive.
HELD_ELEMENTS = 1 << 20
_LAST_VALUE = "_paramshape_last_value"


class LastValue:
    """The value a constrained tensor's getter returned last (detached, or a weak reference to it
    with its version stored as ``-1 - version``) and its version counter then. Copies and pickles of
    the module do not carry it (a copy's tensors start with other version counters)."""

    __slots__ = ("value", "version")

    def __init__(self) -> None:
        self.value: Any = None
        self.version = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> tuple[type[None], tuple[()]]:
        return (type(None), ())


def check_lost_write(module: nn.Module, name: str, last: LastValue) -> None:
    """Warn if the value of ``module.name`` that the getter returned last was written in place since
    (its version counter moved): a constrained value is recomputed at every read, so that write
    (``nn.init.*_``, ``with torch.no_grad(): layer.weight.mul_(2)``) is lost. A write through
    ``.data`` bypasses version counters and cannot be seen (docs/pitfalls.md)."""
    held, version = last.value, last.version
    if version < 0:
        held, version = held(), -1 - version
    if held is None or held._version == version:
        return
    last.value = None
    label = f"'{name}' of {type_name(module)} (shape {tuple(held.shape)}, {str(held.dtype).removeprefix('torch.')})"
    warnings.warn(
        f"{label}: a value read from it was written in place (an nn.init function, a no_grad in-place "
        f"op), and the write was lost: a constrained tensor is recomputed from its stored tensor at "
        f"every read. Assign instead (module.{name} = value, checked against the set), or use "
        f"ps.init_(module, '{name}', ...); reset_parameters() and model.apply(init_fn) already do.",
        ParamshapeWarning,
        stacklevel=3,
    )


_functorch_active = torch._C._are_functorch_transforms_active


def fast_read(owner: nn.Module, name: str, *, watch_writes: bool = True) -> None:
    """Give ``owner.name`` (just parametrized) a getter that calls the transform directly.

    parametrize's getter reaches the transform through ``ParametrizationList.__call__`` and its
    ``forward``, which looks for a second parametrization with ``hasattr`` (a caught
    ``AttributeError`` each read): on a small layer that is about a seventh of its forward and
    backward time. The getter installed here reads the stored tensor and calls the transform itself
    when the result is the same, which is when parametrize's ``Module.__call__`` would take its own
    fast path and there is one transform on one tensor; otherwise (``parametrize.cached()``, hooks on
    the list or global ones, a second parametrization stacked on top, inside ``torch.compile``, which
    should see parametrize's own code) it calls parametrize's getter. The setter stays parametrize's.
    The property lives on the class parametrize made for this module, so ``remove_parametrizations``
    deletes it like its own.

    With ``watch_writes`` (the default), the getter also notices writes that would be lost
    (:func:`check_lost_write`); ``False`` is for the benchmark that measures what that costs.
    """
    cls = type(owner)
    original = cls.__dict__.get(name)
    if not isinstance(original, property) or original.fget is None:
        return
    slow = original.fget
    if getattr(slow, "_paramshape_fast", False):
        return

    # torch mutates these dictionaries in place and never rebinds them: bound here, each read
    # tests them without a module attribute lookup.
    global_hooks = (
        _module_hooks._global_forward_hooks,
        _module_hooks._global_forward_pre_hooks,
        _module_hooks._global_backward_hooks,
        _module_hooks._global_backward_pre_hooks,
    )
    forward_hooks, forward_pre_hooks, backward_hooks, backward_pre_hooks = global_hooks
    is_compiling = torch.compiler.is_compiling

    def read(module: nn.Module) -> Tensor:
        chain = module._modules["parametrizations"]._modules[name]
        if (
            parametrize._cache_enabled
            or chain._forward_hooks
            or chain._forward_pre_hooks
            or chain._backward_hooks
            or chain._backward_pre_hooks
            or forward_hooks
            or forward_pre_hooks
            or backward_hooks
            or backward_pre_hooks
            or len(chain._modules) != 1
            or not chain.is_tensor
            or is_compiling()
        ):
            return slow(module)
        stored = chain._parameters.get("original")
        if stored is None:  # a parametrized buffer
            stored = chain._buffers["original"]
        transform: Transform = chain._modules["0"]  # type: ignore[assignment]  # the chain holds one
        # constrain(..., fold=True): the value cached since the stored tensor last changed
        # (paramshape.strategies.folded.FoldedValue, found by attribute: lookup sits below strategies).
        # A write into a folded value is repaired at its next read, so it needs no watch here.
        folded = chain.__dict__.get("_paramshape_folded")
        if (
            folded is not None
            and folded._raw is stored
            and folded._transform is transform
            and not _functorch_active()
        ):
            return folded.read()
        if not watch_writes:
            return transform(stored)
        last = chain.__dict__.get(_LAST_VALUE)
        if last is None:
            last = chain.__dict__[_LAST_VALUE] = LastValue()
        elif last.value is not None:
            check_lost_write(module, name, last)
        value: Tensor = transform(stored)
        if value.is_inference():  # inference tensors have no version counter
            last.value = None
        elif value.numel() <= HELD_ELEMENTS:
            last.value, last.version = value.detach(), value._version
        else:
            last.value, last.version = weakref.ref(value), -1 - value._version
        return value

    read._paramshape_fast = True  # type: ignore[attr-defined]
    read._paramshape_slow = slow  # type: ignore[attr-defined]
    setattr(cls, name, property(read, original.fset, original.fdel, original.__doc__))
