"""A reusable "module snapshot" for tests: everything a failed call must leave exactly as it was.

``take(module)`` records, for every module under it (duplicates included): its class, its
parameters and buffers in order with their identities, dtypes, shapes and values, which buffers are
persistent, the keys and identities of every hook dictionary, its parametrizations (names, chain
objects, ``unsafe``) and paramshape's per-module state; plus the module's ``state_dict`` keys in
order. ``assert_same(before, take(module))`` names the first difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paramshape.lookup.modules import parametrizations_of

_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass
class Snapshot:
    classes: list
    tensors: list  # (path, kind, id, dtype, shape, value)
    persistent: list
    hooks: list
    chains: list
    states: list
    keys: list


def take(module: nn.Module) -> Snapshot:
    classes, tensors, persistent, hooks, chains, states = [], [], [], [], [], []
    for prefix, sub in module.named_modules(remove_duplicate=False):
        classes.append((prefix, type(sub)))
        for kind, holder in (("param", sub._parameters), ("buffer", sub._buffers)):
            for name, tensor in holder.items():
                if tensor is None:
                    tensors.append((f"{prefix}.{name}", kind, None, None, None, None))
                    continue
                tensors.append(
                    (
                        f"{prefix}.{name}",
                        kind,
                        id(tensor),
                        tensor.dtype,
                        tuple(tensor.shape),
                        tensor.detach().clone() if tensor.device.type != "meta" else None,
                    )
                )
        persistent.append((prefix, sorted(sub._non_persistent_buffers_set)))
        for key in _HOOKS:
            table = getattr(sub, key, {})
            hooks.append((prefix, key, [(k, id(v)) for k, v in table.items()]))
        # parametrize's lists only (a submodule of the model's own may take the name: its modules
        # are snapshotted as any others).
        holder = parametrizations_of(sub)
        for name, chain in holder.items() if holder is not None else ():
            chains.append((prefix, name, id(chain), [id(link) for link in chain], chain.unsafe))
        state = sub.__dict__.get("_paramshape_state")
        if state is not None:
            plain = [
                (name, id(entry), entry.method, id(entry.transform)) for name, entry in state.plain.items()
            ]
            states.append((prefix, plain))
    keys = list(module.state_dict(keep_vars=True))
    return Snapshot(classes, tensors, persistent, hooks, chains, states, keys)


def assert_same(before: Snapshot, after: Snapshot) -> None:
    """Raise an ``AssertionError`` naming the first difference between two snapshots."""
    assert after.classes == before.classes, f"module classes changed: {before.classes} -> {after.classes}"
    names_before = [(t[0], t[1], t[2]) for t in before.tensors]
    names_after = [(t[0], t[1], t[2]) for t in after.tensors]
    assert names_after == names_before, (
        f"tensor identities or order changed:\n{names_before}\n->\n{names_after}"
    )
    for old, new in zip(before.tensors, after.tensors, strict=True):
        assert new[3:5] == old[3:5], f"{old[0]}: dtype/shape {old[3:5]} -> {new[3:5]}"
        if old[5] is not None:
            assert new[5] is not None, f"{old[0]}: lost its values"
            assert torch.equal(new[5].isnan(), old[5].isnan()), f"{old[0]}: NaN pattern changed"
            assert torch.equal(new[5].nan_to_num(nan=0.0), old[5].nan_to_num(nan=0.0)), (
                f"{old[0]}: value changed"
            )
    assert after.persistent == before.persistent, "persistent buffers changed"
    assert after.hooks == before.hooks, f"hooks changed: {before.hooks} -> {after.hooks}"
    assert after.chains == before.chains, f"parametrizations changed: {before.chains} -> {after.chains}"
    assert after.states == before.states, f"paramshape state changed: {before.states} -> {after.states}"
    assert after.keys == before.keys, f"state_dict keys changed: {before.keys} -> {after.keys}"
