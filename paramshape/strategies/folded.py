"""Step-folded reads (``constrain(..., fold=True)``): each constrained value computed once per
change of its stored tensor, instead of once per read.

A reparametrised tensor normally recomputes :math:`y = f(u)` at every read and differentiates the
map at every backward. On a small model that fixed cost per tensor (a dozen small operations forward,
as many backward, each an autograd node) is most of the constraint's price. Folded, a read returns a
cached value :math:`y`, a leaf tensor that requires grad; it is recomputed (outside autograd, with the
slope :math:`f'(u)` alongside, :meth:`~paramshape.Transform.value_and_slope`) only when the stored
tensor :math:`u` or a setting of the transform changed, which the tensors' version counters say
(an optimizer step, an assignment, ``load_state_dict``, a move). When a backward accumulates a
gradient :math:`g` into the value, a hook turns it into :math:`g\\,f'(u)` on ``u.grad`` at once, so
``u.grad`` holds after every ``backward()`` exactly what the default mode gives (up to rounding):
gradient accumulation over several backward calls, ``zero_grad``, gradient clipping and every
optimizer work unchanged.

Where the cached value cannot stand for the map (``parametrize.cached()``, hooks, ``torch.compile``,
``torch.func`` transforms, a stored tensor swapped by ``functional_call``), the read falls back to
the default computation. What it cannot serve raises: a backward with ``create_graph=True`` (no
second derivatives through a cached value), and a distributed process group (DDP and FSDP watch the
stored tensor's own gradient hooks, which a folded tensor bypasses).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from paramshape.errors import ParamshapeWarning, TransformError, UnsupportedTensorError

__all__ = [
    "GROUP_MAX_ELEMENTS",
    "FoldGroup",
    "FoldedValue",
    "check_foldable",
    "group_folded",
    "refuse_distributed",
]

_ATTRIBUTE = "_paramshape_folded"


def check_foldable(transform: nn.Module, shape: torch.Size, label: str) -> None:
    """Raise :class:`~paramshape.UnsupportedTensorError` unless ``transform`` is elementwise on a
    tensor of ``shape`` (a folded gradient is the incoming one times the slope, element by element)."""
    event_dims = transform.event_dims(len(shape))  # type: ignore[operator]
    if event_dims != () or transform.forward_shape(shape) != shape:  # type: ignore[operator]
        raise UnsupportedTensorError(
            f"{label}: fold=True needs an elementwise transform (each value depends on its own stored "
            f"entry alone), and {transform!r} acts on slices or matrices. Leave fold=False for it."
        )
    refuse_distributed(label)


def refuse_distributed(label: str) -> None:
    """Raise when a distributed process group is up: DDP and FSDP reduce gradients from hooks on the
    stored tensor's own accumulation, which a folded tensor's gradient does not pass through."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise UnsupportedTensorError(
            f"{label}: fold=True is not supported with torch.distributed (DDP and FSDP reduce the "
            "stored tensor's gradient from its own autograd hooks, which a folded read bypasses). "
            "Use the default fold=False."
        )


#: Tensors up to this many values are folded together: their values and slopes recomputed as one
#: flat tensor (a ``cat`` and one pass of the map), where on their own each would pay a dozen
#: operations' fixed cost. Larger tensors are recomputed on their own (the cost is the arithmetic).
GROUP_MAX_ELEMENTS = 65536


class FoldedValue:
    """The cached value of one folded tensor, held by its ``ParametrizationList`` (attribute
    ``_paramshape_folded``) and served by the fast getter of :func:`paramshape.lookup.modules.fast_read`.

    ``read()`` returns the cached value while nothing it depends on changed, which the version
    counters say: the stored tensor's (and its memory, dtype, ``requires_grad``: a move or a
    ``.data`` swap), the transform's buffers' (``load_state_dict`` writes bounds in place), and the
    cached value's own (an in-place write to a returned value is repaired at the next read, not
    served). Otherwise it recomputes: alone, or with its :class:`FoldGroup`.
    """

    __slots__ = (
        "_group",
        "_grouped_key",
        "_key",
        "_raw",
        "_tables",
        "_transform",
        "_value",
        "_value_version",
    )

    def __init__(self, raw: Tensor, transform: nn.Module) -> None:
        self._raw = raw
        self._transform = transform
        self._group: FoldGroup | None = None
        self._grouped_key: tuple[int, ...] | None = None  # the settings' key when the group formed
        # The buffer tables of the transform and its submodules (a composition's parts).
        self._tables = [module._buffers for module in transform.modules()]
        self._key: tuple[Any, ...] | None = None
        self._value: Tensor | None = None
        self._value_version = -1

    # A copy (deepcopy, pickle) starts empty: the cached value's gradient hook points at the
    # original's stored tensor, so it must not travel. The group does (its members are copied too).
    def __getstate__(self) -> dict[str, Any]:
        return {"raw": self._raw, "transform": self._transform, "group": self._group}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["raw"], state["transform"])  # type: ignore[misc]
        self._group = state["group"]

    def serves(self, stored: Tensor, transform: nn.Module) -> bool:
        """Whether this cache stands for ``transform(stored)``: the registered tensor, not one that
        ``functional_call`` swapped in, and no ``torch.func`` transform active."""
        return stored is self._raw and transform is self._transform and not _functorch_active()

    def settings_key(self) -> tuple[int, ...]:
        """Identity, memory and version of the transform's buffers (and its submodules')."""
        return tuple(
            [
                x
                for table in self._tables
                for b in table.values()
                if b is not None
                for x in (id(b), b.data_ptr(), b._version)
            ]
        )

    def _current_key(self) -> tuple[Any, ...]:
        raw = self._raw
        # The buffers are looked up afresh (load_state_dict may replace a bound rather than write it).
        settings = [
            (id(b), b.data_ptr(), b._version)
            for table in self._tables
            for b in table.values()
            if b is not None
        ]
        return (raw._version, raw.data_ptr(), raw.dtype, raw.requires_grad, *settings)

    def read(self) -> Tensor:
        """The cached value, recomputed first if the stored tensor, a bound or the value itself
        changed since (a write into the value warns: it is lost)."""
        value = self._value
        if value is not None and value._version != self._value_version:
            _warn_lost_write(self)
        if value is None or value._version != self._value_version or self._current_key() != self._key:
            group = self._group
            # The group recomputes its members; one that just left it recomputes alone.
            value = (
                self._value
                if group is not None and group.refresh() and self._group is group
                else self._refresh()
            )
        assert value is not None  # both refreshes set it
        return value if torch.is_grad_enabled() else value.detach()

    def _refresh(self) -> Tensor:
        raw = self._raw
        refuse_distributed(_label(self._transform))
        value, slope = self._transform.value_and_slope(raw.detach())  # type: ignore[operator]
        # A new leaf each time, never an in-place update: a graph built from the previous value
        # (read before an assignment, differentiated after it) keeps the value and slope it used.
        self._set(value.detach(), slope)
        assert self._value is not None
        return self._value

    def _set(self, value: Tensor, slope: Tensor) -> None:
        raw = self._raw
        value.requires_grad_(raw.requires_grad)
        if raw.requires_grad:
            value.register_post_accumulate_grad_hook(_chain_rule(raw, slope))  # type: ignore[no-untyped-call]
        self._value, self._key, self._value_version = value, self._current_key(), value._version


class FoldGroup:
    """Folded tensors of one ``constrain`` call that share a transform's settings (the same class,
    scalar settings, dtype and device) and are small (:data:`GROUP_MAX_ELEMENTS`): recomputed
    together, as one flat tensor, whenever one of them is read stale. Their cached values are views
    of one flat value, allocated anew at each refresh (so that a graph built before keeps what it
    used); a member whose transform's settings change leaves the
    group and is recomputed on its own from then on."""

    def __init__(self, members: list[FoldedValue], key: tuple[Any, ...]) -> None:
        self.members = members
        self._settings = key  # what the members share (_group_key)
        # The flat stored values, values and slopes, and the members' views of the first.
        self._flat: tuple[Tensor, Tensor, Tensor, list[Tensor]] | None = None
        for member in members:
            member._group = self
            member._grouped_key = member.settings_key()

    def __getstate__(self) -> dict[str, Any]:
        return {"members": self.members, "settings": self._settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The members' settings keys are taken afresh at the first refresh (a copy's buffers are new).
        self.members, self._settings, self._flat = state["members"], state["settings"], None

    def refresh(self) -> bool:
        """Recompute every member; ``False`` when fewer than two remain (each member then alone)."""
        members = []
        for member in self.members:
            key = member.settings_key()
            if member._grouped_key is None:
                member._grouped_key = key
            if member._group is self and key != member._grouped_key and _group_key(member) == self._settings:
                member._grouped_key = key  # its settings were written (a checkpoint), with the same values
            if member._group is self and key == member._grouped_key:
                members.append(member)
            else:
                member._group = None
        if len(members) < 2:
            for member in members:
                member._group = None
            self.members, self._flat = [], None
            return False
        self.members = members
        refuse_distributed(_label(members[0]._transform))
        raws = [member._raw.detach() for member in members]
        # New tensors at every refresh, never an in-place update: a graph built from the previous
        # values (read before a step, differentiated after it) keeps the values and slopes it used.
        stored, value, slope, views = self._flat = _allocate(members, raws)
        with torch.no_grad():
            torch._foreach_copy_(views, raws)
            members[0]._transform.value_and_slope(stored, (value, slope))  # type: ignore[operator]
        offset = 0
        for member, raw in zip(members, raws, strict=True):
            end = offset + raw.numel()
            member._set(value[offset:end].view(raw.shape), slope[offset:end].view(raw.shape))
            offset = end
        return True


def _allocate(members: list[FoldedValue], raws: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    total = sum(raw.numel() for raw in raws)
    stored = raws[0].new_empty(total)
    views, offset = [], 0
    for raw in raws:
        views.append(stored[offset : offset + raw.numel()].view(raw.shape))
        offset += raw.numel()
    return stored, torch.empty_like(stored), torch.empty_like(stored), views


def group_folded(folded: list[FoldedValue]) -> None:
    """Form the :class:`FoldGroup` s of one ``constrain`` call's folded tensors."""
    groups: dict[tuple[Any, ...], list[FoldedValue]] = {}
    for member in folded:
        key = _group_key(member)
        if key is not None:
            groups.setdefault(key, []).append(member)
    for key, members in groups.items():
        if len(members) > 1:
            FoldGroup(members, key)


def _group_key(member: FoldedValue) -> tuple[Any, ...] | None:
    """Which members can share one flat computation: small tensors, on the same dtype and device, of
    transforms of one class whose buffers are all scalars, equal in value, and whose repr (their
    other settings) is equal. ``None``: the member stays alone."""
    raw, transform = member._raw, member._transform
    if raw.numel() > GROUP_MAX_ELEMENTS or raw.device.type == "meta":
        return None
    scalars = []
    for buffer in transform.buffers():
        if buffer.dim() != 0:
            return None
        scalars.append(buffer.item())  # once, when constrain() forms the group
    return (type(transform), raw.dtype, raw.device, repr(transform), tuple(scalars))


def _chain_rule(raw: Tensor, slope: Tensor) -> Any:
    def hook(value: Tensor) -> None:
        grad = value.grad
        value.grad = None
        if grad is None:
            return
        if grad.requires_grad:
            raise TransformError(
                "a folded constrained tensor (constrain(..., fold=True)) has no second derivatives: "
                "backward(create_graph=True) reached it. Use fold=False for double backward."
            )
        if raw.grad is None:
            raw.grad = (
                grad.mul_(slope) if grad.layout == torch.strided and grad.is_contiguous() else grad * slope
            )
        else:
            raw.grad.addcmul_(grad, slope)

    return hook


def _warn_lost_write(folded: FoldedValue) -> None:
    """Warn that a cached value was written in place: the cache is recomputed from the stored tensor,
    so that write (``nn.init.*_``, a ``no_grad`` in-place op) is lost, as in the default mode
    (:func:`paramshape.lookup.modules.check_lost_write`). The values of a group are views of one
    flat tensor and share its version counter, so a write is seen, but not told apart, from any member."""
    label = _label(folded._transform)
    where = f"{label} (or a tensor folded together with it)" if folded._group is not None else label
    warnings.warn(
        f"{where}: a value read from it was written in place, and the write was lost: a constrained "
        "tensor's value is recomputed from its stored tensor. Assign instead (module.name = value, "
        "checked against the set), or use ps.init_.",
        ParamshapeWarning,
        stacklevel=4,
    )


def _label(transform: nn.Module) -> str:
    return getattr(transform, "_target", None) or "a folded tensor"


_functorch_active = torch._C._are_functorch_transforms_active
