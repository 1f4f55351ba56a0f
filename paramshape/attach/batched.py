"""Checking the values of many small tensors in one pass, before :func:`paramshape.constrain` plans
them one by one.

``constrain(model, "*", ps.Box(-1, 1))`` checks every tensor's value against the set and runs the
transform's inverse and forward on it (the dry run of :mod:`paramshape.attach.planning`); for 200
small tensors that is 200 times a dozen tiny tensor operations, each paying Python's and torch's
fixed cost. Here the values of the tensors that share one spec, dtype and device are joined into
one flat tensor and checked together: one membership check, one inverse, one forward, one round-trip
check with each tensor's own tolerance. The pass only reads: it changes nothing, raises nothing, and
when any check fails (or anything is unusual) it gives no answer for that group, whose tensors are
then checked one by one as before, so errors keep naming the failing tensor, its shape, dtype and
worst value. Only transforms that say they act element by element with scalar settings
(:attr:`~paramshape.Transform.flat_checks`) take part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from paramshape.attach.planning import (
    KEEP_STORED_ELEMENTS,
    check_output,
    check_stored_values,
    optional_setting,
)
from paramshape.errors import ParamshapeError
from paramshape.lookup.modules import TensorRef, is_parametrized, locate
from paramshape.spec.resolve import Spec, resolve
from paramshape.transforms.base import Transform

__all__ = ["Checked", "check_values"]

#: Values checked in one flat pass at most (a group beyond it is cut into passes): the float64
#: temporaries of the membership check stay a few MB, as in Transform._row_blocks.
FLAT_PASS_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Checked:
    """A tensor whose value the flat pass admitted: where it lives, the Parameter or buffer it read,
    and the stored (unconstrained) tensor the inverse gave for it, a tensor of its own."""

    ref: TensorRef
    tensor: Tensor
    stored: Tensor


def check_values(
    root: nn.Module, targets: list[tuple[str, Spec]], init: str, method: str
) -> dict[int, Checked]:
    """``{index into targets: Checked}`` for the targets whose value passed the flat checks; the
    others (not eligible, or in a group where a check failed) are left to the plan's own checks."""
    if method != "reparam" or init != "keep" or len(targets) < 2:
        return {}
    groups: dict[tuple[int, torch.dtype, torch.device], list[tuple[int, TensorRef, Tensor]]] = {}
    specs: dict[int, Spec] = {}
    for index, (dotted, spec) in enumerate(targets):
        found = _eligible_tensor(root, dotted)
        if found is not None:
            ref, tensor = found
            groups.setdefault((id(spec), tensor.dtype, tensor.device), []).append((index, ref, tensor))
            specs[id(spec)] = spec
    checked: dict[int, Checked] = {}
    for (spec_id, dtype, device), members in groups.items():
        if len(members) < 2:
            continue  # one tensor: the plan's own checks cost the same
        transform = _flat_transform(specs[spec_id], dtype, device)
        if transform is None:
            continue
        for part in _passes(members):
            checked.update(_check_pass(transform, part))
    return checked


def _eligible_tensor(root: nn.Module, dotted: str) -> tuple[TensorRef, Tensor] | None:
    """Where ``root.dotted`` lives and its Parameter or buffer, when it can join a flat pass: located, not already
    parametrized (reading a foreign parametrization runs it), a small dense real floating tensor
    with values (not empty, not meta, not an inference tensor)."""
    try:
        ref = locate(root, dotted)
    except ParamshapeError:
        return None  # the plan raises it, in its turn
    if is_parametrized(ref.owner, ref.name):
        return None
    tensor = ref.owner._parameters.get(ref.name, ref.owner._buffers.get(ref.name))
    if (
        not isinstance(tensor, Tensor)
        or not tensor.is_floating_point()
        or tensor.layout != torch.strided
        or tensor.device.type == "meta"
        or not 0 < tensor.numel() <= KEEP_STORED_ELEMENTS  # an empty tensor has nothing to check
        or tensor.is_inference()
    ):
        return None
    return ref, tensor


def _flat_transform(spec: Spec, dtype: torch.dtype, device: torch.device) -> Transform | None:
    """A copy of ``spec``'s transform in ``dtype`` on ``device`` when it checks values flat: it says
    so (:attr:`~paramshape.Transform.flat_checks`), acts element by element, holds no submodules, and
    every setting is a scalar (so it means the same for every element of every shape)."""
    try:
        transform = resolve(spec)
    except ParamshapeError:
        return None
    if (
        not transform.flat_checks
        or transform.event_dim != 0
        or transform.supports_complex
        or isinstance(optional_setting(transform, "output_only"), str)
        or any(True for _ in transform.children())
        or any(t.numel() > 1 for t in (*transform.parameters(), *transform.buffers()))
    ):
        return None
    try:
        transform = copy.deepcopy(transform).to(device=device, dtype=dtype)
    except ParamshapeError:
        return None
    return transform


def _passes(members: list[tuple[int, TensorRef, Tensor]]) -> list[list[tuple[int, TensorRef, Tensor]]]:
    """``members`` cut into runs of at most :data:`FLAT_PASS_ELEMENTS` values."""
    runs: list[list[tuple[int, TensorRef, Tensor]]] = [[]]
    size = 0
    for member in members:
        count = member[2].numel()
        if runs[-1] and size + count > FLAT_PASS_ELEMENTS:
            runs.append([])
            size = 0
        runs[-1].append(member)
        size += count
    return runs


def _check_pass(transform: Transform, members: list[tuple[int, TensorRef, Tensor]]) -> dict[int, Checked]:
    """The plan's checks of ``init="keep"`` (membership, then the dry run's inverse, forward and
    round trip) on the members' values joined flat; ``{}`` when any of them fails."""
    tensors = [tensor.detach() for _, _, tensor in members]
    try:
        with torch.no_grad():
            flat = torch.cat([t.reshape(-1) for t in tensors])
            transform._bind("values", flat)
            transform.validate(flat)
            raw = transform.inverse(flat)
            check_output(transform, "inverse", raw, flat.shape, flat.dtype)
            constrained = transform(raw)
            check_output(transform, "forward", constrained, flat.shape, flat.dtype)
            if not bool(torch.isfinite(raw).all()):
                return {}
            # Each tensor's own round-trip scale, as the plan takes it: the largest magnitude among
            # its values and the transform's settings (values are finite: validate passed).
            sizes = [t.numel() for t in tensors]
            own = torch.stack(torch._foreach_norm(tensors, float("inf"))) if tensors else flat
            settings = [
                b.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()
                for b in transform.buffers()
                if b.is_floating_point() and b.numel()
            ]
            if settings:
                own = torch.maximum(own, torch.stack(settings).max().to(own.dtype))
            scale = own.to(flat.dtype).repeat_interleave(torch.tensor(sizes, device=flat.device))
            check_stored_values(transform, constrained, flat, scale)
    except Exception:  # noqa: BLE001  # not swallowed: the plans check these one by one and raise it
        return {}
    pieces = torch.split(raw, sizes)
    return {
        index: Checked(ref, tensor, piece.view(tensor.shape).clone())
        for (index, ref, tensor), piece in zip(members, pieces, strict=True)
    }
