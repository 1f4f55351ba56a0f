"""Optimizer parameter groups that treat constrained tensors apart.

An optimizer sees the stored unconstrained tensor of a constrained parameter. Weight decay on it
pulls the *unconstrained* value toward 0, which moves the constrained value toward the transform's
image of 0 (the middle of a box, ``log 2`` for softplus), not toward 0. :func:`param_groups`
separates those tensors so their decay (or learning rate) can be set on their own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from paramshape.lookup.modules import constrained_tensors

__all__ = ["param_groups"]


def param_groups(
    module: nn.Module, *, constrained: dict[str, Any] | None = None, **others: Any
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the plain parameters of ``module`` (with the options in
    ``others``) and the stored tensors of paramshape-constrained ones (with ``constrained``, which
    defaults to ``{"weight_decay": 0.0}``). Groups without parameters are left out.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> model = ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1))
        >>> groups = ps.param_groups(model, weight_decay=0.01)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.01), (1, 0.0)]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    stored = {id(owner.parametrizations[name].original) for _, owner, name, _ in constrained_tensors(module)}
    params = [p for p in module.parameters() if p.requires_grad]
    plain = [p for p in params if id(p) not in stored]
    raw = [p for p in params if id(p) in stored]
    groups = [
        {"params": plain, **others},
        {"params": raw, **others, **(constrained or {"weight_decay": 0.0})},
    ]
    return [group for group in groups if group["params"]]
