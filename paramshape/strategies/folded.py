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

import sys
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
    if _DISTRIBUTED and torch.distributed.is_initialized():
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
        "_alone",
        "_group",
        "_grouped_key",
        "_raw",
        "_raw_grad",
        "_raw_pointer",
        "_raw_version",
        "_seen",
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
        self._value: Tensor | None = None
        self._value_version = -1
        # What the cached value was computed from (set with it): the stored tensor's version,
        # memory and requires_grad, and per buffer (table, name, tensor, version, memory).
        self._raw_version = self._raw_pointer = -1
        self._raw_grad = False
        self._seen: list[tuple[dict[str, Any], str, Tensor | None, int, int]] = []
        self._alone = _Alternating()  # the values and slopes it computes when not in a group

    # A copy (deepcopy, pickle) starts empty: the cached value's gradient hook points at the
    # original's stored tensor, so it must not travel. The group does (its members are copied too).
    def __getstate__(self) -> dict[str, Any]:
        return {"raw": self._raw, "transform": self._transform, "group": self._group}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["raw"], state["transform"])  # type: ignore[misc]
        self._group = state["group"]

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

    def _settings_same(self) -> bool:
        """Whether every buffer is the tensor it was when the value was computed, unwritten (its
        version) and with the same memory (a ``.data`` swap). The buffers are looked up afresh:
        ``load_state_dict(assign=True)`` or a move replaces a bound rather than writes it."""
        for table, name, buffer, version, pointer in self._seen:
            if table.get(name) is not buffer or (
                buffer is not None and (buffer._version != version or buffer.data_ptr() != pointer)
            ):
                return False
        return True

    def read(self) -> Tensor:
        """The cached value, recomputed first if the stored tensor, a bound or the value itself
        changed since (a write into the value warns: it is lost)."""
        # Fresh while the value was not written into, the stored tensor not changed (version: an
        # optimizer step, an assignment, load_state_dict; memory and dtype: a move or a .data
        # swap; requires_grad), and no buffer of the transform changed (_settings_same).
        value, raw = self._value, self._raw
        if (
            value is None
            or value._version != self._value_version
            or raw._version != self._raw_version
            or raw.data_ptr() != self._raw_pointer
            or raw.requires_grad is not self._raw_grad
            or not self._settings_same()
        ):
            if torch.is_inference_mode_enabled():
                # Inference tensors have no version counter to cache against, and the kept sets
                # must stay normal tensors: computed afresh, served once, nothing kept.
                computed: Tensor = self._transform.value_and_slope(raw.detach())[0]  # type: ignore[operator]
                return computed
            if value is not None and value._version != self._value_version:
                _warn_lost_write(self)
            group = self._group
            # The group recomputes its members; one that just left it recomputes alone.
            if not (group is not None and group.refresh() and self._group is group):
                self._refresh()
            value = self._value
            assert value is not None  # both refreshes set it
        return value if torch.is_grad_enabled() else value.detach()

    def _refresh(self) -> Tensor:
        raw = self._raw
        refuse_distributed(_label(self._transform))
        buffers = self._alone.next([raw])
        # No no_grad block (a tenth of a small recomputation's time): nothing here requires grad
        # (the stored tensor detached, the flat buffers never do, a folded transform's settings
        # are not learnable), and value_and_slope returns values without history.
        self._transform.value_and_slope(  # type: ignore[operator]
            raw.detach(), out=(buffers.value.view(raw.shape), buffers.slope.view(raw.shape))
        )
        value = buffers.leaves[0]
        self._store(value)
        return value

    def _store(self, value: Tensor, settings_seen: bool = False) -> None:
        """Cache ``value`` with what it was computed from (``settings_seen``: the buffers are those
        recorded last, unchanged)."""
        raw = self._raw
        self._value, self._value_version = value, value._version
        self._raw_version, self._raw_pointer, self._raw_grad = raw._version, raw.data_ptr(), raw.requires_grad
        if settings_seen:
            return
        self._seen = [
            (table, name, b, -1, 0) if b is None else (table, name, b, b._version, b.data_ptr())
            for table in self._tables
            for name, b in table.items()
        ]


class _Buffers:
    """A set of flat tensors for some stored tensors (a group's members, or one tensor): the values,
    the slopes, and each stored tensor's value as a view of the flat value (a leaf that requires
    grad where its stored tensor does, with the gradient hook of its stored tensor and its piece of
    the slopes, registered once)."""

    __slots__ = ("_memory_references", "leaves", "slope", "value")

    def __init__(self, raws: list[Tensor], trained: list[bool]) -> None:
        first = raws[0]
        total = sum(raw.numel() for raw in raws)
        self.value = torch.empty(total, dtype=first.dtype, device=first.device)
        self.slope = torch.empty_like(self.value)
        # The pieces in the stored tensors' shapes in one call (torch's own flat-bucket helper).
        leaves = list(_unflatten(self.value, raws))
        slopes = _unflatten(self.slope, raws)
        for leaf, raw, slope, grad in zip(leaves, raws, slopes, trained, strict=True):
            if grad:
                leaf.requires_grad_(True)
                leaf.register_post_accumulate_grad_hook(_chain_rule(raw, slope))  # type: ignore[no-untyped-call]
        self.leaves = leaves
        self._memory_references = _memory_use_count(self.value)  # the flat value and the leaves

    def held(self) -> bool:
        """Whether anything but these buffers still refers to a value: a Python reference (a value
        read and kept), a graph built from it (its gradient accumulator, a saved value: torch keeps
        the Python object of a tensor that C++ refers to alive with a reference of its own, tested
        in tests/test_fold.py), or another tensor on its memory (a value read under ``no_grad``,
        which is detached; a view). Such a value must not be overwritten: it would change under its
        holder, and a graph's backward would multiply by the new slopes, which nothing could detect
        when the graph saved no value."""
        if _storage_use_count is None or _memory_use_count(self.value) > self._memory_references:
            return True  # (without torch's counter every set is taken as held: slower, never wrong)
        leaves = self.leaves
        # Indexed, as _FREE_REFERENCES was counted (a loop variable would be one more reference).
        return any(sys.getrefcount(leaves[index]) > _FREE_REFERENCES for index in range(len(leaves)))


class _Alternating:
    """Two :class:`_Buffers` for the same stored tensors, written in turn, laid out again when a
    stored tensor is replaced or changes shape, dtype, device or ``requires_grad``.

    Written in place, the values cost no allocation (on CPU, the page faults of a new tensor of a
    megabyte cost as much as two passes of arithmetic over it) and no hook registration per
    refresh. Two sets, not one: a graph built from the values before a refresh, differentiated
    after it, keeps the values and slopes it used (as the default mode's graph does). A set still
    in use when its turn comes again (:meth:`_Buffers.held`: a graph that outlived two refreshes,
    a value kept) is left to its users, and a new set takes its place: a value once read is never
    rewritten, and every graph is differentiated with the slopes of its own values, as in the
    default mode. In a training loop (read, backward, step) that never happens: the graph of two
    steps ago is gone."""

    __slots__ = ("_layout", "_sets", "_turn")

    def __init__(self) -> None:
        self._layout: tuple[Any, ...] | None = None
        self._sets: tuple[_Buffers, _Buffers] | None = None
        self._turn = 0

    def next(self, raws: list[Tensor]) -> _Buffers:
        """The set the next refresh of ``raws`` writes."""
        trained = [raw.requires_grad for raw in raws]
        layout = (*map(id, raws), *trained, *(raw.shape for raw in raws), raws[0].dtype, raws[0].device)
        sets = self._sets
        if sets is None or layout != self._layout:
            sets = self._sets = (_Buffers(raws, trained), _Buffers(raws, trained))
            self._layout = layout
        turn = self._turn
        buffers = sets[turn]
        if buffers.held():
            buffers = _Buffers(raws, trained)
            self._sets = (buffers, sets[1]) if turn == 0 else (sets[0], buffers)
        self._turn ^= 1
        return buffers


class FoldGroup:
    """Folded tensors of one ``constrain`` call that share a transform's settings (the same class,
    scalar settings, dtype and device) and are small (:data:`GROUP_MAX_ELEMENTS`): recomputed
    together, as one flat tensor, whenever one of them is read stale. A member whose transform's
    settings change leaves the group and is recomputed on its own from then on.

    The members' values are views of one flat value, written in place by one pass of the map
    (:meth:`~paramshape.Transform.value_and_slope` with ``out=``) into the next of two sets of flat
    tensors (:class:`_Alternating`): a refresh costs a ``cat`` and the map's operations, whatever
    the number of members, and no autograd node. Each value is a leaf with its gradient hook
    registered once."""

    def __init__(self, members: list[FoldedValue], key: tuple[Any, ...]) -> None:
        self.members = members
        self._settings = key  # what the members share (_group_key)
        self._flat_raws: tuple[list[int], list[Tensor]] | None = None
        self._buffers = _Alternating()
        for member in members:
            member._group = self
            member._grouped_key = member.settings_key()

    def __getstate__(self) -> dict[str, Any]:
        return {"members": self.members, "settings": self._settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The members' settings keys are taken afresh at the first refresh (a copy's buffers are new),
        # and the flat tensors laid out again (their hooks point at the original's stored tensors).
        self.members, self._settings, self._flat_raws = state["members"], state["settings"], None
        self._buffers = _Alternating()

    def _current_members(self) -> tuple[list[FoldedValue], list[bool]]:
        """The members still in the group: those whose settings were not rewritten since (a member
        whose buffers were written with the same values, by a checkpoint, stays); and for each,
        whether its buffers are the ones recorded with its value (nothing to record again)."""
        members, unchanged = [], []
        for member in self.members:
            if member._group is not self:
                continue
            if member._value is not None and member._settings_same():
                members.append(member)  # its settings unchanged since the group last computed it
                unchanged.append(True)
                continue
            key = member.settings_key()
            if member._grouped_key is None:
                member._grouped_key = key
            elif key != member._grouped_key:
                if _group_key(member) != self._settings:
                    member._group = None
                    continue
                member._grouped_key = key
            members.append(member)
            unchanged.append(False)
        return members, unchanged

    def refresh(self) -> bool:
        """Recompute every member; ``False`` when fewer than two remain (each member then alone)."""
        members, unchanged = self._current_members()
        if len(members) < 2:
            for member in members:
                member._group = None
            self.members = []
            return False
        self.members = members
        refuse_distributed(_label(members[0]._transform))
        raws = [member._raw for member in members]
        pointers = [raw.data_ptr() for raw in raws]
        if self._flat_raws is None or self._flat_raws[0] != pointers:
            # Flat views of the stored tensors, kept while each holds the same memory (a copy, for
            # a tensor that is not contiguous, would go stale: not kept).
            flats = [raw.detach().reshape(-1) for raw in raws]
            self._flat_raws = (pointers, flats) if all(raw.is_contiguous() for raw in raws) else None
        else:
            flats = self._flat_raws[1]
        buffers = self._buffers.next(raws)
        # Outside autograd without a no_grad block, as in FoldedValue._refresh.
        members[0]._transform.value_and_slope(torch.cat(flats), out=(buffers.value, buffers.slope))  # type: ignore[operator]
        for member, leaf, same in zip(members, buffers.leaves, unchanged, strict=True):
            member._store(leaf, same)
        return True


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
    """The gradient hook of a folded value: ``u.grad += g f'(u)`` (or ``=``, after ``zero_grad``).

    The gradient backward left on the value is taken off it (the value is a cache: its stored
    tensor gets the gradient), and refused when it carries a graph. The product is in place where
    the gradient is a plain contiguous tensor (backward made it for this hook alone). One hook runs
    per folded tensor and backward, so its body is written out, without helper calls."""

    def hook(value: Tensor) -> None:
        grad = value.grad
        if grad is None:
            return
        value.grad = None
        if grad.requires_grad:
            raise TransformError(
                "a folded constrained tensor (constrain(..., fold=True)) has no second derivatives: "
                "backward(create_graph=True) reached it. Use fold=False for double backward."
            )
        held = raw.grad
        if grad.layout != torch.strided or (held is not None and held.layout != torch.strided):
            # A sparse gradient (an Embedding(sparse=True)), or one held: the product keeps the
            # gradient's layout (only the rows it holds), and is summed into the held one as
            # autograd's accumulation sums layouts: in place into a dense one, a new tensor into a
            # sparse one (dense when either is).
            product = grad * slope
            if held is None:
                raw.grad = product
            elif held.layout == torch.strided:
                held.add_(product)
            elif product.layout == torch.strided:
                raw.grad = product.add_(held)  # torch adds a sparse tensor into a dense one only
            else:
                raw.grad = held + product
        elif held is not None:
            held.addcmul_(grad, slope)
        elif grad.is_contiguous():
            raw.grad = grad.mul_(slope)
        else:
            raw.grad = grad * slope

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


#: Whether this torch build has ``torch.distributed`` at all (fixed for the process).
_DISTRIBUTED = torch.distributed.is_available()
_unflatten = torch._C._nn.unflatten_dense_tensors


#: Torch's (private, long-standing) count of the references to a tensor's memory.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _memory_use_count(tensor: Tensor) -> int:
    """How many tensors (and storage handles) refer to ``tensor``'s memory (0 without torch's
    counter, which :meth:`_Buffers.held` checks first)."""
    if _storage_use_count is None:
        return 0
    return int(_storage_use_count(tensor.untyped_storage()._cdata))


def _references_in_a_list(tensors: list[Tensor]) -> int:
    return sys.getrefcount(tensors[0])


#: ``sys.getrefcount`` of a tensor held by one list only, read as ``_Buffers.held`` reads it.
_FREE_REFERENCES = _references_in_a_list([torch.empty(0)])
