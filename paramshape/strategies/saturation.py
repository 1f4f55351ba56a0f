"""Saturation of reparametrised tensors: values where the map is so flat that they barely learn.

A reparametrised value moves, per optimizer step, by the map's slope times the step on the stored
tensor. Where that slope is below :data:`SATURATED_SLOPE` (1%) of the map's largest slope the value
is *saturated*: it learns a hundred times slower than in the middle of the set. A few saturated
values are harmless; most of a tensor saturated usually means that the optimum lies on the bound,
which a smooth map never reaches, and ``method="project"`` is the right tool.

:func:`saturation` measures it on demand. While training, one global optimizer step post-hook (the
first reparametrised :func:`~paramshape.constrain` installs it) checks the watched tensors that the
stepping optimizer holds, on its 10th step and every 100th after: one pass of the map's log-slope
over the tensor, so about 1% of a forward pass per step on average. It warns on either of two
signs that the optimum lies on the bound:

- *mostly saturated*: more than :data:`WARN_FRACTION` (half) of the tensor saturated at a check;
- *saturated and growing*: at least :data:`GROWING_FRACTION` (a fifth) saturated, and more at each of
  the last :data:`GROWING_CHECKS` checks than at the one before: values keep sliding into the flat
  tails, as a clipped critic's weights do. An interior optimum holds its values still, so its
  saturated fraction stops growing.

A tensor gets at most one :class:`~paramshape.SaturationWarning`; :func:`set_saturation_warning`
switches the check off.
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import SaturationWarning
from paramshape.lookup.modules import paramshape_transform
from paramshape.strategies import dispatch
from paramshape.transforms.base import Transform

__all__ = [
    "CHECK_EVERY",
    "FIRST_CHECK",
    "GROWING_CHECKS",
    "GROWING_FRACTION",
    "SATURATED_SLOPE",
    "WARN_FRACTION",
    "SaturationReport",
    "TensorSaturation",
    "saturated_mask",
    "saturation",
    "set_saturation_warning",
    "watch",
]

#: A value is saturated where the map's slope is below this fraction of its largest slope.
SATURATED_SLOPE = 0.01
#: The warning fires when more than this fraction of a tensor is saturated ("most of it").
WARN_FRACTION = 0.5
#: It also fires when at least this fraction is saturated and the fraction has grown at each of the
#: last GROWING_CHECKS checks (the optimum on the bound: values keep sliding into the flat tails).
GROWING_FRACTION = 0.2
GROWING_CHECKS = 2
#: The hook checks on an optimizer's FIRST_CHECK-th step, then on every CHECK_EVERY-th.
FIRST_CHECK = 10
CHECK_EVERY = 100


def saturated_mask(transform: Transform, x: Tensor) -> Tensor | None:
    """Boolean tensor of ``x``'s shape: where ``transform``'s slope at the stored values ``x`` is below
    :data:`SATURATED_SLOPE` of its largest. ``None`` for transforms that do not define
    ``peak_log_slope`` (vector and matrix sets, your own transforms unless they do)."""
    peak = getattr(transform, "peak_log_slope", None)
    if peak is None or transform.event_dim != 0:
        return None
    with torch.no_grad():
        # The elementwise families that define peak_log_slope compute the slope from x alone.
        log_slope = transform.log_abs_det_jacobian(x, x)
        mask: Tensor = log_slope < peak() + math.log(SATURATED_SLOPE)
        return mask


@dataclass(frozen=True)
class TensorSaturation:
    """How much of one reparametrised tensor is saturated."""

    name: str
    transform: str
    saturated: int
    numel: int

    @property
    def fraction(self) -> float:
        """Saturated values over all values (0 for an empty tensor)."""
        return self.saturated / self.numel if self.numel else 0.0


class SaturationReport(Mapping[str, float]):
    """What :func:`saturation` returns: a read-only mapping from tensor name to saturated fraction,
    with the counts in :attr:`entries` and a table as its ``repr``."""

    def __init__(self, entries: list[TensorSaturation]) -> None:
        self.entries: tuple[TensorSaturation, ...] = tuple(entries)
        self._by_name = {entry.name: entry for entry in self.entries}

    def __getitem__(self, name: str) -> float:
        return self._by_name[name].fraction

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: {"fraction", "saturated", "numel", "transform"}}``, plain Python values (for
        logging to JSON, TensorBoard or W&B)."""
        return {
            e.name: {
                "fraction": e.fraction,
                "saturated": e.saturated,
                "numel": e.numel,
                "transform": e.transform,
            }
            for e in self.entries
        }

    def __repr__(self) -> str:
        if not self.entries:
            return "SaturationReport(no reparametrised elementwise tensors)"
        width = max(len(e.name) for e in self.entries)
        lines = [f"SaturationReport (slope below {SATURATED_SLOPE:.0%} of its largest):"]
        for e in self.entries:
            lines.append(
                f"  {e.name:<{width}}  {e.fraction:7.1%} saturated  ({e.saturated} of {e.numel})  {e.transform}"
            )
        return "\n".join(lines)


def saturation(model: nn.Module) -> SaturationReport:
    """Report, for each reparametrised tensor of ``model``, the fraction of its values where the
    map's slope is below 1% of its largest slope (:data:`SATURATED_SLOPE`): values that learn at
    least a hundred times slower than in the middle of the set.

    For the default :class:`~paramshape.Box` map :math:`c + r\\tanh(x/r)` (slope
    :math:`1 - t^2` at a fraction :math:`t` of the half-width from the centre) that is the outer
    0.25% of the width on each side; for the one-sided softplus maps (softness :math:`s`) it is
    within :math:`0.01 s` of the bound. Only elementwise transforms that define ``peak_log_slope``
    are measured (Box, UnitInterval, Positive, GreaterThan, LessThan, SoftClip); tensors kept by
    ``method="project"`` or ``"penalty"`` are not reparametrised and are not listed.

    Mostly saturated tensors, or a saturated fraction that keeps growing over training, usually
    mean the optimum lies on the bound, which a smooth map never reaches: ``method="project"``
    reaches it exactly (see the strategies guide). During training a
    :class:`~paramshape.SaturationWarning` reports either sign: more than half of a tensor
    saturated, or at least a fifth and more at each of the last two checks.

    Args:
        model: any module.

    Returns:
        A :class:`SaturationReport`: ``report["layer.weight"]`` is a fraction in ``[0, 1]``,
        ``report.to_dict()`` the counts, ``print(report)`` a table.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(4, 2), "weight", ps.Box(-1.0, 1.0))
        >>> ps.saturation(layer)["weight"]
        0.0
        >>> layer.weight = torch.full((2, 4), 0.9999)  # 0.01% of the width from the bound
        >>> ps.saturation(layer)
        SaturationReport (slope below 1% of its largest):
          weight   100.0% saturated  (8 of 8)  Box(low=-1.0, high=1.0)
    """
    entries = []
    for path, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in module.parametrizations:
            transform = paramshape_transform(module, name)
            if transform is None:
                continue
            stored = module.parametrizations[name].original
            mask = saturated_mask(transform, stored.detach())
            if mask is None:
                continue
            entries.append(
                TensorSaturation(
                    f"{path}.{name}" if path else name, repr(transform), int(mask.sum()), mask.numel()
                )
            )
    return SaturationReport(entries)


# ------------------------------------------------------------------------------ the training check
_enabled = [True]
_steps: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class _Watch:
    owner: weakref.ref[nn.Module]
    name: str
    label: str
    tensor: weakref.ref[Tensor]
    warned: bool = False
    #: (optimizer step, saturated fraction) at the last GROWING_CHECKS + 1 checks, oldest first.
    history: list[tuple[int, float]] = field(default_factory=list)


#: Watched stored tensors by id (a Tensor's ``==`` is elementwise, so not a dictionary key).
_watched: dict[int, _Watch] = {}


def set_saturation_warning(enabled: bool) -> bool:
    """Switch the :class:`~paramshape.SaturationWarning` check on or off for the whole process;
    returns the previous setting. Off, the optimizer hook returns at once (one list lookup per step).

    Example:
        >>> import paramshape as ps
        >>> previous = ps.set_saturation_warning(False)
        >>> _ = ps.set_saturation_warning(previous)
    """
    previous = _enabled[0]
    _enabled[0] = bool(enabled)
    return previous


def watch(owner: nn.Module, name: str, label: str, stored: Tensor) -> None:
    """Check the reparametrised ``owner.name`` (stored tensor ``stored``) during training; called
    by ``constrain`` for every reparametrised tensor. Holds only weak references."""
    key = id(stored)
    _watched[key] = _Watch(weakref.ref(owner), name, label, weakref.ref(stored, lambda _: _forget(key)))
    dispatch.changed()
    dispatch.enable(_HANDLER)


def _forget(key: int) -> None:
    _watched.pop(key, None)


def _check_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _enabled[0] or not _watched:
        return
    count = _steps.get(optimizer, 0) + 1
    _steps[optimizer] = count
    if count != FIRST_CHECK and count % CHECK_EVERY:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = _watched.get(id(param))
            if entry is not None and not entry.warned and entry.tensor() is param and param is not None:
                _check(entry, param, count)


def _watches_any(optimizer: torch.optim.Optimizer) -> bool:
    return any(id(p) in _watched for group in optimizer.param_groups for p in group["params"])


#: After the strategies' own step work; counts the steps of optimizers that hold a watched tensor.
_HANDLER = dispatch.StepHandler("saturation", order=50, concerns=_watches_any, post=_check_after_step)


def _growing(history: list[tuple[int, float]]) -> bool:
    """Saturated on at least GROWING_FRACTION and more at each of the last GROWING_CHECKS checks."""
    if len(history) <= GROWING_CHECKS or history[-1][1] < GROWING_FRACTION:
        return False
    fractions = [fraction for _, fraction in history]
    return all(later > earlier for earlier, later in itertools.pairwise(fractions))


def _check(entry: _Watch, stored: Tensor, step: int) -> None:
    owner = entry.owner()
    transform = None if owner is None else paramshape_transform(owner, entry.name)
    if transform is None or owner.parametrizations[entry.name].original is not stored:  # type: ignore[union-attr, index]
        _watched.pop(id(stored), None)  # unconstrained or replaced since
        return
    mask = saturated_mask(transform, stored.detach())
    if mask is None or mask.numel() == 0:
        return
    fraction = float(mask.double().mean())
    entry.history = [*entry.history[-GROWING_CHECKS:], (step, fraction)]
    if fraction > WARN_FRACTION:
        trend = ""
    elif _growing(entry.history):
        trend = ", and growing (" + ", ".join(f"{f:.0%} at step {n}" for n, f in entry.history) + ")"
    else:
        return
    entry.warned = True
    # Learnable bounds (parameters of the transform) take method='reparam' only.
    exact = (
        "use fixed bounds with method='project' (learnable bounds train through the map only), which "
        "reaches the bound exactly"
        if any(True for _ in transform.parameters())
        else "constrain it with method='project', which reaches the bound exactly"
    )
    warnings.warn(
        f"paramshape: {fraction:.0%} of {entry.label} (shape {tuple(stored.shape)}, {stored.dtype}) sits "
        f"where the map of {transform!r} has less than {SATURATED_SLOPE:.0%} of its largest slope{trend}, "
        "so those values barely move. If the optimum lies on the bound (clipped weights, exact zeros), "
        f"{exact}; if it lies inside, a smaller slope (Box's slope=, the one-sided sets' softness=) or learning rate keeps values out of the flat "
        "tails, and so do initial values inside the set (ps.saturation(model) measures every tensor). "
        "ps.set_saturation_warning(False) silences this check.",
        SaturationWarning,
        stacklevel=2,
    )
