r"""The strategies that keep a plain parameter: projection after each step (:func:`project_`) and a
penalty added to the loss (:func:`penalty`), and :class:`ConstraintInfo`, which says which strategy a
constrained tensor uses.

``ps.constrain(module, name, spec, method=...)`` chooses the strategy:

* ``"reparam"`` (default): the tensor is recomputed from an unconstrained one at every read (see
  :func:`~paramshape.constrain`); always inside the set, gradients flow through the map.
* ``"project"``: the tensor stays a plain ``Parameter``; after every ``optimizer.step()`` of an
  optimizer that holds it, it is replaced by its Euclidean projection onto the closed set
  (:meth:`~paramshape.Transform.project`). Call :func:`project_` yourself in loops that do not call
  ``torch.optim.Optimizer.step``.
* ``"penalty"``: the tensor stays a plain ``Parameter`` and nothing stops it from leaving the set;
  :func:`penalty` returns :math:`\sum_c w_c\, d(\theta_c, C_c)^2`, to add to the loss.
* ``"riemannian"``: the tensor stays a plain ``Parameter`` on a manifold (``Transform.manifold``);
  the optimizer steps along the Riemannian gradient and the step is retracted onto the manifold,
  with momentum transported (:mod:`~paramshape.strategies.riemannian`).
* ``"lagrangian"``: the tensor stays a plain ``Parameter``; :func:`penalty` returns an augmented
  Lagrangian term whose multipliers take a dual ascent step after every optimizer step, driving the
  tensor into the set (:mod:`~paramshape.strategies.lagrangian`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from paramshape.lookup.modules import refuse_inside_compile, unwrap
from paramshape.strategies import riemannian as _riemannian  # noqa: F401  (registers its step hooks)
from paramshape.strategies.lagrangian import LagrangianConstraint
from paramshape.strategies.state import PlainConstraint, module_states
from paramshape.transforms.base import Transform

__all__ = ["ConstraintInfo", "ConstraintMethod", "penalty", "plain_entry", "project_"]

#: How :func:`~paramshape.constrain` keeps a tensor in its set.
ConstraintMethod = Literal["reparam", "project", "penalty", "riemannian", "lagrangian"]


def plain_entry(transform: Transform, method: str, weight: float | None, tensor: Tensor) -> PlainConstraint:
    """The state entry for a constraint that keeps a plain parameter (every method but reparam)."""
    if method == "lagrangian":
        return LagrangianConstraint(transform, "lagrangian", weight, tensor)
    return PlainConstraint(transform, method, weight, tensor)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConstraintInfo:
    """One entry of :func:`~paramshape.constraint_info`: a constrained tensor's transform, the strategy
    that enforces it, the penalty's weight (``method="penalty"``) or the augmented Lagrangian's
    :math:`\rho` and multipliers (``method="lagrangian"``).

    Attributes:
        transform: the transform attached to the tensor (a copy of the spec, in the tensor's dtype).
        method: ``"reparam"``, ``"project"``, ``"penalty"``, ``"riemannian"`` or ``"lagrangian"``.
        weight: the weight of the tensor's term in :func:`~paramshape.penalty` (:math:`\rho` for
            ``method="lagrangian"``); ``None`` for the other methods.
        multiplier: ``method="lagrangian"`` only: a copy of the Lagrange multipliers, one per entry
            of the tensor (0 until the first optimizer step); ``None`` otherwise. The repr shows
            their largest magnitude.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)", method="project")
        >>> ps.constraint_info(layer)
        {'weight': ConstraintInfo(Box(low=-1.0, high=1.0), method='project')}
    """

    transform: Transform
    method: ConstraintMethod = "reparam"
    weight: float | None = None
    multiplier: Tensor | None = None

    def __repr__(self) -> str:
        weight = "" if self.weight is None else f", weight={self.weight!r}"
        multiplier = ""
        if self.multiplier is not None:
            largest = float(self.multiplier.abs().max()) if self.multiplier.numel() else 0.0
            multiplier = f", max |multiplier|={largest:.4g}"
        return f"ConstraintInfo({self.transform!r}, method={self.method!r}{weight}{multiplier})"


def project_(module: nn.Module, *, include_penalty: bool = False) -> nn.Module:
    r"""Project every tensor under ``module`` constrained with ``method="project"`` onto its set, in
    place: :math:`\theta \leftarrow P_C(\theta)`, the Euclidean projection onto the closed set.

    ``optimizer.step()`` already does this for the parameters it holds (through a global
    optimizer step post-hook), so call it only in loops that update parameters some other way: a
    hand-written update under ``torch.no_grad()``, an optimizer that does not derive from
    ``torch.optim.Optimizer``, after loading a checkpoint, or after assigning values.

    Args:
        module: any module; tensors in its submodules are included.
        include_penalty: also project the tensors constrained with ``method="penalty"`` or
            ``"lagrangian"`` (for example once at the end of training, to make them exactly
            feasible); their transforms must define a projection.

    Returns:
        ``module``.

    Raises:
        ProjectionUnavailableError: ``include_penalty=True`` and a penalty transform has no projection.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1), init="project", method="project")
        >>> with torch.no_grad():
        ...     _ = layer.weight.add_(5.0)  # a hand-written update leaves the box
        >>> bool(ps.project_(layer).weight.max() <= 1)
        True
    """
    refuse_inside_compile("project_")
    module = unwrap(module)
    methods = ("project", "penalty", "lagrangian") if include_penalty else ("project",)
    for _, _, state in module_states(module):
        for entry in state.plain.values():
            if entry.method in methods:
                entry.project_()
    return module


def penalty(module: nn.Module) -> Tensor:
    r"""The penalty of every tensor under ``module`` constrained with ``method="penalty"``, plus the
    augmented Lagrangian term of every tensor constrained with ``method="lagrangian"``:

    .. math::

        \text{penalty} = \sum_c w_c \, \lVert \theta_c - P_{C_c}(\theta_c) \rVert_2^2
            + \sum_l \Bigl(\frac{\rho_l}{2} \lVert z_l - P_{C_l}(z_l) \rVert_2^2
            - \frac{\lVert \lambda_l \rVert_2^2}{2 \rho_l}\Bigr),
            \quad z_l = \theta_l + \lambda_l / \rho_l

    the weighted squared Euclidean distance of each tensor to its set (:math:`P` is
    :meth:`~paramshape.Transform.project`). It is exactly 0 when every tensor lies in its set (as
    :meth:`~paramshape.Transform.contains` tests it, a few ulps of tolerance included; for elementwise
    sets the distance is measured beyond that tolerance, so the penalty is continuous) and grows
    quadratically with the distance; its gradient is :math:`2 w_c (\theta_c - P(\theta_c))`, so it
    pulls each violating entry straight back towards the set. For a transform without a projection
    the distance is the excess that :meth:`~paramshape.Transform.contains` measures.

    Add it to the loss: ``loss = task_loss + ps.penalty(model)``. The weights ``w_c`` are given per
    constraint with ``ps.constrain(..., method="penalty", weight=w)`` (default 1). A penalty keeps the
    tensor *near* the set, not in it: the optimum trades task loss against violation, so expect small
    violations that shrink as the weight grows. The Lagrangian terms (:math:`\rho` given as
    ``weight=``, multipliers :math:`\lambda` updated after each optimizer step; see
    :mod:`paramshape.strategies.lagrangian`) remove that violation: the multipliers grow until the
    tensor is in the set.

    Returns:
        A 0-d tensor (float32, or float64 when a penalized tensor is float64); 0 without penalty
        constraints.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 1), "weight", ps.Box(-1, 1), init="project", method="penalty")
        >>> ps.penalty(layer).detach()
        tensor(0.)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.5, -1.0]]))
        >>> ps.penalty(layer).detach()  # (1.5 - 1)^2
        tensor(0.2500)
    """
    module = unwrap(module)
    terms = []
    for _, _, state in module_states(module):
        for entry in state.plain.values():
            if entry.method == "penalty" and entry.weight is not None:
                terms.append(entry.weight * entry.squared_distance())
            elif isinstance(entry, LagrangianConstraint):
                terms.append(entry.term())
    if not terms:
        device = next((p.device for p in module.parameters()), None)
        return torch.zeros((), device=device)
    return functools.reduce(torch.add, terms)
