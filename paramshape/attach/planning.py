"""Planning a constraint: everything :func:`paramshape.constrain` checks and computes for one tensor
before it changes anything (so a failed call leaves the module exactly as it was)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor, nn

from paramshape.errors import (
    ConstraintConflictError,
    InfeasibleValueError,
    ManifoldUnavailableError,
    ProjectionUnavailableError,
    SpecError,
    TiedTensorError,
    TransformError,
    UnsupportedTensorError,
)
from paramshape.errors.report import format_scalar, format_shape, tensor_label
from paramshape.lookup.modules import (
    AliasIndex,
    TensorRef,
    is_parametrized,
    locate,
    memory_span,
    parametrization_chain,
    parametrizations_of,
    paramshape_transform,
    spans_overlap,
    type_name,
)
from paramshape.lookup.patterns import is_running_statistic
from paramshape.spec.resolve import Spec, resolve
from paramshape.strategies.methods import ConstraintMethod
from paramshape.strategies.state import module_states
from paramshape.transforms.base import Transform

__all__ = [
    "Plan",
    "check_distinct",
    "check_method",
    "check_output",
    "check_stored_values",
    "optional_setting",
    "plan",
]

_METHODS: tuple[str, ...] = get_args(ConstraintMethod)
# BatchNorm updates these in place on the value it reads; a constrained tensor is recomputed on
# every read, so the updates would vanish.
_KEEP_HINT = (
    "Pass init='project' to move them inside the set, init='raw' to treat the current values as "
    "unconstrained ones, or init='sample' to draw new values."
)


@dataclass
class Plan:
    """Everything one tensor's constraint needs, computed and checked before anything changes."""

    ref: TensorRef
    transform: Transform
    method: str
    weight: float | None
    target: Tensor
    raw: Tensor | None
    moved: str | None
    #: ``constrain(..., fold=True)``: reads served from a value cached per change of the stored tensor.
    fold: bool = False
    #: The stored (unconstrained) tensor the dry run computed for ``target``, kept for small tensors
    #: so that registering does not compute it again; ``None``: computed when registering.
    stored: Tensor | None = None
    #: Set when applied: the stored tensor is alone on its storage, so it gets new data by ``set_``
    #: and the rollback keeps the old storage instead of a copy (attach.rollback.replace_data).
    swap: bool = False


def check_method(method: str, weight: float | None) -> float | None:
    """Validate ``method`` and ``weight``; return the weight to store (1.0 by default for penalties)."""
    if method not in _METHODS:
        raise SpecError(f"method must be one of {list(_METHODS)}; got {method!r}.")
    if weight is None:
        return 1.0 if method in ("penalty", "lagrangian") else None
    if method not in ("penalty", "lagrangian"):
        raise SpecError(f"weight= applies to method='penalty' and 'lagrangian' only; got method={method!r}.")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise SpecError(f"weight must be a finite number >= 0; got {weight!r}.")
    if method == "lagrangian" and weight == 0:
        raise SpecError("weight (rho) of method='lagrangian' must be > 0; got 0.")
    return float(weight)


def plan(
    root: nn.Module,
    dotted: str,
    spec: Spec,
    init: str,
    method: str,
    weight: float | None,
    aliases: AliasIndex | None = None,
    checked: tuple[TensorRef, Tensor, Tensor] | None = None,
) -> Plan:
    """What constraining ``root.dotted`` will do, checked without changing anything. ``aliases``: the
    index of ``root``'s tensors, built once when many tensors of one tree are planned together.
    ``checked``: ``(ref, tensor, stored)`` when :mod:`paramshape.attach.batched` has already located
    ``dotted``, admitted its value with ``init="keep"`` and computed its stored tensor (neither the
    lookup nor the dry run is repeated)."""
    ref = locate(root, dotted) if checked is None else checked[0]
    # Before the value is read: reading a tensor with a foreign parametrization runs it (and
    # spectral_norm's power iteration would advance), which a refused call must not do.
    _check_foreign(ref, root)
    if method == "reparam":
        _check_parametrizations_free(ref, root)
    transform = copy.deepcopy(resolve(spec))
    # A transform that only makes sense on outputs (Simplex(log=True)) says why, before any check.
    output_only = optional_setting(transform, "output_only")
    if isinstance(output_only, str):
        raise SpecError(f"'{ref.path}' of {type_name(root)}: {output_only}")
    with torch.no_grad():
        # No copy: the plan only reads the values (the rollback keeps its own backup), and a copy
        # of a large tensor is one more tensor at the peak of constrain.
        current = getattr(ref.owner, ref.name).detach()
    _check_tensor(ref, current, root, method, aliases, transform)
    if not _already_on(transform, current):  # .to() re-runs the bounds' checks even when a no-op
        # A complex tensor moves the transform to its real precision: Module.to(complex) warns, and
        # a set of complex tensors keeps its complex buffers complex (Transform._apply).
        dtype = current.dtype.to_real() if current.is_complex() else current.dtype
        transform = transform.to(device=current.device, dtype=dtype)
    transform._bind(f"'{ref.path}' of {type_name(root)}", current)
    transform.__dict__["_init_policy"] = init  # how reset_parameters() and apply() re-initialise it
    transform.check_shape(current.shape)
    if current.device.type == "meta":
        # A model built on the meta device has no values to check or choose yet: they come after
        # to_empty(), from an init function or a checkpoint, and are checked then.
        return Plan(ref, transform, method, weight, current, None, None)
    if method == "reparam":
        if checked is not None and checked[1] is ref.storage() and init == "keep":
            return Plan(ref, transform, method, weight, current, None, None, stored=checked[2])
        target, raw, moved = _initial_value(transform, current, init, exact=False)
        stored = _dry_run(transform, target if raw is None else raw, current, raw is not None)
        return Plan(ref, transform, method, weight, target, raw, moved, stored=stored)
    if method == "riemannian":
        _check_manifold(transform)
        if current.is_complex():  # the Riemannian steps' inner products are written for reals
            raise ManifoldUnavailableError(
                f"{transform._target}: method='riemannian' is not available for complex tensors yet; "
                "use method='reparam' or method='project'."
            )
    exact = _projection_works(transform, current, required=method in ("project", "lagrangian"))
    # Riemannian steps start strictly inside (a singular covariance has no affine-invariant metric).
    exact = exact and method != "riemannian"
    target, _, moved = _initial_value(transform, current, init, exact=exact)
    check_output(transform, "value", target, current.shape, current.dtype)
    if method == "riemannian":
        _check_riemannian_start(transform, target)
    return Plan(ref, transform, method, weight, target, None, moved)


def optional_setting(transform: Transform, name: str) -> object:
    """``getattr(transform, name, None)`` for a setting only some transforms define (a property of
    their class, or a plain attribute): without the AttributeError that ``Module.__getattr__`` builds
    and raises for every other transform, once per tensor constrained."""
    if hasattr(type(transform), name) or name in transform.__dict__:
        return getattr(transform, name, None)
    return None


def check_learnable(transform: nn.Module, method: str, fold: bool, label: str) -> None:
    """Raise :class:`SpecError` when a transform with learnable settings (trainable parameters, such
    as ``Box(..., learnable=True)``) meets a method that would never give them a gradient: they are
    trained through the map, so only ``method="reparam"`` with ``fold=False`` carries it."""
    if not (transform._parameters or transform._modules) or not any(True for _ in transform.parameters()):
        return  # the first test: no walk of parameters() for a transform without any (nearly all)
    if method != "reparam":
        raise SpecError(
            f"{label}: {transform!r} has learnable bounds, which are trained through the map of "
            f"method='reparam'; method={method!r} keeps the tensor a plain parameter and would never "
            "give them a gradient. Use method='reparam', or fixed bounds (learnable=False)."
        )
    if fold:
        raise SpecError(
            f"{label}: {transform!r} has learnable bounds; fold=True passes gradients to the stored "
            "tensor only, never to the bounds. Leave fold=False for it."
        )


def check_dense_gradients(planned: Plan, root: nn.Module) -> None:
    """Raise :class:`UnsupportedTensorError` for a tensor reparametrised the default way whose module
    makes sparse gradients (``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``): the
    gradient reaches the stored tensor through the map's backward, and torch's backward of nearly
    every map's operations has no sparse kernel, so the first ``backward()`` would fail inside
    torch. ``fold=True`` (elementwise sets) passes a sparse gradient on as one, and
    ``method="project"`` leaves the tensor a plain one."""
    owner = planned.ref.owner
    if planned.method != "reparam" or planned.fold:
        return
    if not (isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) and owner.sparse):
        return
    label = tensor_label(f"'{planned.ref.path}' of {type_name(root)}", planned.target)
    raise UnsupportedTensorError(
        f"{label}: {type(owner).__name__}(sparse=True) makes sparse gradients, which cannot flow "
        f"back through the map of {planned.transform!r} (torch's backward of its operations is "
        "dense only). Use fold=True (elementwise sets: the gradient stays sparse, for "
        "torch.optim.SparseAdam), method='project' (the tensor stays plain, projected after each "
        "step), or sparse=False."
    )


def check_distinct(plans: list[Plan], aliases: AliasIndex | None = None) -> None:
    """Refuse two names for one tensor in one call: the same tensor under two paths (a reused
    submodule), or tied tensors (one Parameter, or overlapping memory) named twice, which would
    get two conflicting constraints.

    Indexed by slot, object and storage pointer, so only tensors of one storage are compared
    pairwise (comparing every pair of 1,000 tensors took seconds). ``aliases``: the call's index,
    which knows each tensor's memory span already."""
    slots: dict[tuple[int, str], int] = {}
    objects: dict[int, int] = {}
    by_pointer: dict[int, list[tuple[int, tuple[int, int, int]]]] = {}
    for index, plan in enumerate(plans):
        storage = plan.ref.storage()
        slot = (id(plan.ref.owner), plan.ref.name)
        span = memory_span(storage) if aliases is None else aliases.span(storage)
        clashes = [found for found in (slots.get(slot), objects.get(id(storage))) if found is not None]
        if span is not None:
            clashes += [other for other, seen in by_pointer.get(span[0], ()) if spans_overlap(span, seen)]
        if clashes:
            earlier = plans[min(clashes)]
            raise SpecError(
                f"'{earlier.ref.path}' and '{plan.ref.path}' name the same tensor (or tied tensors "
                "sharing memory); constrain it once, under one name."
            )
        slots[slot] = index
        objects[id(storage)] = index
        if span is not None:
            by_pointer.setdefault(span[0], []).append((index, span))


# ------------------------------------------------------------------------------------ checks
def _already_on(transform: Transform, like: Tensor) -> bool:
    """Whether every floating tensor of ``transform`` already has ``like``'s dtype and device."""
    # A transform without submodules (nearly all) holds its tensors in its own two tables: read
    # them there instead of through parameters()/buffers()' generators, once per tensor constrained.
    if transform._modules:
        tensors: Iterable[Tensor | None] = itertools.chain(transform.parameters(), transform.buffers())
    else:
        tensors = itertools.chain(transform._parameters.values(), transform._buffers.values())
    return all(
        t.dtype == like.dtype and t.device == like.device
        for t in tensors
        if t is not None and (t.is_floating_point() or t.is_complex())
    )


def _check_tensor(
    ref: TensorRef,
    current: Tensor,
    root: nn.Module,
    method: str = "reparam",
    aliases: AliasIndex | None = None,
    transform: Transform | None = None,
) -> None:
    if transform is not None:
        # Real sets refuse complex tensors (and complex-only sets real ones), naming both.
        transform.check_dtype(current.dtype, f"'{ref.path}' of {type_name(root)}")
    elif not current.is_floating_point():
        raise UnsupportedTensorError(
            f"'{ref.path}' of {type_name(root)} has dtype {current.dtype}; only real floating "
            "point tensors can be constrained."
        )
    if ref.storage().is_inference():
        dtype = str(current.dtype).removeprefix("torch.")
        raise UnsupportedTensorError(
            f"'{ref.path}' of {type_name(root)} (shape {tuple(current.shape)}, {dtype}) is an inference "
            "tensor (made under torch.inference_mode()), which nothing can write into or track outside "
            "it. Build the module outside inference mode, or replace the tensor by a normal copy first: "
            f"module.{ref.name} = nn.Parameter(module.{ref.name}.clone())."
        )
    if method != "reparam":
        _check_plain_target(ref, root, method)
        return
    if is_running_statistic(ref.owner, ref.name):
        raise ConstraintConflictError(
            f"'{ref.path}' of {type_name(root)}: {type_name(ref.owner)} updates '{ref.name}' in place "
            "during training, and a constrained tensor is recomputed on every read, so the updates "
            "would be lost without a word. Constrain the layer's 'weight' or 'bias' instead."
        )
    tied = (aliases or AliasIndex(root)).aliases(ref)
    if tied:
        raise TiedTensorError(
            f"'{ref.path}' of {type_name(root)} is shared with {', '.join(repr(t) for t in tied)}. "
            "Constraining it would leave the other module reading the raw, unconstrained values. "
            "Untie the weights, or constrain the tensor in one module and read it from there "
            "(for example in a forward that uses the constrained module's attribute); "
            "method='project' and method='penalty' accept tied weights."
        )


def _check_foreign(ref: TensorRef, root: nn.Module) -> None:
    existing = is_parametrized(ref.owner, ref.name)
    if existing and paramshape_transform(ref.owner, ref.name) is None:
        chain = ", ".join(type(p).__name__ for p in parametrization_chain(ref.owner, ref.name))
        raise ConstraintConflictError(
            f"'{ref.path}' of {type_name(root)} already carries parametrizations paramshape did "
            f"not attach ({chain}). Remove them with torch.nn.utils.parametrize."
            "remove_parametrizations first, or constrain another tensor."
        )


def _check_parametrizations_free(ref: TensorRef, root: nn.Module) -> None:
    """Refuse a module that holds something of its own under the name ``parametrizations`` (an
    attribute, a class attribute, a tensor, a submodule other than parametrize's dictionary):
    torch's parametrize keeps the parametrizations there, so registering would fail inside torch
    (a class attribute) or silently replace the module's own value."""
    owner = ref.owner
    own: object
    # Membership tests first (no calls): nearly every module holds nothing of that name.
    if "parametrizations" in owner._modules:
        if parametrizations_of(owner) is not None:
            return  # parametrize's dictionary, from an earlier registration
        own = owner._modules["parametrizations"]
    elif "parametrizations" in owner.__dict__:
        own = owner.__dict__["parametrizations"]
    elif "parametrizations" in owner._parameters:
        own = owner._parameters["parametrizations"]
    elif "parametrizations" in owner._buffers:
        own = owner._buffers["parametrizations"]
    else:
        own = getattr(type(owner), "parametrizations", _MISSING)
    if own is _MISSING:
        return
    raise ConstraintConflictError(
        f"'{ref.path}' of {type_name(root)}: {type(owner).__name__} has an attribute 'parametrizations' "
        f"of its own (a {type(own).__name__}), the name under which torch's parametrize, used by "
        "method='reparam', keeps a module's parametrizations. Rename that attribute, or use "
        "method='project' (the tensor stays a plain Parameter)."
    )


_MISSING = object()


def _check_plain_target(ref: TensorRef, root: nn.Module, method: str) -> None:
    storage = ref.storage()
    if not isinstance(storage, nn.Parameter):
        # Suggest reparam only where it works: a norm layer's running statistics take no constraint.
        fix = (
            f"{type_name(ref.owner)} updates it in place, so no method can constrain it; constrain the "
            "layer's 'weight' or 'bias', or use a pattern ('*'), which skips buffers under this method."
            if is_running_statistic(ref.owner, ref.name)
            else "Use method='reparam' to constrain a buffer."
        )
        raise UnsupportedTensorError(
            f"'{ref.path}' of {type_name(root)} is a buffer; method={method!r} acts on parameters "
            f"that an optimizer updates. {fix}"
        )
    for prefix, owner, state in module_states(root):
        for other_name, entry in state.plain.items():
            other = _join(prefix, other_name)
            if entry.tensor is storage and (owner is not ref.owner or other_name != ref.name):
                raise ConstraintConflictError(
                    f"'{ref.path}' of {type_name(root)} is the same Parameter as '{other}', which is "
                    f"already constrained ({entry.method}); constrain it under one name only."
                )


def _check_manifold(transform: Transform) -> None:
    if not transform.manifold:
        raise ManifoldUnavailableError(f"{transform._target}: {transform._no_manifold()}")


def _check_riemannian_start(transform: Transform, value: Tensor) -> None:
    """Take one small Riemannian step from ``value`` outside the module: a point of the closed set
    where the geometry breaks down (a singular covariance) is refused here, not after a NaN step."""
    try:
        with torch.no_grad():
            tangent = transform.riemannian_grad(value, torch.ones_like(value))
            moved = transform.retract(value, tangent * 1e-3)
        works = bool(torch.isfinite(moved).all()) and bool(transform.contains(moved).all())
    except RuntimeError:  # torch.linalg errors on a singular matrix
        works = False
    if not works:
        label = tensor_label(transform._target or "value", value)
        raise InfeasibleValueError(
            f"{label}: method='riemannian' cannot step from this value of {transform!r}: it lies on "
            "the boundary of the manifold (a singular matrix has no affine-invariant metric). Assign "
            "an interior value first, or use init='sample'."
        )


def _projection_works(transform: Transform, current: Tensor, *, required: bool) -> bool:
    """Whether the transform projects (checked on the current value); raise if ``required`` and not."""
    try:
        with torch.no_grad():
            projected = transform.project(current)
    except ProjectionUnavailableError as error:
        if required:
            raise ProjectionUnavailableError(f"{transform._target}: {error}") from None
        return False
    except AttributeError as error:
        raise TransformError(f"{transform!r} failed while computing: {error}") from error
    check_output(transform, "project", projected, current.shape, current.dtype)
    return True


def check_output(
    transform: Transform, label: str, tensor: object, shape: torch.Size, dtype: torch.dtype
) -> None:
    if not isinstance(tensor, Tensor) or tensor.shape != shape or tensor.dtype != dtype:
        got = (
            f"{format_shape(tensor.shape)}, {tensor.dtype}"
            if isinstance(tensor, Tensor)
            else type(tensor).__name__
        )
        raise TransformError(
            f"{transform!r}.{label} must return shape {format_shape(shape)} and dtype {dtype}; got {got}."
        )


def _initial_value(
    transform: Transform, current: Tensor, init: str, *, exact: bool = False
) -> tuple[Tensor, Tensor | None, str | None]:
    """The constrained value to store, the raw unconstrained one when ``init="raw"``, and the warning
    to give when ``init="project"`` moved values. ``exact``: project onto the closed set instead of
    moving values into the interior."""
    with torch.no_grad():
        if init == "keep":
            transform.validate(current, hint=_KEEP_HINT)
            return current, None, None
        if init == "project":
            inside = transform.contains(current)
            moved = int((~inside).sum())
            if exact:
                # As to_interior does, non-finite values are read as 0 first.
                replacement = transform.project(torch.nan_to_num(current, nan=0.0, posinf=0.0, neginf=0.0))
            else:
                replacement = transform.to_interior(current)
            message = None
            if moved:
                where = "onto" if exact else "inside"
                message = (
                    f"{transform._target}: init='project' moved {moved} of {inside.numel()} "
                    f"{transform.element_noun} {where} {transform!r}."
                )
            return torch.where(inside, current, replacement), None, message
        if init == "raw":
            if not transform.supports_raw_init:
                raise SpecError(
                    f"{transform._target}: init='raw' is not available for {type(transform).__name__}, "
                    "whose value depends on state set by its inverse. Use init='project' or 'sample'."
                )
            if transform.inverse_shape(current.shape) != current.shape:
                raise SpecError(
                    f"{transform._target}: init='raw' needs a transform that stores a tensor of the "
                    f"value's shape; {transform!r} stores shape "
                    f"{format_shape(transform.inverse_shape(current.shape))}. Use init='keep' or 'sample'."
                )
            if not bool(torch.isfinite(current).all()):
                bad = int((~torch.isfinite(current)).sum())
                raise InfeasibleValueError(
                    f"{transform._target}: init='raw' needs finite values, but {bad} of "
                    f"{current.numel()} are NaN or infinite."
                )
            # A copy: ``current`` is the tensor's own storage, which the value overwrites first.
            return transform(current), current.clone(), None
        return transform.sample(current.shape, dtype=current.dtype, device=current.device), None, None


#: A dry run's stored tensor is kept for registering up to this many values (a plan of many small
#: tensors holds them all until they are registered; a large one is computed again, in blocks).
KEEP_STORED_ELEMENTS = 65536


def _dry_run(transform: Transform, value: Tensor, current: Tensor, value_is_raw: bool) -> Tensor | None:
    """Run the inverse and forward once, outside the module, so a broken transform fails here
    (with a clear message) instead of half-way through the registration. Returns the stored tensor
    it computed when the value is one block of at most :data:`KEEP_STORED_ELEMENTS` values."""
    kept = None
    scale = _stored_scale(transform, value)
    # An elementwise transform runs a block of rows at a time (Transform._row_blocks), so the check
    # costs a few MB beyond the tensor instead of several copies of it; others run on the whole.
    for start, part, block in transform._row_blocks(value):
        shape = current.shape if start is None else part.shape
        try:
            with torch.no_grad():
                raw = part if value_is_raw else block.inverse(part)
                constrained = block(raw)
        except AttributeError as error:
            raise TransformError(f"{transform!r} failed while computing: {error}") from error
        check_output(transform, "inverse", raw, transform.inverse_shape(shape), current.dtype)
        check_output(transform, "forward", constrained, shape, current.dtype)
        if not bool(torch.isfinite(raw).all()):
            raise TransformError(f"{transform!r}.inverse returned non-finite values for a value in its set.")
        check_stored_values(transform, constrained, None if value_is_raw else part, scale)
        if start is None and raw.numel() <= KEEP_STORED_ELEMENTS:
            # A copy when it is the value itself (init="raw"): registering swaps it in as storage.
            kept = raw.clone() if value_is_raw else raw
        del raw, constrained
    return kept


def _stored_scale(transform: Transform, value: Tensor) -> float:
    """The scale of the round-trip tolerance: the largest finite magnitude among the transform's
    floating settings and the value's entries. Vector and matrix sets move a value relative to its
    slice (ties of Ordered are pulled apart), so the tensor's own largest magnitude is part of it;
    taken over the whole tensor once, so a blockwise check has the same tolerance."""
    bound = max(
        (
            float(b.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max())
            for b in transform.buffers()
            if b.is_floating_point() and b.numel()
        ),
        default=0.0,
    )
    own = 0.0
    if value.is_complex():  # no order: the largest modulus (complex tensors are matrices, not huge)
        value = value.detach().abs()
    if value.numel():
        # aminmax reads the tensor without the two full-size temporaries of abs().nan_to_num(),
        # which would sit at constrain's memory peak; non-finite entries take the careful path.
        low, high = torch.aminmax(value.detach())
        own = max(-float(low), float(high))
        if not math.isfinite(own):
            own = float(value.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max())
    return max(bound, own)


def check_stored_values(
    transform: Transform, constrained: Tensor, value: Tensor | None, scale: float | Tensor | None = None
) -> None:
    """What the module will read after registration, checked on the values actually stored (not only
    on the transform's registration probes): finite and, when a value was given, equal
    to it up to the round trip's rounding, ``sqrt(eps)`` of the value's and the bounds' scale
    (``scale``: that scale, or one per element, as :mod:`paramshape.attach.batched` gives it for
    many tensors joined flat)."""
    label = tensor_label(transform._target or "value", constrained)
    finite = torch.isfinite(constrained)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise TransformError(
            f"{label}: {transform!r} reads {bad} of {constrained.numel()} stored values back as NaN or "
            "infinite; its forward is not finite on its own inverse. Nothing was changed."
        )
    if value is None:
        return
    eps = torch.finfo(value.dtype).eps
    scale = _stored_scale(transform, value) if scale is None else scale
    difference = constrained - value
    # In place for real values; a complex difference's modulus is a new, real tensor.
    error = difference.abs() if difference.is_complex() else difference.abs_()
    # At least two smallest normals: a value on a boundary at zero is stored one step inside, and
    # Positive's floor is the smallest normal itself (plus the rounding of its map there).
    allowed = value.abs().add_(scale).mul_(math.sqrt(eps)).clamp_min_(2 * torch.finfo(value.dtype).tiny)
    excess = error.sub_(allowed)  # in place: the check costs two temporaries of the tensor's size
    if bool((excess > 0).any()):
        worst = int(torch.argmax(excess.reshape(-1)))
        raise TransformError(
            f"{label}: {transform!r} does not give the value back: forward(inverse(y)) is "
            f"{format_scalar(constrained.reshape(-1)[worst].item(), value.dtype)} for y = "
            f"{format_scalar(value.reshape(-1)[worst].item(), value.dtype)} (flat index {worst}), beyond the "
            f"round-trip tolerance {format_scalar(allowed.reshape(-1)[worst].item(), value.dtype)}. Its inverse "
            "is not the inverse of its forward; nothing was changed."
        )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
