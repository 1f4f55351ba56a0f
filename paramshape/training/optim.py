"""Optimizer parameter groups that treat constrained tensors apart.

An optimizer sees the stored unconstrained tensor of a constrained parameter. Weight decay on it
pulls the *unconstrained* value toward 0, which moves the constrained value toward the transform's
image of 0 (the middle of a box, ``log 2`` for softplus), not toward 0. :func:`param_groups`
separates those tensors so their decay (or learning rate) can be set on their own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from paramshape.attach.constrain import constraint_info
from paramshape.lookup.modules import constrained_tensors, locate

__all__ = ["param_groups"]


def param_groups(
    module: nn.Module,
    *,
    constrained: dict[str, Any] | None = None,
    projected: dict[str, Any] | None = None,
    decay_1d: bool = True,
    **others: Any,
) -> list[dict[str, Any]]:
    r"""Optimizer parameter groups that treat constrained tensors apart.

    Every trainable parameter of ``module`` lands in exactly one group; groups without parameters
    are left out. In order:

    1. the plain parameters, with the options in ``others`` (``weight_decay=0.01``, ``lr=...``);
    2. only when ``decay_1d=False``: the plain parameters with at most one dimension (biases, the
       gains and shifts of LayerNorm and BatchNorm), with ``others`` and ``weight_decay=0.0``;
    3. only when ``projected`` is given: the parameters constrained with ``method="project"``, with
       ``others`` updated by ``projected`` (``projected={"weight_decay": 0.0}`` keeps them out of
       weight decay);
    4. the stored unconstrained tensors of ``method="reparam"`` constraints, with ``others``
       updated by ``constrained``, which defaults to ``{"weight_decay": 0.0}``.

    Why the defaults differ: weight decay on a reparametrised tensor acts on its *unconstrained*
    value, :math:`\theta \to 0`, and so pulls the constrained value :math:`f(\theta)` towards
    :math:`f(0)` (the middle of a box, :math:`\log 2` for ``Positive``), which is never what decay
    means, so it is off unless asked for. A projected parameter holds its real value, so decay acts
    as on any parameter, pulling it towards 0 before the projection puts it back in the set; it
    stays with the plain parameters unless ``projected`` says otherwise. A ``method="penalty"``
    parameter is a plain parameter too and is treated as one.

    Biases and norm gains are not special unless ``decay_1d=False``: a plain bias or LayerNorm
    weight gets ``others``, weight decay included, as with ``model.parameters()``; a constrained
    one follows its constraint's group above (a reparametrised bias is never decayed by default).
    With ``decay_1d=False`` the plain one-dimensional parameters (and 0-d scalars) get no decay,
    the usual recipe for transformers; a constrained bias still follows its constraint.

    Args:
        module: any ``nn.Module``.
        constrained: options for the reparametrised tensors' group (default
            ``{"weight_decay": 0.0}``).
        projected: options for a group of the ``method="project"`` parameters; ``None`` (default)
            keeps them with the plain parameters.
        decay_1d: ``False`` moves the plain parameters with ``ndim <= 1`` to a group without
            weight decay.
        **others: options of every group (``lr``, ``weight_decay``, ...), overridden per group as
            above.

    Returns:
        A list of dicts for ``torch.optim.Optimizer``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> model = ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1))
        >>> groups = ps.param_groups(model, weight_decay=0.01)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.01), (1, 0.0)]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
        >>> model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
        >>> _ = ps.constrain(model, "0.weight", ps.Box(-1, 1), method="project")
        >>> groups = ps.param_groups(
        ...     model, weight_decay=0.01, projected={"weight_decay": 0.0}, decay_1d=False
        ... )
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(3, 0.0), (1, 0.0)]
    """
    stored = {id(locate(module, path).storage()) for path, _, _, _ in constrained_tensors(module)}
    project = (
        {
            id(locate(module, path).storage())
            for path, info in constraint_info(module).items()
            if info.method == "project"
        }
        if projected is not None
        else set()
    )
    params = [p for p in module.parameters() if p.requires_grad]
    plain = [p for p in params if id(p) not in stored and id(p) not in project]
    low_dim = [] if decay_1d else [p for p in plain if p.dim() <= 1]
    groups = [
        {"params": [p for p in plain if not any(p is q for q in low_dim)], **others},
        {"params": low_dim, **others, "weight_decay": 0.0},
        {"params": [p for p in params if id(p) in project], **others, **(projected or {})},
        {
            "params": [p for p in params if id(p) in stored],
            **others,
            **(constrained or {"weight_decay": 0.0}),
        },
    ]
    return [group for group in groups if group["params"]]
