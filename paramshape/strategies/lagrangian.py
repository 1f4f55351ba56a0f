r"""``method="lagrangian"``: an augmented Lagrangian with a multiplier per entry, updated by dual ascent
after every optimizer step.

For the constraint :math:`\theta \in C` (a closed set with a Euclidean projection :math:`P`), with
multiplier :math:`\lambda` (of the tensor's shape) and penalty parameter :math:`\rho` (``weight=``),
the term added to the loss by :func:`~paramshape.penalty` is the augmented Lagrangian of a set
constraint (Rockafellar, 1974; the form ADMM uses):

.. math::

    \mathcal{L}_\rho(\theta, \lambda) = \frac{\rho}{2}\,
        \bigl\lVert z - P(z) \bigr\rVert_2^2 - \frac{\lVert \lambda \rVert_2^2}{2 \rho},
    \qquad z = \theta + \lambda / \rho

with gradient :math:`\rho\,(z - P(z))` (exact for convex sets, :math:`P` being detached), and after
each ``optimizer.step()`` the multiplier takes a damped dual ascent step, at the new :math:`\theta`:

.. math::

    \lambda \leftarrow \lambda + \eta\,\bigl(\rho\,(z - P(z)) - \lambda\bigr)
        = \lambda + \eta \rho\,\bigl(\theta - P(z)\bigr), \qquad \eta = 0.1

(:data:`DUAL_STEP`), which grows while :math:`\theta` stays outside and stops exactly when
:math:`\theta = P(z)`, i.e. :math:`\theta \in C`. :math:`\eta = 1` is the classical method of
multipliers, which assumes the primal problem solved between two dual steps; with one optimizer step
in between it oscillates, and diverges with SGD momentum 0.9 on :math:`(\theta - 3)^2` under
``Box(-1, 1)``. With :math:`\eta = 0.1`, SGD (with or without momentum) and Adam settle on the
boundary (measured in ``tests/test_lagrangian.py``). At :math:`\lambda = 0` the term is the penalty
:math:`\tfrac{\rho}{2} d(\theta, C)^2`; unlike a fixed-weight penalty, whose optimum stays outside
the set by :math:`\lVert\nabla f\rVert / \rho`, the multiplier absorbs the pull of the loss and the
distance goes to 0. The term is smooth across the boundary (the squared distance to a convex set is
continuously differentiable), so the iterates settle on the boundary instead of chattering across
it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from paramshape.errors import InfeasibleValueError, ShapeMismatchError
from paramshape.errors.report import format_shape
from paramshape.numerics.precision import compute_dtype
from paramshape.strategies import dispatch
from paramshape.strategies.state import (
    ModuleState,
    PlainConstraint,
    add_registry_listener,
    holds_any,
    plain_tensor_ids,
    state_of,
)

__all__ = ["DUAL_STEP", "MULTIPLIER_SUFFIX", "LagrangianConstraint"]

#: The damping :math:`\eta` of the dual ascent step (see the module docstring).
DUAL_STEP = 0.1
#: A multiplier is saved in ``state_dict`` as ``<prefix><name><MULTIPLIER_SUFFIX>``.
MULTIPLIER_SUFFIX = "_lagrange_multiplier"


@dataclass(eq=False)
class LagrangianConstraint(PlainConstraint):
    """A ``method="lagrangian"`` constraint: ``weight`` is :math:`\\rho`, ``multiplier`` is
    :math:`\\lambda`, zeros of the tensor's shape until the first step."""

    multiplier: Tensor | None = field(default=None, repr=False)

    def current_multiplier(self) -> Tensor:
        """The multiplier, in the tensor's shape, dtype (at least float32) and device."""
        tensor = self.tensor
        work = compute_dtype(tensor.dtype)
        multiplier = self.multiplier
        if multiplier is None or multiplier.shape != tensor.shape:
            multiplier = torch.zeros(tensor.shape, dtype=work, device=tensor.device)
        elif multiplier.dtype != work or multiplier.device != tensor.device:
            multiplier = multiplier.to(dtype=work, device=tensor.device)
        self.multiplier = multiplier
        return multiplier

    def _shifted(self) -> tuple[Tensor, Tensor, float]:
        rho = float(self.weight or 1.0)
        multiplier = self.current_multiplier()
        shifted = self.tensor.to(multiplier.dtype) + multiplier / rho
        with torch.no_grad():
            target = self.transform_for(self.tensor).project(shifted.detach().to(self.tensor.dtype))
        return shifted, target.to(multiplier.dtype), rho

    def term(self) -> Tensor:
        """The augmented Lagrangian term, differentiable in the tensor (see the module docstring)."""
        shifted, target, rho = self._shifted()
        multiplier = self.multiplier
        assert multiplier is not None
        return 0.5 * rho * (shifted - target).square().sum() - multiplier.square().sum() / (2 * rho)

    def dual_step_(self) -> None:
        """One damped dual ascent step:
        :math:`\\lambda \\leftarrow \\lambda + \\eta (\\rho (z - P(z)) - \\lambda)`."""
        with torch.no_grad():
            shifted, target, rho = self._shifted()
            multiplier = self.current_multiplier()
            self.multiplier = multiplier + DUAL_STEP * (rho * (shifted - target) - multiplier)


# ----------------------------------------------------------------------------- the step hook
_STATES: weakref.WeakSet[ModuleState] = weakref.WeakSet()


def _listen(state: ModuleState) -> None:
    lagrangian = any(entry.method == "lagrangian" for entry in state.plain.values())
    if lagrangian:
        _STATES.add(state)
    else:
        _STATES.discard(state)
    owner = state._owner() if state._owner is not None else None
    if owner is not None:
        _install_state_dict_hooks(owner, lagrangian)
    if _STATES:
        dispatch.enable(_HANDLER)
    else:
        dispatch.disable(_HANDLER.name)


add_registry_listener(_listen)


def _after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Dual ascent for every ``method="lagrangian"`` parameter of the optimizer just stepped."""
    targets: dict[int, LagrangianConstraint] = {}
    for state in list(_STATES):
        state.sync()
        for entry in state.plain.values():
            if isinstance(entry, LagrangianConstraint):
                targets[id(entry.tensor)] = entry
    for group in optimizer.param_groups:
        for param in group["params"]:
            target = targets.pop(id(param), None)
            if target is not None:
                target.dual_step_()


_HANDLER = dispatch.StepHandler(
    "lagrangian",
    order=40,
    concerns=lambda optimizer: holds_any(optimizer, plain_tensor_ids(_STATES, "lagrangian")),
    post=_after_step,
)


# ------------------------------------------------------------------------- state_dict support
def _install_state_dict_hooks(owner: nn.Module, wanted: bool) -> None:
    """Add (or remove, when the module has no multiplier left) the hooks that save the multipliers
    in ``state_dict`` and load them back."""
    saving = [key for key, hook in owner._state_dict_hooks.items() if hook is _save_multipliers]
    loading = [
        key
        for key, hook in owner._load_state_dict_pre_hooks.items()
        if getattr(hook, "hook", hook) is _load_multipliers
    ]
    if wanted and not saving:
        owner._register_state_dict_hook(_save_multipliers)  # type: ignore[no-untyped-call]  # unannotated in torch
    if wanted and not loading:
        owner._register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]  # unannotated in torch
            _load_multipliers, with_module=True
        )
    if not wanted:
        for key in saving:
            del owner._state_dict_hooks[key]
        for key in loading:
            del owner._load_state_dict_pre_hooks[key]


def _lagrangian_entries(module: nn.Module) -> dict[str, LagrangianConstraint]:
    state = state_of(module)
    if state is None:
        return {}
    state.sync(module)
    return {name: e for name, e in state.plain.items() if isinstance(e, LagrangianConstraint)}


def _save_multipliers(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for name, entry in _lagrangian_entries(module).items():
        # The tensor itself, as for a buffer: dual steps replace it rather than write into it, so a
        # state dict taken earlier keeps the values of its time.
        state_dict[prefix + name + MULTIPLIER_SUFFIX] = entry.current_multiplier()


def _load_multipliers(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # Every multiplier is checked before any is set; the keys are popped before torch compares
    # keys, so strict loading does not call them unexpected.
    incoming: list[tuple[LagrangianConstraint, Tensor]] = []
    for name, entry in _lagrangian_entries(module).items():
        key = prefix + name + MULTIPLIER_SUFFIX
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not isinstance(value, Tensor) or value.shape != entry.tensor.shape:
            got = format_shape(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ShapeMismatchError(
                f"checkpoint key '{key}': the Lagrange multiplier of '{prefix + name}' must have "
                f"shape {format_shape(entry.tensor.shape)}; got {got}."
            )
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise InfeasibleValueError(
                f"checkpoint key '{key}' (shape {format_shape(value.shape)}, {value.dtype}): the Lagrange "
                f"multiplier of '{prefix + name}' must be finite floating point values."
            )
        incoming.append((entry, value))
        del state_dict[key]
    for entry, value in incoming:
        work = compute_dtype(entry.tensor.dtype)
        entry.multiplier = value.detach().to(dtype=work, device=entry.tensor.device, copy=True)
