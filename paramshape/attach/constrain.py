"""Attach, list and remove constraints on the tensors of a module: :func:`constrain`,
:func:`constraints`, :func:`constraint_info` and :func:`unconstrain`."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator, Mapping
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.attach.applying import apply_plans
from paramshape.attach.assign import sync_plain_assignment
from paramshape.attach.batched import Checked, check_values
from paramshape.attach.planning import (
    check_dense_gradients,
    check_distinct,
    check_learnable,
    check_method,
    plan,
)
from paramshape.attach.resume import record_learnable, record_names
from paramshape.attach.rollback import rollback_on_failure
from paramshape.errors import ConstraintConflictError, ParamshapeWarning, SpecError
from paramshape.lookup.modules import (
    AliasIndex,
    TensorRef,
    constrained_tensors,
    locate,
    parametrization_chain,
    parametrized_names,
    paramshape_transform,
    refuse_inside_compile,
    type_name,
    unwrap,
)
from paramshape.lookup.patterns import expand_targets, is_pattern, match_names
from paramshape.spec.resolve import Spec
from paramshape.strategies.folded import check_foldable
from paramshape.strategies.lagrangian import LagrangianConstraint
from paramshape.strategies.methods import ConstraintInfo, ConstraintMethod
from paramshape.strategies.state import discard_state_if_empty, module_states, state_of
from paramshape.transforms.base import Transform

__all__ = ["InitPolicy", "constrain", "constraint_info", "constraints", "unconstrain"]

#: How :func:`constrain` chooses the tensor's initial constrained value.
InitPolicy = Literal["keep", "project", "raw", "sample"]
_POLICIES: tuple[str, ...] = get_args(InitPolicy)


def constrain(
    module: nn.Module,
    name: str | Mapping[str, Spec],
    spec: Spec | None = None,
    *,
    init: InitPolicy = "keep",
    method: ConstraintMethod = "reparam",
    weight: float | None = None,
    fold: bool = False,
) -> nn.Module:
    r"""Constrain the tensor ``name`` of ``module`` to the transform's set, by one of three strategies.

    * ``method="reparam"`` (default): the tensor is attached to the transform with
      :func:`torch.nn.utils.parametrize.register_parametrization`, so the constrained value is
      recomputed from a stored unconstrained tensor :math:`u` at every read, :math:`\theta = f(u)`,
      gradients flow to :math:`u`, and ``module.<name> = value`` stores ``value`` through the
      transform's inverse (raising :class:`~paramshape.InfeasibleValueError` for a value outside the
      set). Every read lies in the set, whatever the optimizer does.
    * ``method="project"``: the tensor stays a plain ``Parameter``; after every ``step()`` of a
      ``torch.optim`` optimizer that holds it, it is replaced by its Euclidean projection onto the
      closed set, :math:`\theta \leftarrow P_C(\theta)` (:meth:`~paramshape.Transform.project`: a
      clamp for bounds, a sort-based projection for the simplex). Values can sit exactly on a bound.
      :func:`~paramshape.project_` does the same by hand. The transform must define a projection.
    * ``method="penalty"``: the tensor stays a plain ``Parameter`` and is not forced into the set;
      :func:`~paramshape.penalty` returns :math:`\sum w\,\lVert\theta - P_C(\theta)\rVert^2` to add
      to the loss, with this constraint's ``weight``.
    * ``method="riemannian"``: the tensor stays a plain ``Parameter`` on a manifold
      (``Transform.manifold``: ``UnitNorm``, ``Orthogonal``, ``Grassmannian``, ``PositiveDefinite``); each optimizer
      step follows the Riemannian gradient, is retracted onto the manifold and transports the
      optimizer's momentum (:meth:`~paramshape.Transform.riemannian_grad`,
      :meth:`~paramshape.Transform.retract`, :meth:`~paramshape.Transform.transport`).
    * ``method="lagrangian"``: the tensor stays a plain ``Parameter``; :func:`~paramshape.penalty`
      returns an augmented Lagrangian term (:math:`\rho` = ``weight``) whose multipliers take a
      dual ascent step after every optimizer step, until the tensor is in the set. The multipliers
      are in ``state_dict`` and :func:`constraint_info`. The transform must define a projection.

    The same ``Parameter`` object keeps holding the data under every strategy (the unconstrained
    data for ``"reparam"``), so an optimizer built before this call keeps working; with
    ``"reparam"`` the tensor moves after its siblings in ``parameters()``, so build an optimizer at
    the same point in every run that saves or loads its state (a mismatch raises at its first
    ``step()``; see the checkpoints page). The module's own ``reset_parameters()`` and
    ``module.apply(init_fn)`` re-initialise constrained tensors through the inverse. The plain
    strategies leave ``state_dict`` keys unchanged and accept tied weights (both modules read the same,
    projected tensor); they apply to parameters only, not buffers.

    ``name`` may also be an fnmatch-style pattern (``"*.weight"``), or a mapping of patterns to specs, applied to every matching
    parameter or buffer (qualified names as ``named_parameters()`` spells them; ``*`` matches dots
    too): ``constrain(model, {"encoder.*.weight": ps.Box(-1, 1), "*.bias": "positive"})``.
    A pattern skips the tensors ``method`` can never constrain: buffers under every method but
    ``"reparam"``, and the running statistics of norm layers (BatchNorm updates them in place)
    under every method; so ``constrain(model, "*", spec, method="project")`` takes every
    parameter of a model with BatchNorm. A tensor named without wildcards is never skipped, nor
    one matched by a pattern that matches nothing else: the call raises and says why.
    ``init``, ``method`` and ``weight`` apply to all of them. A pattern that matches nothing raises,
    listing the available names; a tensor matched by two patterns raises. All or nothing: if one
    tensor fails, no tensor changes.

    Args:
        module: any ``nn.Module``.
        name: a parameter or buffer of ``module``, or a dotted path to one in a submodule
            (``"encoder.0.weight"``); a pattern (``"encoder.*.weight"``), for every match; or a
            mapping ``{pattern: spec}``.
        spec: a :class:`~paramshape.Transform`, a registered name, or a name with literal arguments
            (``"box(-1, 1)"``). The transform is copied, so one instance can serve many tensors, and
            cast to the tensor's dtype and device. Omitted when ``name`` is a mapping.
        init: how the initial constrained value is chosen.

            * ``"keep"`` (default): keep the current value, which must lie in the set (round trip
              within a few ulps); otherwise raise, naming how many values are outside and the worst.
            * ``"project"``: values outside the set are moved into it, with a
              :class:`~paramshape.ParamshapeWarning` that counts them. With ``method="reparam"``
              they go a thousandth of the set's scale (box width, or ``max(|bound|, 1)`` for
              one-sided sets) past the nearest bound, where the gradient is still alive; with the
              plain strategies, to their exact projection (onto the boundary).
            * ``"raw"``: the current values become the *unconstrained* ones (natural for a freshly
              initialized layer: ``Positive`` of a default ``Linear`` weight gives ``softplus(w)``).
            * ``"sample"``: a fresh draw from the transform's :meth:`~paramshape.Transform.sample`.
        method: ``"reparam"``, ``"project"``, ``"penalty"``, ``"riemannian"`` or ``"lagrangian"``
            (above).
        weight: the weight of this constraint in :func:`~paramshape.penalty`, a finite number
            :math:`\ge 0`; only with ``method="penalty"`` (default 1) and ``method="lagrangian"``
            (:math:`\rho`, default 1, must be :math:`> 0`).
        fold: with ``method="reparam"``, compute each constrained value once per change of its
            stored tensor (in practice once per optimizer step) instead of at every read: a read
            returns a cached value, and each ``backward()`` turns the gradient reaching it into the
            stored tensor's, :math:`\nabla_u = \nabla_\theta \, f'(u)`, so ``u.grad``, gradient
            accumulation, ``zero_grad`` and clipping behave as by default (same values and gradients
            to a few ulps). It pays on small models, where the map's fixed cost per read dominates
            (docs/performance.md). Elementwise transforms only; under ``parametrize.cached()``,
            hooks, ``torch.compile``, ``torch.func`` and ``functional_call`` reads compute the map
            as by default. Refused: ``backward(create_graph=True)`` through a folded value
            (:class:`~paramshape.TransformError`) and a running ``torch.distributed`` process group
            (:class:`~paramshape.UnsupportedTensorError`). ``torch.autograd.grad`` with respect to the
            stored tensor does not see it; differentiate with respect to the value instead. A
            value read keeps what it held, as by default: the values are recomputed in place into
            two sets written in turn, and a set still in use when its turn comes (a value kept, a
            graph built before two optimizer steps) is left to its users for a new one, so every
            graph is differentiated with the slopes of its own values; memory: two values and two
            slopes per tensor. A sparse gradient (``nn.Embedding(sparse=True)``) reaches the stored
            tensor sparse, for ``torch.optim.SparseAdam``; the default mode refuses such a module
            (:class:`~paramshape.UnsupportedTensorError`: torch's backward of the maps is dense only).

    Returns:
        ``module``, for chaining.

    Calling ``constrain`` again on the same tensor replaces its constraint (the current constrained
    value is the starting point), whatever the old and new strategies, instead of stacking a second
    one. With ``method="reparam"``, a tensor shared with another module reachable from ``module``
    (tied weights) is refused, because the other module would keep reading the raw tensor. On any
    error (``KeyboardInterrupt`` included) the module is left exactly as it was: class, parameter
    identities and order, hooks, buffers, parametrizations. Every policy checks the values actually
    stored: they must read back finite and equal to the chosen value within ``sqrt(eps)`` of its scale
    (:class:`~paramshape.TransformError` otherwise). On a ``meta``-device model nothing is checked
    until values exist (after ``to_empty()``).

    Learnable bounds (``ps.Box(-1, 1, learnable=True)``, ``GreaterThan``/``LessThan(...,
    learnable=True)``) are parameters of the attached transform, created here: each constrained
    tensor gets its own copy, listed once in ``module.parameters()``, so an optimizer built *after*
    this call trains them (one built before does not see them). They need ``method="reparam"`` and
    ``fold=False`` (``SpecError`` otherwise): the other strategies never give them a gradient.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``, or a pattern matches nothing.
        SpecError: the spec, ``init``, ``method`` or ``weight`` is invalid, two patterns match
            the same tensor, or learnable bounds meet a ``method`` other than ``"reparam"`` or
            ``fold=True``.
        UnsupportedTensorError: the tensor is not real floating point, or is a buffer and ``method``
            is not ``"reparam"``, or ``fold=True`` and the transform is not elementwise.
        ShapeMismatchError: the transform's settings do not fit the tensor's shape.
        InfeasibleValueError: ``init="keep"`` and the value lies outside the set (or is not finite).
        ProjectionUnavailableError: ``method="project"`` or ``"lagrangian"`` and the transform
            defines no projection.
        ManifoldUnavailableError: ``method="riemannian"`` and the transform has no Riemannian
            structure.
        TiedTensorError: ``method="reparam"`` and the tensor is shared with another module.
        ConstraintConflictError: the tensor carries a parametrization paramshape did not attach.
        TransformError: the transform's code fails, changes the shape or dtype, or does not give
            the stored values back (non-finite, or a round trip beyond its rounding).

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> _ = ps.constrain(model, "0.weight", ps.Box(-1, 1))
        >>> _ = ps.constrain(model, "2.bias", "positive", init="project")  # doctest: +SKIP
        >>> ps.constraints(model)
        {'0.weight': Box(low=-1.0, high=1.0)}
        >>> _ = ps.constrain(model, {"*.bias": "box(-1, 1)"}, method="project")
        >>> ps.constraint_info(model)["2.bias"]
        ConstraintInfo(Box(low=-1.0, high=1.0), method='project')
    """
    refuse_inside_compile("constrain")
    module = unwrap(module)
    # Python's cyclic collector is paused for the call: registering allocates a dozen containers
    # per tensor, which triggers collections of every object in the process (torch holds hundreds
    # of thousands), 40% of the time of 1,000 tensors. What the call leaves is collected after it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        moved_values = _constrain(module, name, spec, init, method, weight, fold)
    finally:
        if collecting:
            gc.enable()
    for moved in moved_values:
        warnings.warn(moved, ParamshapeWarning, stacklevel=2)
    return module


# Dynamo never traces the work: reached from a compiled function without fullgraph, constrain runs
# eagerly at the graph break (refuse_inside_compile above is what fullgraph reports); traced, its
# deep copies and storage scans fail inside Dynamo instead.
@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch leaves it unannotated
def _constrain(
    module: nn.Module,
    name: str | Mapping[str, Spec],
    spec: Spec | None,
    init: InitPolicy,
    method: ConstraintMethod,
    weight: float | None,
    fold: bool,
) -> list[str]:
    """constrain's work after the compile check; returns the warnings to give the caller."""
    if init not in _POLICIES:
        raise SpecError(f"init must be one of {list(_POLICIES)}; got {init!r}.")
    weight = check_method(method, weight)
    if not isinstance(fold, bool):
        raise SpecError(f"fold must be True or False; got {fold!r}.")
    if fold and method != "reparam":
        raise SpecError(f"fold=True applies to method='reparam' only; got method={method!r}.")
    targets = expand_targets(module, name, spec, method)
    aliases = AliasIndex(module)  # one walk of the tree for all the tensors, not one per tensor
    # The values of many small tensors of one spec are checked in one flat pass; the plans then
    # skip those checks (a failing group is checked tensor by tensor, so errors keep their names).
    checked = check_values(module, targets, init, method)
    plans = [
        plan(module, dotted, target_spec, init, method, weight, aliases, _pair(checked.get(index)))
        for index, (dotted, target_spec) in enumerate(targets)
    ]
    check_distinct(plans, aliases)
    for planned in plans:
        check_learnable(planned.transform, method, fold, f"'{planned.ref.path}' of {type_name(module)}")
    for planned in plans if fold else ():
        label = f"'{planned.ref.path}' of {type_name(module)}"
        check_foldable(planned.transform, planned.ref.storage().shape, label)
        planned.fold = True
    for planned in plans:
        check_dense_gradients(planned, module)
    record_names(module)  # the names before this call, for the optimizer-resume check
    apply_plans(module, plans)
    record_learnable(module)  # an optimizer that misses learnable bounds warns at its first step
    return [planned.moved for planned in plans if planned.moved is not None]


def constraints(module: nn.Module) -> dict[str, Transform]:
    """Map the qualified name of every constrained tensor under ``module`` to its transform, whatever
    its strategy; :func:`constraint_info` also says the strategy.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = ps.constrain(model, "0.weight", "box(-1, 1)")
        >>> ps.constraints(model)
        {'0.weight': Box(low=-1.0, high=1.0)}
    """
    return {path: info.transform for path, info in _entries(unwrap(module))}


def constraint_info(module: nn.Module) -> dict[str, ConstraintInfo]:
    """Map the qualified name of every constrained tensor under ``module`` to a
    :class:`~paramshape.ConstraintInfo`: its transform, its strategy (``method``) and, for
    ``method="penalty"``, its weight. Same keys, in the same order, as :func:`constraints`.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = ps.constrain(model, "0.weight", "box(-1, 1)")
        >>> _ = ps.constrain(model, "0.bias", "box(-1, 1)", method="penalty", weight=10.0)
        >>> for name, info in ps.constraint_info(model).items():
        ...     print(name, info)
        0.weight ConstraintInfo(Box(low=-1.0, high=1.0), method='reparam')
        0.bias ConstraintInfo(Box(low=-1.0, high=1.0), method='penalty', weight=10.0)
    """
    return dict(_entries(unwrap(module)))


def unconstrain(module: nn.Module, name: str | None = None) -> nn.Module:
    """Remove paramshape constraints of any strategy, keeping the current values.

    With ``name=None``, every constraint under ``module`` is removed; otherwise only the one on
    ``name``. A ``"reparam"`` tensor becomes a plain tensor holding its constrained value again (the
    same ``Parameter`` object, so optimizers keep working, and the module gets its original class
    back); a ``"project"`` tensor stops being projected after optimizer steps; a ``"penalty"``
    tensor drops out of :func:`~paramshape.penalty`. Output bounds and gradient clipping
    (:func:`~paramshape.clip_grad`) are not constraints and stay.

    Args:
        module: any ``nn.Module``.
        name: a constrained tensor of ``module`` (dotted path), an fnmatch pattern over the
            constrained tensors' names (``"encoder.*"``), or ``None`` for all.

    Returns:
        ``module``.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``, or a pattern matches no
            constrained tensor.
        ConstraintConflictError: ``name`` carries no paramshape constraint.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)")
        >>> type(ps.unconstrain(layer)).__name__, ps.constraints(layer)
        ('Linear', {})
    """
    refuse_inside_compile("unconstrain")
    module = unwrap(module)
    targets = _unconstrain_targets(module, name)
    # All or nothing: a failure (a KeyboardInterrupt, a foreign parametrization that cannot read its
    # new stored value) puts back every tensor already given back.
    owners = [module, *(owner for owner, _, _ in targets)]
    stored = [parametrization_chain(owner, tensor).original for owner, tensor, reparam in targets if reparam]
    rollback = rollback_on_failure(owners, stored)
    try:
        for owner, tensor_name, reparam in targets:
            if reparam:
                _remove_transform(owner, tensor_name)
            else:
                state = state_of(owner)
                if state is not None:
                    state.pop_plain(tensor_name)
                discard_state_if_empty(owner)
        for owner, _, _ in targets:
            # The user's class back once no plain tensor is left (or the assignment method back on a
            # module whose parametrize class just went while plain tensors stay).
            sync_plain_assignment(owner)
    except BaseException:
        rollback.restore()
        raise
    return module


def _unconstrain_targets(module: nn.Module, name: str | None) -> list[tuple[nn.Module, str, bool]]:
    """``(owner, tensor name, whether reparametrised)`` for each constraint :func:`unconstrain`
    removes, found before anything changes; raises as :func:`unconstrain` documents."""
    if name is None:
        targets = [(owner, tensor, True) for _, owner, tensor, _ in constrained_tensors(module, stacked=True)]
        for _, owner, owned in module_states(module):
            targets.extend((owner, tensor, False) for tensor in owned.plain)
        return targets
    if is_pattern(name):
        found: list[tuple[nn.Module, str, bool]] = []
        for dotted in match_names(module, name, list(constraints(module))):
            for target in _unconstrain_targets(module, dotted):
                if not any(t[0] is target[0] and t[1] == target[1] for t in found):
                    found.append(target)
        return found
    ref = locate(module, name)
    if paramshape_transform(ref.owner, ref.name, stacked=True) is not None:
        return [(ref.owner, ref.name, True)]
    state = state_of(ref.owner)
    if state is not None and ref.name in state.plain:
        return [(ref.owner, ref.name, False)]
    listing = ", ".join(constraints(module)) or "none"
    raise ConstraintConflictError(
        f"'{name}' of {type_name(module)} carries no paramshape constraint. Constrained tensors: {listing}."
    )


def _entries(root: nn.Module) -> Iterator[tuple[str, ConstraintInfo]]:
    """Every constrained tensor under ``root``, module by module: parametrized ones, then plain ones."""
    for prefix, module in root.named_modules():
        if parametrize.is_parametrized(module):
            for name in parametrized_names(module):
                transform = paramshape_transform(module, name, stacked=True)
                if transform is not None:
                    yield _join(prefix, name), ConstraintInfo(transform)
        state = state_of(module)
        if state is None:
            continue
        state.sync(module)
        for name, entry in state.plain.items():
            transform = entry.transform_for(entry.tensor)
            multiplier = None
            if isinstance(entry, LagrangianConstraint):
                multiplier = entry.current_multiplier().detach().clone()
            yield _join(prefix, name), ConstraintInfo(transform, entry.method, entry.weight, multiplier)


def _remove_transform(owner: nn.Module, name: str) -> None:
    """Remove paramshape's transform from ``owner.name``, keeping the constrained value; foreign
    parametrizations stacked on top of it (``spectral_norm``, ``weight_norm``) stay, now reading the
    constrained value as their stored tensor."""
    chain = parametrization_chain(owner, name)
    if len(chain) == 1:
        parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
        return
    with torch.no_grad():
        value = chain[0](chain.original)
        chain.original.set_(value)
    del chain[0]


def _pair(checked: Checked | None) -> tuple[TensorRef, Tensor, Tensor] | None:
    return None if checked is None else (checked.ref, checked.tensor, checked.stored)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
