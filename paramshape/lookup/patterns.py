"""Model-wide constraints by name pattern: ``{"encoder.*.weight": ps.Box(-1, 1), "*.bias": "positive"}``.

Patterns are matched with :func:`fnmatch.fnmatchcase` against the qualified names that
``named_parameters()`` and ``named_buffers()`` give, as the user spells them (``"0.weight"``, not
parametrize's ``"0.parametrizations.weight.original"``). ``*`` matches any run of characters, dots
included, so ``"*.bias"`` reaches biases at every depth.

A pattern passes over the tensors that the chosen method can never constrain, so that
``constrain(model, "*", spec, method="project")`` means "every parameter" on any model: buffers for
every method but ``"reparam"`` (no optimizer updates them), and the running statistics that batch
and instance norm layers update in place, for every method. A tensor named without wildcards
is never skipped, nor is one matched by a pattern that matches nothing else: constraining it
raises, and the error says why.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from paramshape.errors import SpecError, TensorNotFoundError
from paramshape.lookup.modules import _public_name, through_parametrize
from paramshape.transforms.base import Transform

__all__ = [
    "RUNNING_STATISTICS",
    "constrainable_names",
    "expand_targets",
    "is_pattern",
    "is_running_statistic",
    "match_names",
]

_WILDCARDS = frozenset("*?[")
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def expand_targets(root: nn.Module, name: Any, spec: Any, method: str | None = None) -> list[tuple[str, Any]]:
    """``[(dotted_name, spec), ...]`` for ``constrain(root, name, spec, method=method)``: one pair for
    a name and a spec, one per matched tensor for a pattern or a mapping of patterns to specs
    (patterns skip what ``method`` cannot constrain). Raises before anything changes."""
    if not isinstance(name, Mapping):
        if spec is None:
            raise SpecError(
                f"constrain() needs a spec for {name!r}: a Transform, a registered name or a spec "
                "string such as 'box(-1, 1)'; or pass one mapping {pattern: spec} instead of a name."
            )
        if is_pattern(name):
            return [(hit, spec) for hit in _method_matches(root, name, method)]
        return [(name, spec)]
    if spec is not None:
        raise SpecError(
            "constrain() takes either a tensor name and a spec, or one mapping {pattern: spec}; "
            "got a mapping and a spec."
        )
    if not name:
        raise SpecError("constrain() got an empty mapping of patterns; give at least one {pattern: spec}.")
    matched: dict[str, str] = {}
    targets: list[tuple[str, Any]] = []
    for pattern, pattern_spec in name.items():
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"Patterns must be non-empty strings such as '*.weight'; got {pattern!r}.")
        # A plain name is kept as it is: constrain() reports a missing tensor with suggestions.
        hits = _method_matches(root, pattern, method) if is_pattern(pattern) else [pattern]
        for hit in hits:
            if hit in matched:
                raise SpecError(
                    f"'{hit}' is matched by both {matched[hit]!r} and {pattern!r}; make the patterns "
                    "disjoint so each tensor gets one constraint."
                )
            matched[hit] = pattern
            targets.append((hit, pattern_spec))
    return targets


def _method_matches(root: nn.Module, pattern: str, method: str | None) -> list[str]:
    """The tensors ``pattern`` matches among those ``method`` can constrain; when it matches only
    tensors the method cannot take, those, so that constrain() raises the error that says why, as
    it does for the name written out (and :class:`TensorNotFoundError` when it matches nothing)."""
    found = _candidates(root)  # one walk of the tree for both lists
    everything = _names(found, None)
    usable = set(_names(found, method))
    hits = [name for name in everything if name in usable and fnmatchcase(name, pattern)]
    return hits or match_names(root, pattern, everything)


def is_pattern(name: object) -> bool:
    """Whether ``name`` is a string with fnmatch wildcards (``*``, ``?``, ``[``)."""
    return isinstance(name, str) and not _WILDCARDS.isdisjoint(name)


def match_names(root: nn.Module, pattern: str, candidates: list[str] | None = None) -> list[str]:
    """The names among ``candidates`` (default: :func:`constrainable_names`) that ``pattern`` matches;
    :class:`TensorNotFoundError` listing them when it matches none."""
    candidates = constrainable_names(root) if candidates is None else candidates
    hits = [candidate for candidate in candidates if fnmatchcase(candidate, pattern)]
    if not hits:
        raise TensorNotFoundError(_no_match_message(root, pattern, candidates))
    return hits


def constrainable_names(root: nn.Module, method: str | None = None) -> list[str]:
    """Qualified names of the floating-point parameters and buffers under ``root``, constrained ones
    under their public name; tensors of paramshape transforms used as layers (their bounds) and of
    shared modules reached twice are listed once or not at all. With a ``method``, the tensors it
    can never constrain are left out: buffers for every method but ``"reparam"``, and the running
    statistics of norm layers (updated in place) for every method."""
    return _names(_candidates(root, with_buffers=method in (None, "reparam")), method)


def _candidates(root: nn.Module, *, with_buffers: bool = True) -> list[tuple[str, bool, bool]]:
    """Every floating tensor :func:`constrainable_names` may list, in its order: ``(name, is a buffer,
    is a running statistic)``, under its public name; the tensors of transforms used as layers left out."""
    found: list[tuple[str, bool, bool]] = []
    buffers = list(root.named_buffers()) if with_buffers else []
    tensors = [
        *((name, tensor, False) for name, tensor in root.named_parameters()),
        *((n, t, True) for n, t in buffers),
    ]
    # named_parameters() and named_buffers() walk named_modules(), so every owner path they give is
    # one of its keys: one walk instead of a get_submodule() per tensor.
    modules = dict(root.named_modules())
    for raw_name, tensor, is_buffer in tensors:
        if not tensor.is_floating_point():
            continue
        if "parametrizations" in raw_name.split(".") and through_parametrize(root, raw_name):
            found.append((_public_name(raw_name), is_buffer, False))
            continue
        owner_path = raw_name.rpartition(".")[0]
        owner = modules[owner_path] if owner_path in modules else root.get_submodule(owner_path)
        if isinstance(owner, Transform):
            continue
        found.append((raw_name, is_buffer, is_running_statistic(owner, raw_name.rpartition(".")[2])))
    return found


def _names(found: list[tuple[str, bool, bool]], method: str | None) -> list[str]:
    """:func:`constrainable_names` for ``method`` from :func:`_candidates`' list."""
    # Only reparametrisation can hold a buffer; every other method needs a parameter.
    buffers = method in (None, "reparam")
    names: dict[str, None] = {}
    for name, is_buffer, running in found:
        if (is_buffer and not buffers) or (running and method is not None):
            continue
        names.setdefault(name)
    return list(names)


def is_running_statistic(owner: nn.Module, name: str) -> bool:
    """Whether ``owner.name`` is a running statistic that a norm layer updates in place in training
    (``running_mean``, ``running_var``, ``num_batches_tracked`` of BatchNorm, InstanceNorm, ...)."""
    return isinstance(owner, nn.modules.batchnorm._NormBase) and name in RUNNING_STATISTICS


def _no_match_message(root: nn.Module, pattern: str, candidates: list[str]) -> str:
    kind = parametrize.type_before_parametrizations(root).__name__
    close = difflib.get_close_matches(pattern, candidates, n=3)
    hint = f" Closest names: {', '.join(repr(c) for c in close)}." if close else ""
    listing = ", ".join(candidates[:20]) + (
        f", ... ({len(candidates)} in all)" if len(candidates) > 20 else ""
    )
    return (
        f"The pattern {pattern!r} matches no parameter or buffer of {kind}.{hint} "
        f"Its tensors: {listing or 'none'}. Patterns use fnmatch syntax: '*' matches any characters, "
        "dots included ('*.bias' reaches every bias)."
    )
