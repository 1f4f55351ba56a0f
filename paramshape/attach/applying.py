"""Applying planned constraints to a module, all or nothing."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.attach.checkpoint import install_module_support
from paramshape.attach.planning import Plan
from paramshape.lookup.modules import TensorRef, fast_read, paramshape_transform
from paramshape.strategies.state import PlainConstraint, discard_state_if_empty, state_of
from paramshape.transforms.base import Transform

__all__ = ["apply_plans"]


def apply_plans(root: nn.Module, plans: list[Plan]) -> None:
    """Apply every plan, or none: a failure puts back the tensors already changed, in reverse."""
    snapshots: list[_Snapshot] = []
    try:
        for plan in plans:
            snapshots.append(_Snapshot(plan.ref))
            _apply_one(root, plan)
    except BaseException:
        for snapshot in reversed(snapshots):
            snapshot.restore()
        raise


def _apply_one(root: nn.Module, plan: Plan) -> None:
    ref = plan.ref
    state = state_of(ref.owner)
    if plan.method == "reparam":
        if state is not None and state.pop_plain(ref.name) is not None:
            discard_state_if_empty(ref.owner)
        _attach(ref, plan.transform, plan.target, plan.raw)
        install_module_support(root, ref.owner)
        return
    if paramshape_transform(ref.owner, ref.name) is not None:
        # The same Parameter object stays, now holding the constrained value.
        parametrize.remove_parametrizations(ref.owner, ref.name, leave_parametrized=True)
    storage = ref.owner._parameters[ref.name]
    with torch.no_grad():
        storage.copy_(plan.target)
    entry = PlainConstraint(plan.transform, plan.method, plan.weight, storage)  # type: ignore[arg-type]
    state_of(ref.owner, create=True).put_plain(ref.name, entry)  # type: ignore[union-attr]


class _Snapshot:
    """One tensor's constraint and data before a change, and how to put them back."""

    def __init__(self, ref: TensorRef) -> None:
        owner, name = ref.owner, ref.name
        self.ref = ref
        self.storage = ref.storage()
        self.backup = self.storage.detach().clone()
        self.transform = paramshape_transform(owner, name)
        self.unsafe = owner.parametrizations[name].unsafe if self.transform is not None else False
        with torch.no_grad():
            self.value = getattr(owner, name).detach().clone() if self.transform is not None else None
        state = state_of(owner)
        self.entry = state.plain.get(name) if state is not None else None

    def restore(self) -> None:
        owner, name = self.ref.owner, self.ref.name
        with torch.no_grad():
            state = state_of(owner)
            if state is not None:
                state.pop_plain(name)
            current = paramshape_transform(owner, name)
            if current is not None and self.transform is not None:
                chain = owner.parametrizations[name]
                chain[0] = self.transform
                chain.unsafe = self.unsafe
                chain.original.set_(self.backup)
            elif current is not None:
                parametrize.remove_parametrizations(owner, name, leave_parametrized=False)
                self.storage.set_(self.backup)
            elif self.transform is not None:
                self.storage.set_(self.value)
                parametrize.register_parametrization(owner, name, self.transform, unsafe=True)
                fast_read(owner, name)
                chain = owner.parametrizations[name]
                chain.unsafe = self.unsafe
                chain.original.set_(self.backup)
            else:
                self.storage.set_(self.backup)
            if self.entry is not None:
                self.entry.tensor = self.storage
                state_of(owner, create=True).put_plain(name, self.entry)  # type: ignore[union-attr]
            discard_state_if_empty(owner)


def _attach(ref: TensorRef, transform: Transform, target: Tensor, raw: Tensor | None) -> None:
    """Register ``transform`` on ``ref`` holding ``target`` (or exactly ``raw``). On failure the
    caller's :class:`_Snapshot` puts everything back."""
    # parametrize refuses a stored tensor of another shape unless told it is intended; the plan's
    # dry run has already checked both shapes.
    reshapes = transform.inverse_shape(target.shape) != target.shape
    previous = paramshape_transform(ref.owner, ref.name)
    with torch.no_grad():
        if previous is None:
            storage = ref.storage()
            storage.copy_(target)
            parametrize.register_parametrization(ref.owner, ref.name, transform, unsafe=reshapes)
            fast_read(ref.owner, ref.name)
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
