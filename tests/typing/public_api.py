"""A user's code, type-checked with ``mypy --strict`` by ``make lint`` (never run by pytest).

It pins what the public API promises a type checker through ``py.typed``: every call below must
type-check under ``--strict``, and ``assert_type`` fails the check if a return type changes or
decays to ``Any``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import assert_type

import paramshape as ps


def user_code() -> None:
    """Type-checked, never called (pytest imports this file for doctests)."""
    layer = nn.Linear(4, 3)
    assert_type(ps.constrain(layer, "weight", ps.Box(-1, 1)), nn.Module)
    assert_type(ps.constrain(layer, {"*.bias": "positive"}, method="project"), nn.Module)
    assert_type(ps.constraints(layer), dict[str, ps.Transform])
    assert_type(ps.constraint_info(layer), dict[str, ps.ConstraintInfo])
    assert_type(ps.plain_state_dict(layer), dict[str, Tensor])
    assert_type(ps.penalty(layer), Tensor)
    assert_type(ps.unconstrain(layer), nn.Module)

    groups = ps.param_groups(layer, weight_decay=0.01, projected={"weight_decay": 0.0}, decay_1d=False)
    assert_type(groups, list[dict[str, Any]])
    torch.optim.AdamW(groups, lr=1e-3)  # the groups fit the optimizer's signature

    head = ps.bound_output(nn.Linear(4, 3), ps.Simplex(log=True))
    assert_type(head, nn.Module)
    box = ps.Box(-1.0, 1.0)
    assert_type(box.forward(torch.zeros(3)), Tensor)  # nn.Module.__call__ is Any in torch
    assert_type(box.inverse(torch.zeros(3)), Tensor)
    assert_type(ps.resolve("box(-1, 1)"), ps.Transform)
    assert_type(ps.available(), tuple[str, ...])
    assert_type(ps.TemperatureSoftmax(log=True), ps.TemperatureSoftmax)
    assert_type(ps.__version__, str)
