r"""``method="riemannian"``: optimise on the manifold itself, with the stock ``torch.optim`` optimizers.

The tensor stays a plain ``Parameter`` holding a point :math:`p` of the set. Two global optimizer
step hooks act on the parameters of the optimizer being stepped:

* before the step, the gradient is replaced by the Riemannian one,
  :math:`g \leftarrow \operatorname{grad} f(p)` (:meth:`~paramshape.Transform.riemannian_grad`:
  tangent projection and, for positive definite matrices, the affine-invariant metric);
* after the step, the update the optimizer made, :math:`\theta - p`, is projected onto the tangent
  space at :math:`p` (:meth:`~paramshape.Transform.transport` from :math:`p` to itself) and
  retracted: :math:`p' = R_p(P_{T_p}(\theta - p))` (:meth:`~paramshape.Transform.retract`), so the
  tensor is back on the set to the dtype's precision;
* then the optimizer's first moments (SGD's ``momentum_buffer``, Adam's and AdamW's ``exp_avg``,
  RMSprop's ``momentum_buffer`` and ``grad_avg``) are transported to the tangent space at
  :math:`p'`. Second moments (``exp_avg_sq``, ``square_avg``) are per-entry magnitudes, not
  tangent vectors, and are left as they are, as geoopt's ``RiemannianAdam`` does.

Hooks rather than paramshape optimizers: the three steps above need only the point before the step,
the point after it and ``optimizer.state[p]``, which the hooks see, so every stock optimizer (and
its learning-rate schedulers, ``GradScaler``, DDP) keeps working. A closure that recomputes the
gradient inside ``step`` (LBFGS) sees the Euclidean gradient; the retraction still keeps the point
on the set.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from paramshape.strategies import dispatch
from paramshape.strategies.state import ModuleState, PlainConstraint, add_registry_listener

__all__ = ["FIRST_MOMENTS"]

#: The per-parameter optimizer state entries that are tangent vectors (first moments), transported
#: after each retraction.
FIRST_MOMENTS: tuple[str, ...] = ("momentum_buffer", "exp_avg", "grad_avg")

_STATES: weakref.WeakSet[ModuleState] = weakref.WeakSet()
#: The points before the step, per optimizer being stepped: ``{id(optimizer): {id(param): ...}}``.
_BEFORE: dict[int, dict[int, tuple[PlainConstraint, Tensor]]] = {}


def _listen(state: ModuleState) -> None:
    if any(entry.method == "riemannian" for entry in state.plain.values()):
        _STATES.add(state)
    else:
        _STATES.discard(state)
    if _STATES:
        dispatch.enable(_HANDLER)
    else:
        dispatch.disable(_HANDLER.name)


add_registry_listener(_listen)


def _entries_of(optimizer: torch.optim.Optimizer) -> list[PlainConstraint]:
    targets: dict[int, PlainConstraint] = {}
    for state in list(_STATES):
        state.sync()
        for entry in state.plain.values():
            if entry.method == "riemannian":
                targets[id(entry.tensor)] = entry
    found = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            target = targets.pop(id(param), None)
            if target is not None:
                found.append(target)
    return found


def _before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Replace each Riemannian parameter's gradient by the Riemannian one; remember the point."""
    before: dict[int, tuple[PlainConstraint, Tensor]] = {}
    with torch.no_grad():
        for entry in _entries_of(optimizer):
            tensor = entry.tensor
            before[id(tensor)] = (entry, tensor.detach().clone())
            if tensor.grad is not None:
                transform = entry.transform_for(tensor)
                tensor.grad.copy_(transform.riemannian_grad(tensor.detach(), tensor.grad))
    if before:
        _BEFORE[id(optimizer)] = before


def _after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Retract each Riemannian parameter's update onto the set and transport the first moments."""
    before = _BEFORE.pop(id(optimizer), None)
    if not before:
        return
    with torch.no_grad():
        for entry, point in before.values():
            tensor = entry.tensor
            new = _retract_update(entry, point, tensor.detach())
            tensor.copy_(new)
            state = optimizer.state.get(tensor)
            if not state:
                continue
            transform = entry.transform_for(tensor)
            for key in FIRST_MOMENTS:
                moment = state.get(key)
                if isinstance(moment, Tensor) and moment.shape == tensor.shape:
                    moment.copy_(transform.transport(point, new, moment))


_HANDLER = dispatch.StepHandler(
    "riemannian",
    order=20,
    concerns=lambda optimizer: bool(_entries_of(optimizer)),
    pre=_before_step,
    post=_after_step,
)


def _retract_update(entry: PlainConstraint, point: Tensor, moved: Tensor) -> Tensor:
    transform = entry.transform_for(point)
    tangent = transform.transport(point, point, moved - point)
    return transform.retract(point, tangent)
