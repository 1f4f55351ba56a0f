"""Per-module bookkeeping for what paramshape attaches without a parametrization: constraints that keep
a plain parameter (``method="project"`` and ``method="penalty"``) and per-tensor gradient clipping,
plus the optimizer hook that projects.

Each module that owns such a tensor holds one :class:`ModuleState` in its ``__dict__`` (not a
submodule, so ``state_dict`` keys do not change). Entries keep a reference to the tensor they apply
to; the optimizer hook finds them through a weak set of the states that hold a projection, so nothing
global keeps a module alive. Deep copies and pickles carry the state, and its ``__setstate__``
re-registers the copy (and its gradient hooks), because ``Parameter.__deepcopy__`` drops hooks.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from paramshape.errors import ProjectionUnavailableError, SpecError
from paramshape.numerics.precision import compute_dtype, membership_tolerance
from paramshape.strategies import dispatch
from paramshape.transforms.base import Transform

__all__ = [
    "STATE_ATTRIBUTE",
    "GradClip",
    "ModuleState",
    "PlainConstraint",
    "PlainMethod",
    "add_registry_listener",
    "check_limit",
    "discard_state_if_empty",
    "holds_any",
    "module_states",
    "plain_tensor_ids",
    "state_of",
    "stored_tensor",
]

#: The ``__dict__`` key under which a module keeps its :class:`ModuleState`.
STATE_ATTRIBUTE = "_paramshape_state"

PlainMethod = Literal["project", "penalty", "riemannian", "lagrangian"]


def stored_tensor(owner: nn.Module, name: str) -> Tensor | None:
    """The tensor object an optimizer updates for ``owner.name``: the parametrization's ``original``,
    or the parameter or buffer itself."""
    if parametrize.is_parametrized(owner, name):
        return owner.parametrizations[name].original
    tensor = owner._parameters.get(name)
    return tensor if tensor is not None else owner._buffers.get(name)


@dataclass(eq=False)
class PlainConstraint:
    """A constraint that keeps ``owner.name`` a plain parameter: projected after each optimizer step
    (``"project"``) or measured by :func:`~paramshape.penalty` (``"penalty"``)."""

    transform: Transform
    method: PlainMethod
    weight: float | None
    tensor: Tensor

    def transform_for(self, tensor: Tensor) -> Transform:
        """The transform, moved to ``tensor``'s dtype and device if the module was converted since
        (``module.to()`` does not reach it: it is not a submodule)."""
        # A complex tensor's transform holds real settings at its precision (Module.to(complex)
        # warns; a set of complex tensors keeps its complex buffers complex on its own).
        dtype = tensor.dtype.to_real() if tensor.is_complex() else tensor.dtype
        bound = next((b for b in self.transform.buffers() if b.is_floating_point()), None)
        if bound is not None and (bound.dtype != dtype or bound.device != tensor.device):
            self.transform.to(device=tensor.device, dtype=dtype)
        return self.transform

    def project_(self) -> None:
        """Replace the tensor's values by their projection onto the set, in place."""
        tensor = self.tensor
        with torch.no_grad():
            tensor.copy_(self.transform_for(tensor).project(tensor))

    def squared_distance(self) -> Tensor:
        """Differentiable squared Euclidean distance of the tensor to the set; exactly 0 for values that
        :meth:`~paramshape.Transform.contains` accepts."""
        return squared_distance(self.transform_for(self.tensor), self.tensor)


def squared_distance(transform: Transform, y: Tensor) -> Tensor:
    r"""The squared Euclidean distance of ``y`` to the set, beyond the tolerance of
    :meth:`~paramshape.Transform.contains`, so values it accepts count exactly 0.

    Elementwise: :math:`\sum_i (|y_i - P(y)_i| - \tau_i)_+^2` with :math:`\tau_i` four ulps of the
    bound :math:`P(y)_i` (``membership_tolerance``, the tolerance of ``contains``); it differs from
    the plain squared distance by a few ulps and is continuous, with gradient
    :math:`2(|y - P(y)| - \tau)_+ \operatorname{sign}(y - P(y))`. Slices (``event_dim > 0``):
    :math:`\lVert y - P(y)\rVert^2` for the slices ``contains`` rejects. :math:`P(y)` is detached: the
    gradient of the squared distance to a convex set is :math:`2(y - P(y))`. Transforms without a
    projection fall back on the squared excess their membership test measures."""
    work = compute_dtype(y.dtype)
    with torch.no_grad():
        try:
            target = transform.project(y)
        except ProjectionUnavailableError:
            target = None
    if target is None:
        return transform._excess(y).square().sum().to(work)
    if transform.event_dim == 0:
        tolerance = membership_tolerance(y.dtype, target).to(work)
        gap = ((y.to(work) - target.to(work)).abs() - tolerance).clamp_min(0.0)
        return gap.square().sum()
    with torch.no_grad():
        inside = transform.contains(y)
    difference = y.to(work) - target.to(work)
    # |y - P(y)|^2: the modulus for a complex tensor (its square would be complex).
    gap = difference.abs().square() if difference.is_complex() else difference.square()
    return torch.where(inside, torch.zeros((), dtype=gap.dtype, device=y.device), gap).sum()


class GradClip:
    """The tensor hook behind :func:`~paramshape.clip_grad`: clip each gradient entry to
    ``[-max_value, max_value]``, then rescale the gradient to a norm of at most ``max_norm``."""

    # Tensor pickling warns about hooks it drops unless they say so; ModuleState re-registers them.
    __torch_unserializable__ = True

    def __init__(self, max_norm: float | None, max_value: float | None) -> None:
        self.max_norm = max_norm
        self.max_value = max_value

    def __call__(self, grad: Tensor) -> Tensor:
        work = grad.to(compute_dtype(grad.dtype))
        if self.max_value is not None:
            work = work.clamp(-self.max_value, self.max_value)
        if self.max_norm is not None:
            norm = torch.linalg.vector_norm(work)
            scale = (self.max_norm / norm.clamp_min(torch.finfo(work.dtype).tiny)).clamp(max=1.0)
            work = work * scale
        return work.to(grad.dtype)

    def __repr__(self) -> str:
        settings = [f"{key}={value}" for key, value in vars(self).items() if value is not None]
        return f"GradClip({', '.join(settings)})"


@dataclass(eq=False)
class _ClipEntry:
    clip: GradClip
    tensor: Tensor
    handle: RemovableHandle | None = field(default=None, repr=False)

    def attach(self) -> None:
        self.handle = self.tensor.register_hook(self.clip)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class ModuleState:
    """What paramshape keeps on one module outside parametrize: plain constraints and gradient clips,
    by tensor name."""

    def __init__(self, owner: nn.Module) -> None:
        self.plain: dict[str, PlainConstraint] = {}
        self.clips: dict[str, _ClipEntry] = {}
        self._owner: weakref.ref[nn.Module] | None = weakref.ref(owner)

    # ------------------------------------------------------------------ plain constraints
    def put_plain(self, name: str, entry: PlainConstraint) -> None:
        self.plain[name] = entry
        _update_registry(self)

    def pop_plain(self, name: str) -> PlainConstraint | None:
        entry = self.plain.pop(name, None)
        _update_registry(self)
        return entry

    # ------------------------------------------------------------------ gradient clipping
    def set_clip(self, name: str, clip: GradClip | None, tensor: Tensor | None) -> None:
        old = self.clips.pop(name, None)
        if old is not None:
            old.detach()
        if clip is not None and tensor is not None:
            entry = _ClipEntry(clip, tensor)
            entry.attach()
            self.clips[name] = entry

    # ------------------------------------------------------------------ keeping in step
    def sync(self, owner: nn.Module | None = None) -> None:
        """Follow tensors the module replaced since (``load_state_dict(assign=True)``, a new
        ``Parameter`` assigned): entries are keyed by name, the module's current tensor wins."""
        if owner is not None:
            self._owner = weakref.ref(owner)
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            return
        for name, entry in self.plain.items():
            current = owner._parameters.get(name)
            if current is not None and current is not entry.tensor:
                entry.tensor = current
                dispatch.changed()  # the optimizers that hold the new tensor now concern a handler
        for name, clip in list(self.clips.items()):
            current = stored_tensor(owner, name)
            if current is not None and current is not clip.tensor:
                self.set_clip(name, clip.clip, current)

    def empty(self) -> bool:
        return not self.plain and not self.clips

    # ------------------------------------------------------------------ copying and pickling
    def __getstate__(self) -> dict[str, Any]:
        return {"plain": self.plain, "clips": {name: (e.clip, e.tensor) for name, e in self.clips.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The owner is not known here (its __dict__ is filled after this); the next walk over the
        # module (constraints, project_, penalty, constrain) sets it. The tensors are the copies.
        self.plain = state["plain"]
        self.clips = {}
        self._owner = None
        for name, (clip, tensor) in state["clips"].items():
            if tensor.requires_grad:
                self.set_clip(name, clip, tensor)
        _update_registry(self)


def state_of(module: nn.Module, *, create: bool = False) -> ModuleState | None:
    """The module's :class:`ModuleState`, created when asked."""
    state = module.__dict__.get(STATE_ATTRIBUTE)
    if state is None and create:
        state = ModuleState(module)
        module.__dict__[STATE_ATTRIBUTE] = state
    return state


def discard_state_if_empty(module: nn.Module) -> None:
    state = module.__dict__.get(STATE_ATTRIBUTE)
    if state is not None and state.empty():
        del module.__dict__[STATE_ATTRIBUTE]
        _PROJECTING.discard(state)
        _update_hook()


def module_states(root: nn.Module) -> Iterator[tuple[str, nn.Module, ModuleState]]:
    """``(prefix, module, state)`` for every module under ``root`` that holds a state, synced."""
    for prefix, module in root.named_modules():
        state = module.__dict__.get(STATE_ATTRIBUTE)
        if state is not None:
            state.sync(module)
            yield prefix, module, state


# ---------------------------------------------------------------------- the optimizer hook
#: States holding at least one ``method="project"`` entry. Weak: a module that is garbage collected
#: drops out by itself, and the hook holds no reference to any module or tensor.
_PROJECTING: weakref.WeakSet[ModuleState] = weakref.WeakSet()
#: Bumped whenever a projecting entry is added or removed: the cached plans are then rebuilt.
_GENERATION = [0]
#: Per optimizer, what its step hook projects (weak: the plan dies with the optimizer).
_PLANS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _ProjectionPlan] = weakref.WeakKeyDictionary()


#: Called with a state whenever its plain entries change (added, removed, unpickled): the other
#: strategies' step hooks (:mod:`~.riemannian`, :mod:`~.lagrangian`) keep their own registries.
_REGISTRY_LISTENERS: list[Any] = []


def add_registry_listener(listener: Any) -> None:
    """Call ``listener(state)`` whenever the plain entries of a :class:`ModuleState` change."""
    if listener not in _REGISTRY_LISTENERS:
        _REGISTRY_LISTENERS.append(listener)


def _update_registry(state: ModuleState) -> None:
    for listener in _REGISTRY_LISTENERS:
        listener(state)
    if any(entry.method == "project" for entry in state.plain.values()):
        _PROJECTING.add(state)
    else:
        _PROJECTING.discard(state)
    _GENERATION[0] += 1
    dispatch.changed()
    _update_hook()


def _update_hook() -> None:
    if _PROJECTING:
        dispatch.enable(_PROJECT_HANDLER)
    else:
        dispatch.disable(_PROJECT_HANDLER.name)


def plain_tensor_ids(states: Any, method: str) -> set[int]:
    """The ids of the tensors that the ``method`` entries of ``states`` (synced first) act on."""
    ids: set[int] = set()
    for state in list(states):
        state.sync()
        ids.update(id(entry.tensor) for entry in state.plain.values() if entry.method == method)
    return ids


def holds_any(optimizer: torch.optim.Optimizer, ids: set[int]) -> bool:
    """Whether ``optimizer`` steps one of the tensors whose ids are ``ids``."""
    return bool(ids) and any(id(p) in ids for group in optimizer.param_groups for p in group["params"])


class _ProjectionPlan:
    """What one optimizer's step projects, built once and reused while nothing it depends on changed.

    Clamp-type projections (:meth:`~paramshape.Transform.clamp_bounds`) run in place as one
    ``_foreach_maximum_`` and one ``_foreach_minimum_`` over all their tensors, with the bounds cast
    and expanded once; the others call their entry's :meth:`PlainConstraint.project_`. Each step checks
    only what could make the plan stale without a registry change: the optimizer's parameter lists,
    the tensor each module holds under the name, the tensors' dtype, device and shape, and the
    bounds' version counters (an in-place change of a bound, ``load_state_dict`` included)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.generation = _GENERATION[0]
        self.groups = _group_signature(optimizer)
        targets: dict[int, tuple[PlainConstraint, ModuleState]] = {}
        for state in list(_PROJECTING):
            state.sync()
            for entry in state.plain.values():
                if entry.method == "project":
                    targets[id(entry.tensor)] = (entry, state)
        #: (owner's weak reference, name, tensor): the module must still hold this tensor.
        self.owned: list[tuple[weakref.ref[nn.Module], str, Tensor]] = []
        #: (bound, its version when the plan was built).
        self.versions: list[tuple[Tensor, int]] = []
        #: (tensor, dtype, device, shape) of the clamped tensors, which the cast bounds must match.
        self.layouts: list[tuple[Tensor, torch.dtype, torch.device, torch.Size]] = []
        # Per side (low, high): by value, the tensors with that 0-d bound, read as a Python number
        # once, here, not at each step (on a GPU that read waits for the device), so a shared bound
        # is one foreach call with a scalar, the fastest form; tensors with a tensor bound and the
        # bound cast and expanded to the tensor's dtype, device and shape.
        self.scalar: tuple[dict[float, list[Tensor]], ...] = ({}, {})
        #: Large tensors with two 0-d bounds: one ``clamp_(low, high)`` each, one pass where the
        #: foreach pair makes two (on CPU foreach runs a kernel per tensor anyway).
        self.clamped: list[tuple[Tensor, float, float]] = []
        self.tensor: tuple[tuple[list[Tensor], list[Tensor]], ...] = (([], []), ([], []))
        self.others: list[PlainConstraint] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                found = targets.pop(id(param), None)
                if found is None:
                    continue
                entry, state = found
                if state._owner is not None:
                    # A copied state learns its owner at the next walk over the module; until then
                    # the tensor it holds is the one to project.
                    name = next(key for key, value in state.plain.items() if value is entry)
                    self.owned.append((state._owner, name, param))
                # At the tensor's dtype and device (module.to() does not reach the transform), as
                # project_() sees it: Box(-0.1, 0.1) clamps a float64 tensor at float64's 0.1.
                bounds = entry.transform_for(param).clamp_bounds()
                if bounds is None or not param.is_floating_point():
                    self.others.append(entry)
                    continue
                self.layouts.append((param, param.dtype, param.device, param.shape))
                low, high = bounds
                if (
                    param.numel() >= _CLAMP_ALONE_ELEMENTS
                    and low is not None
                    and high is not None
                    and low.dim() == 0
                    and high.dim() == 0
                ):
                    self.versions += [(low, low._version), (high, high._version)]
                    self.clamped.append((param, float(low), float(high)))
                    continue
                for side, bound in enumerate(bounds):
                    if bound is None:
                        continue
                    self.versions.append((bound, bound._version))
                    if bound.dim() == 0:
                        # A Python number means that number at the tensor's precision: the same
                        # rounding as casting the bound tensor.
                        self.scalar[side].setdefault(float(bound), []).append(param)
                    else:
                        self.tensor[side][0].append(param)
                        self.tensor[side][1].append(_bound_like(bound, param))

    def current(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.generation != _GENERATION[0] or self.groups != _group_signature(optimizer):
            return False
        for owner_ref, name, param in self.owned:
            owner = owner_ref()
            if owner is None or owner._parameters.get(name) is not param:
                return False
        for bound, version in self.versions:
            if bound._version != version:
                return False
        for param, dtype, device, shape in self.layouts:
            if param.dtype != dtype or param.device != device or param.shape != shape:
                return False
        return True

    def run(self) -> None:
        with torch.no_grad():
            for value, tensors in self.scalar[0].items():
                torch._foreach_clamp_min_(tensors, value)
            for value, tensors in self.scalar[1].items():
                torch._foreach_clamp_max_(tensors, value)
            if self.tensor[0][0]:
                torch._foreach_maximum_(*self.tensor[0])
            if self.tensor[1][0]:
                torch._foreach_minimum_(*self.tensor[1])
            for param, low, high in self.clamped:
                param.clamp_(low, high)
        for entry in self.others:
            entry.project_()


#: From this many values a tensor with two 0-d bounds is clamped on its own, in one pass: 105
#: against 183 us for three 512 x 512 weights (2-vCPU AMD EPYC, 1 thread). Below, the foreach
#: calls over all small tensors save a dispatch per tensor.
_CLAMP_ALONE_ELEMENTS = 16384


def _bound_like(bound: Tensor, tensor: Tensor) -> Tensor:
    """``bound`` in ``tensor``'s dtype and device, expanded to its shape (no copy of the expansion)."""
    return bound.to(dtype=tensor.dtype, device=tensor.device).expand_as(tensor)


def _group_signature(optimizer: torch.optim.Optimizer) -> tuple[tuple[int, int], ...]:
    return tuple((id(group["params"]), len(group["params"])) for group in optimizer.param_groups)


def _project_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Global post-step hook: project every parameter of *this* optimizer that carries a
    ``method="project"`` constraint, in place. Parameters of other optimizers are left alone."""
    plan = _PLANS.get(optimizer)
    if plan is None or not plan.current(optimizer):
        plan = _PLANS[optimizer] = _ProjectionPlan(optimizer)
    plan.run()


_PROJECT_HANDLER = dispatch.StepHandler(
    "project",
    order=30,
    concerns=lambda optimizer: holds_any(optimizer, plain_tensor_ids(_PROJECTING, "project")),
    post=_project_after_step,
)


def check_limit(value: float | None, name: str, owner: str) -> float | None:
    """``None`` or a positive finite number (as ``float``)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SpecError(f"{owner}: {name} must be a positive finite number or None; got {value!r}.")
    return float(value)
