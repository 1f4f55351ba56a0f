"""Applying planned constraints to a module, all or nothing."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.attach.assign import install_parameter_assignment
from paramshape.attach.checkpoint import install_module_support
from paramshape.attach.moves import install_move_check
from paramshape.attach.planning import Plan
from paramshape.attach.reinit import install_init_support
from paramshape.attach.rollback import rollback_on_failure
from paramshape.lookup.modules import TensorRef, fast_read, paramshape_transform
from paramshape.strategies.folded import FoldedValue, group_folded
from paramshape.strategies.methods import plain_entry
from paramshape.strategies.saturation import watch
from paramshape.strategies.state import discard_state_if_empty, state_of
from paramshape.transforms.base import Transform, registering

__all__ = ["apply_plans"]


def apply_plans(root: nn.Module, plans: list[Plan]) -> None:
    """Apply every plan, or none: on any failure (``KeyboardInterrupt`` included) the root and every
    owner get back their class, tensors, order, hooks, parametrizations and data."""
    owners = [root, *(plan.ref.owner for plan in plans)]
    rollback = rollback_on_failure(owners, (plan.ref.storage() for plan in plans))
    try:
        for plan in plans:
            _apply_one(root, plan)
        group_folded([p.ref.owner.parametrizations[p.ref.name]._paramshape_folded for p in plans if p.fold])
    except BaseException:
        rollback.restore()
        raise


def _apply_one(root: nn.Module, plan: Plan) -> None:
    ref = plan.ref
    state = state_of(ref.owner)
    if plan.method == "reparam":
        if state is not None and state.pop_plain(ref.name) is not None:
            discard_state_if_empty(ref.owner)
        _attach(ref, plan.transform, plan.target, plan.raw, plan.stored)
        chain = ref.owner.parametrizations[ref.name]
        if plan.fold:
            chain._paramshape_folded = FoldedValue(chain.original, plan.transform)
        else:  # a new constraint on a folded tensor replaces the fold too
            chain.__dict__.pop("_paramshape_folded", None)
        install_module_support(root, ref.owner)
        install_init_support(ref.owner)
        install_move_check(ref.owner)
        install_parameter_assignment(ref.owner)
        watch(ref.owner, ref.name, ref.label, ref.storage())  # the SaturationWarning check
        return
    if paramshape_transform(ref.owner, ref.name) is not None:
        # The same Parameter object stays, now holding the constrained value.
        parametrize.remove_parametrizations(ref.owner, ref.name, leave_parametrized=True)
    storage = ref.owner._parameters[ref.name]
    with torch.no_grad():
        storage.copy_(plan.target)
    entry = plain_entry(plan.transform, plan.method, plan.weight, storage)
    state_of(ref.owner, create=True).put_plain(ref.name, entry)  # type: ignore[union-attr]
    install_module_support(root, ref.owner)  # checkpoints are checked against the set too


def _attach(
    ref: TensorRef, transform: Transform, target: Tensor, raw: Tensor | None, stored: Tensor | None = None
) -> None:
    """Register ``transform`` on ``ref`` holding ``target`` (or exactly ``raw``); ``stored``: the
    stored tensor for ``target`` if the plan computed it. On failure the caller's rollback puts
    everything back."""
    # parametrize refuses a stored tensor of another shape unless told it is intended; the plan's
    # dry run has already checked both shapes.
    reshapes = transform.inverse_shape(target.shape) != target.shape
    previous = paramshape_transform(ref.owner, ref.name)
    with torch.no_grad():
        if previous is None:
            storage = ref.storage()
            non_persistent = ref.name in ref.owner._non_persistent_buffers_set
            storage.copy_(target)
            # unsafe=True skips parametrize's own consistency check, a forward of the whole tensor
            # (one more copy at the peak): the dry run checked shape and dtype, and every later
            # assignment is held to the shape by Transform.admit.
            with registering(storage, stored):
                parametrize.register_parametrization(ref.owner, ref.name, transform, unsafe=True)
            ref.owner.parametrizations[ref.name].unsafe = reshapes
            fast_read(ref.owner, ref.name)
            if non_persistent:
                # parametrize re-registers the buffer as a persistent 'original'; a buffer the
                # user kept out of state_dict stays out, and so do its transform's settings.
                chain = ref.owner.parametrizations[ref.name]
                chain._non_persistent_buffers_set.add("original")
                transform._non_persistent_buffers_set.update(name for name, _ in transform.named_buffers())
        else:
            # Replace in place: the module keeps its parametrized class and the same Parameter.
            chain = ref.owner.parametrizations[ref.name]
            transform.train(ref.owner.training)
            chain[0] = transform
            chain.unsafe = reshapes
            chain.right_inverse(target)  # set_ into the same Parameter object; the shape may change
            storage = chain.original
        if raw is not None:
            storage.copy_(raw)
