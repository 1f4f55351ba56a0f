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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from paramshape.lookup.modules import refuse_inside_compile, unwrap
from paramshape.strategies.state import module_states
from paramshape.transforms.base import Transform

__all__ = ["ConstraintInfo", "ConstraintMethod", "penalty", "project_"]

#: How :func:`~paramshape.constrain` keeps a tensor in its set.
ConstraintMethod = Literal["reparam", "project", "penalty"]


@dataclass(frozen=True)
class ConstraintInfo:
    """One entry of :func:`~paramshape.constraint_info`: a constrained tensor's transform, the strategy
    that enforces it, and (for ``method="penalty"``) the penalty's weight.

    Attributes:
        transform: the transform attached to the tensor (a copy of the spec, in the tensor's dtype).
        method: ``"reparam"``, ``"project"`` or ``"penalty"``.
        weight: the weight of the tensor's term in :func:`~paramshape.penalty`; ``None`` unless
            ``method="penalty"``.

    Example:
        >>> import torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)", method="project")
        >>> ps.constraint_info(layer)
        {'weight': ConstraintInfo(Box(low=-1.0, high=1.0), method='project')}
    """

    transform: Transform
    method: ConstraintMethod = "reparam"
    weight: float | None = None

    def __repr__(self) -> str:
        weight = "" if self.weight is None else f", weight={self.weight!r}"
        return f"ConstraintInfo({self.transform!r}, method={self.method!r}{weight})"


def project_(module: nn.Module, *, include_penalty: bool = False) -> nn.Module:
    r"""Project every tensor under ``module`` constrained with ``method="project"`` onto its set, in
    place: :math:`\theta \leftarrow P_C(\theta)`, the Euclidean projection onto the closed set.

    ``optimizer.step()`` already does this for the parameters it holds (through a global
    optimizer step post-hook), so call it only in loops that update parameters some other way: a
    hand-written update under ``torch.no_grad()``, an optimizer that does not derive from
    ``torch.optim.Optimizer``, after loading a checkpoint, or after assigning values.

    Args:
        module: any module; tensors in its submodules are included.
        include_penalty: also project the tensors constrained with ``method="penalty"`` (for example
            once at the end of training, to make them exactly feasible); their transforms must define
            a projection.

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
    methods = ("project", "penalty") if include_penalty else ("project",)
    for _, _, state in module_states(module):
        for entry in state.plain.values():
            if entry.method in methods:
                entry.project_()
    return module


def penalty(module: nn.Module) -> Tensor:
    r"""The penalty of every tensor under ``module`` constrained with ``method="penalty"``:

    .. math::

        \text{penalty} = \sum_c w_c \, \lVert \theta_c - P_{C_c}(\theta_c) \rVert_2^2

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
    violations that shrink as the weight grows.

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
    terms = [
        entry.weight * entry.squared_distance()
        for _, _, state in module_states(module)
        for entry in state.plain.values()
        if entry.method == "penalty" and entry.weight is not None
    ]
    if not terms:
        device = next((p.device for p in module.parameters()), None)
        return torch.zeros((), device=device)
    return functools.reduce(torch.add, terms)
