"""``method="lagrangian"``: augmented Lagrangian with damped dual ascent after each optimizer step."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.strategies import lagrangian as lagrangian_module
from paramshape.strategies.lagrangian import DUAL_STEP, MULTIPLIER_SUFFIX

from .test_constrain import assert_unchanged, snapshot

#: The documented tolerance: once the optimizer has settled, the distance to the set is below it.
TOLERANCE = 1e-5


def _holder(value, spec="box(-1, 1)", **kwargs):
    """A module whose ``w`` is constrained, then set to ``value`` (which may lie outside the set)."""
    value = torch.as_tensor(value, dtype=torch.float32)
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros_like(value))
    ps.constrain(module, "w", spec, **kwargs)
    with torch.no_grad():
        module.w.copy_(value)
    return module


def _train(module, optimizer, target, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (module.w - target).square().sum() + ps.penalty(module)
        loss.backward()
        optimizer.step()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_quadratic_pulled_outside_ends_on_the_boundary(name):
    # min (w - 3)^2 subject to w in [-1, 1]: w* = 1, and the KKT multiplier is -f'(1) = 4.
    module = _holder(torch.zeros(3), method="lagrangian")
    _train(module, OPTIMIZERS[name](module.parameters()), 3.0, 600)
    assert torch.allclose(module.w.detach(), torch.ones(3), atol=TOLERANCE, rtol=0)
    info = ps.constraint_info(module)["w"]
    assert info.method == "lagrangian"
    assert info.weight == 1.0
    assert torch.allclose(info.multiplier, torch.full((3,), 4.0), atol=1e-3)


def test_a_fixed_penalty_stops_a_unit_outside_where_the_multiplier_does_not():
    # The example: with a unit penalty the optimum of (w-3)^2 + (w-1)^2 is w = 2.
    penalised = _holder(torch.zeros(1), method="penalty")
    _train(penalised, torch.optim.SGD(penalised.parameters(), lr=0.1), 3.0, 300)
    assert float(penalised.w.detach()) == pytest.approx(2.0, abs=1e-4)
    lagrangian = _holder(torch.zeros(1), method="lagrangian")
    _train(lagrangian, torch.optim.SGD(lagrangian.parameters(), lr=0.1), 3.0, 600)
    assert float(lagrangian.w.detach()) == pytest.approx(1.0, abs=TOLERANCE)


def test_an_optimum_inside_the_set_is_left_alone():
    module = _holder(torch.zeros(2), method="lagrangian")
    _train(module, torch.optim.SGD(module.parameters(), lr=0.1), 0.5, 300)
    assert torch.allclose(module.w.detach(), torch.full((2,), 0.5), atol=1e-6)
    assert float(ps.constraint_info(module)["w"].multiplier.abs().max()) == 0.0


def test_term_and_dual_step_follow_the_formulas():
    # Written out from the definitions: z = w + lam / rho, term = rho/2 |z - P(z)|^2 - |lam|^2 / (2 rho),
    # and lam <- lam + eta (rho (z - P(z)) - lam).
    rho = 2.0
    module = _holder([0.5, 1.5, -3.0], method="lagrangian", weight=rho)
    w = torch.tensor([0.5, 1.5, -3.0])
    lam = torch.zeros(3)
    for _ in range(3):
        z = w + lam / rho
        expected = rho / 2 * (z - z.clamp(-1, 1)).square().sum() - lam.square().sum() / (2 * rho)
        assert float(ps.penalty(module).detach()) == pytest.approx(float(expected), rel=1e-6)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0)  # a step that moves nothing
        optimizer.zero_grad()
        ps.penalty(module).backward()
        assert torch.allclose(module.w.grad, rho * (z - z.clamp(-1, 1)))
        optimizer.step()
        lam = lam + DUAL_STEP * (rho * (z - z.clamp(-1, 1)) - lam)
        assert torch.allclose(ps.constraint_info(module)["w"].multiplier, lam)


def test_only_the_stepped_optimizer_updates_its_multipliers():
    module = _holder(torch.full((2,), 3.0), method="lagrangian")
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    other.step()
    assert float(ps.constraint_info(module)["w"].multiplier.abs().max()) == 0.0


def test_a_vector_set_with_a_projection():
    module = nn.Module()
    module.p = nn.Parameter(torch.full((4,), 0.25))
    ps.constrain(module, "p", ps.Simplex(), method="lagrangian")
    target = torch.tensor([2.0, 0.0, 0.0, -1.0])
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(600):
        optimizer.zero_grad()
        ((module.p - target).square().sum() + ps.penalty(module)).backward()
        optimizer.step()
    # The projection of the target onto the simplex is (1, 0, 0, 0).
    assert torch.allclose(module.p.detach(), torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-4)


def test_multipliers_are_saved_in_state_dict_and_loaded_back():
    module = _holder(torch.zeros(3), method="lagrangian")
    _train(module, torch.optim.SGD(module.parameters(), lr=0.1), 3.0, 50)
    state = module.state_dict()
    assert set(state) == {"w", "w" + MULTIPLIER_SUFFIX}
    fresh = _holder(torch.zeros(3), method="lagrangian")
    fresh.load_state_dict(state)  # strict: the multiplier key is consumed, not unexpected
    assert torch.equal(ps.constraint_info(fresh)["w"].multiplier, state["w" + MULTIPLIER_SUFFIX])
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    again = _holder(torch.zeros(3), method="lagrangian")
    again.load_state_dict(torch.load(buffer))
    assert torch.equal(ps.constraint_info(again)["w"].multiplier, state["w" + MULTIPLIER_SUFFIX])


def test_a_nested_module_saves_under_its_prefix_and_deep_copies_keep_the_multipliers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with pytest.warns(ps.ParamshapeWarning, match="init='project' moved"):
        ps.constrain(model, {"*.weight": "box(-0.1, 0.1)"}, method="lagrangian", init="project")
    assert "1.weight" + MULTIPLIER_SUFFIX in model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    (model(torch.ones(3, 2)).sum() * 10 + ps.penalty(model)).backward()
    optimizer.step()
    clone = copy.deepcopy(model)
    for key, value in model.state_dict().items():
        assert torch.equal(clone.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (
            torch.zeros(2),
            ps.ShapeMismatchError,
            r"Lagrange multiplier of 'w' must have shape \(3,\); got \(2,\)",
        ),
        (torch.tensor([0.0, float("nan"), 0.0]), ps.InfeasibleValueError, "must be finite floating point"),
    ],
)
def test_a_bad_multiplier_in_a_checkpoint_is_refused(value, error, message):
    module = _holder(torch.zeros(3), method="lagrangian")
    before = ps.constraint_info(module)["w"].multiplier
    with pytest.raises(error, match=message):
        module.load_state_dict({"w": torch.zeros(3), "w" + MULTIPLIER_SUFFIX: value})
    assert torch.equal(ps.constraint_info(module)["w"].multiplier, before)


def test_unconstrain_drops_the_term_the_key_and_the_dual_step():
    module = _holder(torch.full((2,), 3.0), method="lagrangian")
    ps.unconstrain(module)
    assert set(module.state_dict()) == {"w"}
    assert float(ps.penalty(module).detach()) == 0.0
    hooks = [*module._state_dict_hooks.values(), *module._load_state_dict_pre_hooks.values()]
    assert not any(
        getattr(h, "hook", h) in (lagrangian_module._save_multipliers, lagrangian_module._load_multipliers)
        for h in hooks
    )


def test_needs_a_projection():
    layer = nn.Linear(3, 3)
    before = snapshot(layer)
    with pytest.raises(
        ps.ProjectionUnavailableError, match="'weight' of Linear: method='project' is not available"
    ):
        ps.constrain(layer, "weight", ps.Orthogonal(), method="lagrangian", init="sample")
    assert_unchanged(layer, before)


def test_float64_tensor_keeps_float64_multipliers():
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    ps.constrain(module, "w", "box(-1, 1)", method="lagrangian")
    _train(module, torch.optim.SGD(module.parameters(), lr=0.1), 3.0, 400)
    assert ps.constraint_info(module)["w"].multiplier.dtype == torch.float64
    assert torch.allclose(module.w.detach(), torch.ones(2, dtype=torch.float64), atol=1e-9)


def test_project_with_include_penalty_makes_a_lagrangian_tensor_exactly_feasible():
    module = _holder([1.5, -0.5], method="lagrangian")
    ps.project_(module)
    assert torch.equal(module.w.detach(), torch.tensor([1.5, -0.5]))  # not a projected method
    ps.project_(module, include_penalty=True)
    assert torch.equal(module.w.detach(), torch.tensor([1.0, -0.5]))
