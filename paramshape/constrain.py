"""Attach, list and remove constraints on the tensors of a module: :func:`constrain`,
:func:`constraints` and :func:`unconstrain`."""

from __future__ import annotations

import copy
import warnings
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._modules import (
    TensorRef,
    aliases_of,
    constrained_tensors,
    locate,
    paramshape_transform,
    refuse_inside_compile,
    unwrap,
)
from ._report import format_shape
from .errors import (
    ConstraintConflictError,
    InfeasibleValueError,
    ParamshapeWarning,
    SpecError,
    TiedTensorError,
    TransformError,
    UnsupportedTensorError,
)
from .registry import Spec, resolve
from .transform import Transform

__all__ = ["InitPolicy", "constrain", "constraints", "unconstrain"]

#: How :func:`constrain` chooses the tensor's initial constrained value.
InitPolicy = Literal["keep", "project", "raw", "sample"]
_POLICIES: tuple[str, ...] = get_args(InitPolicy)
_KEEP_HINT = (
    "Pass init='project' to move them inside the set, init='raw' to treat the current values as "
    "unconstrained ones, or init='sample' to draw new values."
)


def constrain(module: nn.Module, name: str, spec: Spec, *, init: InitPolicy = "keep") -> nn.Module:
    """Constrain the tensor ``name`` of ``module``: every read of it lies in the transform's set.

    The tensor is attached to the transform with
    :func:`torch.nn.utils.parametrize.register_parametrization`, so the constrained value is
    recomputed from a stored unconstrained tensor at every read, gradients flow to that tensor, and
    ``module.<name> = value`` stores ``value`` through the transform's inverse (raising
    :class:`~paramshape.InfeasibleValueError` for a value outside the set). The same ``Parameter``
    object keeps holding the (now unconstrained) data, so an optimizer built before this call keeps
    working.

    Args:
        module: any ``nn.Module``.
        name: a parameter or buffer of ``module``, or a dotted path to one in a submodule
            (``"encoder.0.weight"``).
        spec: a :class:`~paramshape.Transform`, a registered name, or a name with literal arguments
            (``"box(-1, 1)"``). The transform is copied, so one instance can serve many tensors, and
            cast to the tensor's dtype and device.
        init: how the initial constrained value is chosen.

            * ``"keep"`` (default): keep the current value, which must lie in the set (round trip
              within a few ulps); otherwise raise, naming how many values are outside and the worst.
            * ``"project"``: values outside the set are moved inside it, a thousandth of the set's
              scale (box width, or ``max(|bound|, 1)`` for one-sided sets) past the nearest bound,
              where the gradient is still alive; a :class:`~paramshape.ParamshapeWarning` counts them.
            * ``"raw"``: the current values become the *unconstrained* ones (natural for a freshly
              initialized layer: ``Positive`` of a default ``Linear`` weight gives ``softplus(w)``).
            * ``"sample"``: a fresh draw from the transform's :meth:`~paramshape.Transform.sample`.

    Returns:
        ``module``, for chaining.

    Calling ``constrain`` again on the same tensor replaces its paramshape transform (the current
    constrained value is the starting point) instead of stacking a second one. A tensor shared with
    another module reachable from ``module`` (tied weights) is refused, because the other module
    would keep reading the raw tensor. On any error the module is left exactly as it was.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``.
        SpecError: the spec or ``init`` is invalid.
        UnsupportedTensorError: the tensor is not real floating point.
        ShapeMismatchError: the transform's settings do not fit the tensor's shape.
        InfeasibleValueError: ``init="keep"`` and the value lies outside the set (or is not finite).
        TiedTensorError: the tensor is shared with another module.
        ConstraintConflictError: the tensor carries a parametrization paramshape did not attach.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> _ = ps.constrain(model, "0.weight", ps.Box(-1, 1))
        >>> _ = ps.constrain(model, "2.bias", "positive", init="project")  # doctest: +SKIP
        >>> ps.constraints(model)
        {'0.weight': Box(low=-1.0, high=1.0)}
    """
    refuse_inside_compile("constrain")
    module = unwrap(module)
    if init not in _POLICIES:
        raise SpecError(f"init must be one of {list(_POLICIES)}; got {init!r}.")
    ref = locate(module, name)
    transform = copy.deepcopy(resolve(spec))
    with torch.no_grad():
        current = getattr(ref.owner, ref.name).detach().clone()
    _check_tensor(ref, current, module)
    transform = transform.to(device=current.device, dtype=current.dtype)
    transform._target = f"'{ref.path}' of {_type_name(module)}"
    transform.check_shape(current.shape)
    target, raw = _initial_value(transform, current, init)
    _dry_run(transform, target if raw is None else raw, current, raw is not None)
    _attach(ref, transform, target, raw)
    return module


def constraints(module: nn.Module) -> dict[str, Transform]:
    """Map the qualified name of every constrained tensor under ``module`` to its transform.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = ps.constrain(model, "0.weight", "box(-1, 1)")
        >>> ps.constraints(model)
        {'0.weight': Box(low=-1.0, high=1.0)}
    """
    module = unwrap(module)
    return {path: transform for path, _, _, transform in constrained_tensors(module)}


def unconstrain(module: nn.Module, name: str | None = None) -> nn.Module:
    """Remove paramshape transforms, leaving plain tensors that hold the constrained values.

    With ``name``, only that tensor (a dotted path from ``module``); without, every constrained
    tensor under ``module``. The ``Parameter`` objects stay the same (an optimizer keeps working),
    the module gets its original class back, and ``torch.save(module)``, TorchScript and export work
    again; outputs are unchanged. Output bounds (:func:`bound_output`) are layers of the model and
    stay.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``.
        ConstraintConflictError: ``name`` carries no paramshape constraint.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)")
        >>> type(ps.unconstrain(layer)).__name__, ps.constraints(layer)
        ('Linear', {})
    """
    refuse_inside_compile("unconstrain")
    module = unwrap(module)
    if name is None:
        for _, owner, tensor_name, _ in list(constrained_tensors(module)):
            parametrize.remove_parametrizations(owner, tensor_name, leave_parametrized=True)
        return module
    ref = locate(module, name)
    if paramshape_transform(ref.owner, ref.name) is None:
        listing = ", ".join(constraints(module)) or "none"
        raise ConstraintConflictError(
            f"'{name}' of {_type_name(module)} carries no paramshape constraint. "
            f"Constrained tensors: {listing}."
        )
    parametrize.remove_parametrizations(ref.owner, ref.name, leave_parametrized=True)
    return module


# ------------------------------------------------------------------------------------ checks
def _check_tensor(ref: TensorRef, current: Tensor, root: nn.Module) -> None:
    if not current.is_floating_point():
        raise UnsupportedTensorError(
            f"'{ref.path}' of {_type_name(root)} has dtype {current.dtype}; only real floating "
            "point tensors can be constrained."
        )
    existing = parametrize.is_parametrized(ref.owner, ref.name)
    if existing and paramshape_transform(ref.owner, ref.name) is None:
        chain = ", ".join(type(p).__name__ for p in ref.owner.parametrizations[ref.name])
        raise ConstraintConflictError(
            f"'{ref.path}' of {_type_name(root)} already carries parametrizations paramshape did "
            f"not attach ({chain}). Remove them with torch.nn.utils.parametrize."
            "remove_parametrizations first, or constrain another tensor."
        )
    tied = aliases_of(root, ref)
    if tied:
        raise TiedTensorError(
            f"'{ref.path}' of {_type_name(root)} is shared with {', '.join(repr(t) for t in tied)}. "
            "Constraining it would leave the other module reading the raw, unconstrained values. "
            "Untie the weights, or constrain the tensor in one module and read it from there "
            "(for example in a forward that uses the constrained module's attribute)."
        )


def _initial_value(transform: Transform, current: Tensor, init: str) -> tuple[Tensor, Tensor | None]:
    """The constrained value to store, and the raw unconstrained one when ``init="raw"``."""
    with torch.no_grad():
        if init == "keep":
            transform.validate(current, hint=_KEEP_HINT)
            return current, None
        if init == "project":
            inside = transform.contains(current)
            moved = int((~inside).sum())
            if moved:
                warnings.warn(
                    f"{transform._target}: init='project' moved {moved} of {inside.numel()} "
                    f"{transform.element_noun} inside {transform!r}.",
                    ParamshapeWarning,
                    stacklevel=4,
                )
            return torch.where(inside, current, transform.to_interior(current)), None
        if init == "raw":
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
            return transform(current), current
        return transform.sample(current.shape, dtype=current.dtype, device=current.device), None


def _dry_run(transform: Transform, value: Tensor, current: Tensor, value_is_raw: bool) -> None:
    """Run the inverse and forward once, outside the module, so a broken transform fails here
    (with a clear message) instead of half-way through the registration."""
    try:
        with torch.no_grad():
            raw = value if value_is_raw else transform.inverse(value)
            constrained = transform(raw)
    except AttributeError as error:
        raise TransformError(f"{transform!r} failed while computing: {error}") from error
    stored_shape = transform.inverse_shape(current.shape)
    for label, tensor, shape in (("inverse", raw, stored_shape), ("forward", constrained, current.shape)):
        if not isinstance(tensor, Tensor) or tensor.shape != shape or tensor.dtype != current.dtype:
            got = (
                f"{format_shape(tensor.shape)}, {tensor.dtype}"
                if isinstance(tensor, Tensor)
                else type(tensor).__name__
            )
            raise TransformError(
                f"{transform!r}.{label} must return shape {format_shape(shape)} and dtype "
                f"{current.dtype}; got {got}."
            )
    if not bool(torch.isfinite(raw).all()):
        raise TransformError(f"{transform!r}.inverse returned non-finite values for a value in its set.")


# --------------------------------------------------------------------------------- mutation
def _attach(ref: TensorRef, transform: Transform, target: Tensor, raw: Tensor | None) -> None:
    """Register ``transform`` on ``ref`` holding ``target`` (or exactly ``raw``); all or nothing."""
    # parametrize refuses a stored tensor of another shape unless told it is intended; _dry_run has
    # already checked both shapes.
    reshapes = transform.inverse_shape(target.shape) != target.shape
    previous = paramshape_transform(ref.owner, ref.name)
    if previous is not None:
        _swap(ref, previous, transform, target, raw, reshapes)
        return
    storage = ref.storage()
    backup = storage.detach().clone()
    try:
        with torch.no_grad():
            storage.copy_(target)
            parametrize.register_parametrization(ref.owner, ref.name, transform, unsafe=reshapes)
            if raw is not None:
                storage.copy_(raw)
    except BaseException:
        with torch.no_grad():
            if parametrize.is_parametrized(ref.owner, ref.name):
                parametrize.remove_parametrizations(ref.owner, ref.name, leave_parametrized=False)
            storage.set_(backup)
        raise


def _swap(
    ref: TensorRef,
    previous: Transform,
    transform: Transform,
    target: Tensor,
    raw: Tensor | None,
    reshapes: bool,
) -> None:
    """Replace the paramshape transform in place: the module keeps its parametrized class, and on
    failure the previous transform and stored tensor are put back as they were."""
    chain = ref.owner.parametrizations[ref.name]
    original = chain.original
    backup, was_unsafe = original.detach().clone(), chain.unsafe
    transform.train(ref.owner.training)
    try:
        with torch.no_grad():
            chain[0] = transform
            chain.unsafe = reshapes
            chain.right_inverse(target)  # set_ into the same Parameter object, shape may change
            if raw is not None:
                original.copy_(raw)
    except BaseException:
        with torch.no_grad():
            chain[0] = previous
            chain.unsafe = was_unsafe
            original.set_(backup)
        raise


def _type_name(module: nn.Module) -> str:
    """The module's class name as the user wrote it (not parametrize's ``Parametrized...`` subclass)."""
    return parametrize.type_before_parametrizations(module).__name__
