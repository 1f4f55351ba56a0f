"""One optimizer step pre-hook and one post-hook for everything paramshape does around a step.

The strategies that act at an optimizer step (the ``method="project"`` projection, the Riemannian
gradient and retraction, the Lagrange multipliers' dual step, the saturation check, and the
optimizer-resume check in :mod:`paramshape.attach.resume`) each enrol a :class:`StepHandler` here
instead of registering global ``torch.optim`` hooks of their own. torch calls global step hooks for
*every* optimizer of the process; the dispatcher asks each handler once per optimizer whether that
optimizer holds a tensor it acts on (``concerns``), keeps the answer in a per-optimizer plan, and
from then on calls only the handlers that said yes. An optimizer with no constrained tensor costs
one dictionary lookup and a comparison per hook and step.

A plan is rebuilt when a handler's registry changes (:func:`changed`, called by whoever changes it)
or the optimizer's parameter groups do (``add_param_group``), and dropped for one optimizer by
:func:`forget` (a handler done with it).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.optim.optimizer as _optimizer
from torch.utils.hooks import RemovableHandle

__all__ = ["StepHandler", "changed", "disable", "enable", "forget", "handlers_for"]

Hook = Callable[[torch.optim.Optimizer, Any, Any], None]


@dataclass(frozen=True)
class StepHandler:
    """What one strategy does around an optimizer step. ``order``: handlers run in increasing order
    (the resume check before anything touches a gradient or a value). ``concerns(optimizer)``: whether
    the optimizer holds a tensor the handler acts on, asked when a plan is built, not at every step."""

    name: str
    order: int
    concerns: Callable[[torch.optim.Optimizer], bool]
    pre: Hook | None = None
    post: Hook | None = None


_HANDLERS: dict[str, StepHandler] = {}
_HOOKS: list[RemovableHandle] = []
#: Bumped by every change that can change a plan: plans built before are rebuilt at their next step.
_GENERATION = [0]


class _Plan:
    __slots__ = ("generation", "groups", "names", "post", "pre")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.generation = _GENERATION[0]
        self.groups = _group_signature(optimizer)
        chosen = [h for h in sorted(_HANDLERS.values(), key=lambda h: h.order) if h.concerns(optimizer)]
        self.names = [h.name for h in chosen]
        self.pre = [h.pre for h in chosen if h.pre is not None]
        self.post = [h.post for h in chosen if h.post is not None]


_PLANS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Plan] = weakref.WeakKeyDictionary()


def _group_signature(optimizer: torch.optim.Optimizer) -> tuple[tuple[int, int], ...]:
    return tuple([(id(group["params"]), len(group["params"])) for group in optimizer.param_groups])


def enable(handler: StepHandler) -> None:
    """Enrol ``handler`` (replacing one of the same name); the global hooks go on with the first."""
    if _HANDLERS.get(handler.name) is handler:
        return
    _HANDLERS[handler.name] = handler
    changed()
    if not _HOOKS:
        _HOOKS.append(_optimizer.register_optimizer_step_pre_hook(_before_step))
        _HOOKS.append(_optimizer.register_optimizer_step_post_hook(_after_step))


def disable(name: str) -> None:
    """Withdraw the handler ``name``; the global hooks come off with the last."""
    if _HANDLERS.pop(name, None) is None:
        return
    changed()
    if not _HANDLERS:
        while _HOOKS:
            _HOOKS.pop().remove()


def changed() -> None:
    """A registry some handler's ``concerns`` reads changed: every plan is rebuilt at its next step."""
    _GENERATION[0] += 1


def forget(optimizer: torch.optim.Optimizer) -> None:
    """Rebuild ``optimizer``'s plan at its next step (a handler's answer for it changed)."""
    _PLANS.pop(optimizer, None)


def handlers_for(optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the handlers that ``optimizer``'s steps run, in order (for tests and debugging)."""
    return list(_current_plan(optimizer).names)


def _current_plan(optimizer: torch.optim.Optimizer) -> _Plan:
    plan = _PLANS.get(optimizer)
    if plan is None or plan.generation != _GENERATION[0] or plan.groups != _group_signature(optimizer):
        plan = _PLANS[optimizer] = _Plan(optimizer)
    return plan


def _before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for hook in _current_plan(optimizer).pre:
        hook(optimizer, args, kwargs)


def _after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # The plan the pre-hook checked (a step does not change the parameter groups), unless a handler
    # changed a registry meanwhile.
    plan = _PLANS.get(optimizer)
    if plan is None or plan.generation != _GENERATION[0]:
        plan = _current_plan(optimizer)
    for hook in plan.post:
        hook(optimizer, args, kwargs)
