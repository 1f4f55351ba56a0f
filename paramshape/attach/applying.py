"""Applying planned constraints to a module, all or nothing."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.attach.assign import (
    install_parameter_assignment,
    install_plain_assignment_check,
    sync_plain_assignment,
)
from paramshape.attach.checkpoint import install_module_support
from paramshape.attach.moves import install_move_check
from paramshape.attach.planning import Plan
from paramshape.attach.registration import register
from paramshape.attach.reinit import install_init_support, install_plain_init_support
from paramshape.attach.rollback import replace_data, rollback_on_failure, sole_owner
from paramshape.lookup.modules import TensorRef, fast_read, parametrization_chain, paramshape_transform
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
    # A tensor alone on its storage gets the new data by set_ and the rollback keeps its old storage
    # by reference: no backup copy at constrain's memory peak. Shared storage (tied, flat buffers)
    # is written into, as before, and copied for the rollback.
    swapped: dict[int, Tensor] = {}
    storages = [plan.ref.storage() for plan in plans]  # the same objects before and after registering
    for plan, storage in zip(plans, storages, strict=True):
        if storage is not None and sole_owner(storage, _aliases(storage, plan)):
            swapped[id(storage)] = storage
    for plan, storage in zip(plans, storages, strict=True):
        plan.swap = id(storage) in swapped
    copied = [storage for plan, storage in zip(plans, storages, strict=True) if not plan.swap]
    rollback = rollback_on_failure(owners, copied, swapped.values())
    _INSTALLED[0] = set()
    try:
        for plan in plans:
            _apply_one(root, plan)
        group_folded(
            [cast(FoldedValue, _chain(p)._paramshape_folded) for p in plans if p.fold]  # set by _apply_one
        )
    except BaseException:
        rollback.restore()
        raise
    finally:
        _INSTALLED[0] = None


#: The ``(owner, class)`` pairs whose module-level support (hooks, methods of parametrize's class)
#: the running :func:`apply_plans` has installed; ``None`` outside it. Each install is idempotent
#: and depends on the owner and its class only, so a second tensor of the same module skips them;
#: the root is the same for the whole call, so its checks are in once the set holds any pair.
_INSTALLED: list[set[tuple[int, type]] | None] = [None]


def _chain(plan: Plan) -> parametrize.ParametrizationList:
    return parametrization_chain(plan.ref.owner, plan.ref.name)


def _aliases(storage: Tensor, plan: Plan) -> int:
    """How many of the plan's own tensors are views of ``storage`` (``init="keep"``'s target is)."""
    return sum(
        1
        for tensor in {
            id(t): t for t in (plan.target, plan.raw) if t is not None and t is not storage
        }.values()
        if tensor.device.type != "meta"
        and tensor.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()
    )


def _apply_one(root: nn.Module, plan: Plan) -> None:
    ref = plan.ref
    state = state_of(ref.owner)
    if plan.method == "reparam":
        if state is not None and state.pop_plain(ref.name) is not None:
            discard_state_if_empty(ref.owner)
            sync_plain_assignment(ref.owner)  # its own class back before parametrize subclasses it
        # The value the plan checked is not admitted again, and its dry-run inverse is reused.
        with registering(ref.storage(), plan.stored):
            _attach(ref, plan.transform, plan.target, plan.raw, plan.swap)
        chain = parametrization_chain(ref.owner, ref.name)
        if plan.fold:
            # A plain attribute (neither tensor nor module), which Module.__setattr__ would store here too.
            chain.__dict__["_paramshape_folded"] = FoldedValue(chain.original, plan.transform)
        else:  # a new constraint on a folded tensor replaces the fold too
            chain.__dict__.pop("_paramshape_folded", None)
        installed = _INSTALLED[0]
        key = (id(ref.owner), type(ref.owner))
        if installed is None or key not in installed:
            install_module_support(root, ref.owner, root_installed=bool(installed))
            install_init_support(ref.owner)
            install_move_check(ref.owner)
            install_parameter_assignment(ref.owner)
            if installed is not None:
                installed.add(key)
        watch(ref.owner, ref.name, ref.label, ref.storage())  # the SaturationWarning check
        return
    if paramshape_transform(ref.owner, ref.name) is not None:
        # The same Parameter object stays, now holding the constrained value.
        parametrize.remove_parametrizations(ref.owner, ref.name, leave_parametrized=True)
    storage = cast(nn.Parameter, ref.owner._parameters[ref.name])  # planning: only Parameters go plain
    replace_data(storage, plan.target, plan.swap)
    entry = plain_entry(plan.transform, plan.method, plan.weight, storage)
    state_of(ref.owner, create=True).put_plain(ref.name, entry)  # type: ignore[union-attr]  # create=True: never None
    install_module_support(root, ref.owner)  # checkpoints are checked against the set too
    install_plain_assignment_check()  # and a Parameter assigned in its place
    sync_plain_assignment(ref.owner)  # and a number, array or tensor assigned into it
    install_plain_init_support(ref.owner)  # reset_parameters()/apply(init_fn) keep it in the set


def _attach(
    ref: TensorRef, transform: Transform, target: Tensor, raw: Tensor | None, swap: bool = False
) -> None:
    """Register ``transform`` on ``ref`` holding ``target`` (or exactly ``raw``). On failure the
    caller's rollback puts everything back."""
    # parametrize refuses a stored tensor of another shape unless told it is intended; the plan's
    # dry run has already checked both shapes.
    reshapes = transform.inverse_shape(target.shape) != target.shape
    previous = paramshape_transform(ref.owner, ref.name)
    with torch.no_grad():
        if previous is None:
            storage = ref.storage()
            non_persistent = ref.name in ref.owner._non_persistent_buffers_set
            replace_data(storage, target, swap)
            # parametrize's register_parametrization(unsafe=True), built without its generic work
            # (attach.registration); unsafe=True skips its consistency check, a forward of the whole
            # tensor (one more copy at the peak): the dry run checked shape and dtype, and every
            # later assignment is held to the shape by Transform.admit.
            register(ref.owner, ref.name, transform, unsafe=reshapes)
            fast_read(ref.owner, ref.name)
            if non_persistent:
                # parametrize re-registers the buffer as a persistent 'original'; a buffer the
                # user kept out of state_dict stays out, and so do its transform's settings.
                chain = parametrization_chain(ref.owner, ref.name)
                chain._non_persistent_buffers_set.add("original")
                transform._non_persistent_buffers_set.update(name for name, _ in transform.named_buffers())
        else:
            # Replace in place: the module keeps its parametrized class and the same Parameter.
            chain = parametrization_chain(ref.owner, ref.name)
            transform.train(ref.owner.training)
            chain[0] = transform
            chain.unsafe = reshapes
            chain.right_inverse(target)  # set_ into the same Parameter object; the shape may change
            storage = chain.original
        if raw is not None:
            storage.copy_(raw)
