"""The optimizer step dispatcher: one global pre-hook and one post-hook for every strategy, and an
optimizer that steps no constrained tensor runs none of them."""

from __future__ import annotations

import torch
import torch.optim.optimizer as optimizer_module
from torch import nn

import paramshape as ps
from paramshape.strategies import dispatch


def _ours(hooks: dict) -> list:
    return [hook for hook in hooks.values() if getattr(hook, "__module__", "").startswith("paramshape")]


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.ones(2, 3)).square().sum().backward()
    optimizer.step()


def test_one_global_pre_and_post_hook_whatever_is_constrained() -> None:
    models = [
        ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1), method="project"),
        ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1), method="lagrangian", weight=1.0),
        ps.constrain(nn.Linear(3, 3), "weight", ps.UnitNorm(dim=-1), method="riemannian", init="sample"),
        ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1)),
    ]
    assert len(_ours(optimizer_module._global_optimizer_pre_hooks)) == 1
    assert len(_ours(optimizer_module._global_optimizer_post_hooks)) == 1
    assert {"project", "lagrangian", "riemannian", "saturation", "resume"} <= set(dispatch._HANDLERS)
    for model in models:  # each strategy still acts through the dispatcher
        _step(model, torch.optim.SGD(model.parameters(), lr=10.0))
    assert models[0].weight.abs().max() <= 1
    assert ps.constraint_info(models[1])["weight"].multiplier is not None
    torch.testing.assert_close(models[2].weight.norm(dim=-1), torch.ones(3))


def test_an_optimizer_without_constrained_tensors_runs_no_handler() -> None:
    constrained = ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1), method="project")
    ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1))
    plain = nn.Linear(3, 3)
    optimizer = torch.optim.Adam(plain.parameters())
    _step(plain, optimizer)
    assert dispatch.handlers_for(optimizer) == []
    # The constrained model's optimizer runs the resume check once, then projection alone.
    projected = torch.optim.SGD(constrained.parameters(), lr=10.0)
    assert dispatch.handlers_for(projected) == ["resume", "project"]
    _step(constrained, projected)
    assert dispatch.handlers_for(projected) == ["project"]
    assert constrained.weight.abs().max() <= 1


def test_a_plan_follows_new_parameter_groups_and_new_constraints() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=10.0)
    _step(model, optimizer)
    assert dispatch.handlers_for(optimizer) == []
    ps.constrain(model, "1.weight", ps.Box(-0.1, 0.1), method="project", init="sample")
    optimizer.add_param_group({"params": list(model[1].parameters())})
    _step(model, optimizer)
    assert "project" in dispatch.handlers_for(optimizer)
    assert model[1].weight.abs().max() <= 0.1
    # Constraining a tensor the optimizer already holds is seen too (the registry changed).
    ps.constrain(model, "0.weight", ps.Box(-0.1, 0.1), method="project", init="sample")
    _step(model, optimizer)
    assert model[0].weight.abs().max() <= 0.1
