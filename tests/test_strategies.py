"""constrain(method="project" | "penalty"), project_, penalty, constraint_info, and patterns."""

from __future__ import annotations

import copy
import gc
import io
import re
import sys
import warnings
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.strategies import dispatch as _dispatch
from paramshape.strategies import state as _state

from .test_constrain import assert_unchanged, snapshot


class Holder(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


class NonNegativeSquare(ps.Transform):
    """A transform without a projection: x -> x**2 onto [0, inf)."""

    def forward(self, x):
        return x * x

    def inverse(self, y):
        return y.clamp_min(0).sqrt()

    @property
    def codomain(self):
        return torch.distributions.constraints.greater_than_eq(0.0)

    def _excess(self, y):
        return (-y.double()).clamp_min(0.0)

    def _describe(self, y, index):
        return f"value at {list(index)} is negative"

    def to_interior(self, y):
        return torch.nan_to_num(y, nan=1.0, posinf=1.0, neginf=1.0).abs() + 1e-3


def push_outward(module: nn.Module, steps: int = 20, lr: float = 1.0, check=None) -> None:
    """Adam steps on a loss that pushes every parameter away from 0, checking after each step."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    directions = {id(p): torch.where(torch.rand_like(p) < 0.5, -1.0, 1.0) for p in module.parameters()}
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -sum((p * directions[id(p)]).sum() for p in module.parameters())
        loss.backward()
        optimizer.step()
        if check is not None:
            check()


# ------------------------------------------------------------------------------------- project
@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (ps.Box(-0.5, 0.5), (4, 5)),
        (ps.Box(torch.linspace(-2, 0, 4).reshape(4, 1), 1.0), (4, 5)),
        (ps.UnitInterval(), (4, 5)),
        (ps.Positive(), (4, 5)),
        (ps.GreaterThan(2.0), (4, 5)),
        (ps.LessThan(-1.0), (4, 5)),
        (ps.Simplex(dim=-1), (4, 5)),
        (ps.Simplex(dim=0), (4, 5)),
    ],
    ids=repr,
)
def test_project_keeps_every_step_feasible_and_reaches_the_boundary(spec, shape):
    module = Holder(torch.zeros(shape))
    ps.constrain(module, "value", spec, init="sample", method="project")
    transform = ps.constraints(module)["value"]
    parameter = module.value
    push_outward(module, check=lambda: _assert_inside(transform, module.value))
    assert module.value is parameter  # a plain Parameter, the same object
    assert list(module.state_dict()) == ["value"]
    # Pushed outward for 20 large steps, values sit exactly on the boundary (the projection's mark).
    on_boundary = torch.equal(transform.project(module.value.detach()), module.value.detach())
    assert on_boundary
    assert not torch.equal(module.value.detach(), transform.to_interior(module.value.detach()))


def _assert_inside(transform: ps.Transform, value: torch.Tensor) -> None:
    assert transform.contains(value.detach()).all(), f"{transform!r}: left the set after a step"


def test_project_with_init_project_lands_on_the_boundary_and_warns():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 2.0, -3.0, float("nan")]] * 3))
    with pytest.warns(ps.ParamshapeWarning, match="moved 9 of 12 values onto Box"):
        ps.constrain(layer, "weight", ps.Box(-1, 1), init="project", method="project")
    assert torch.equal(layer.weight[0].detach(), torch.tensor([0.5, 1.0, -1.0, 0.0]))


def test_project_with_init_keep_refuses_infeasible_values_and_changes_nothing():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    before = snapshot(layer)
    with pytest.raises(ps.InfeasibleValueError, match="init='project'"):
        ps.constrain(layer, "weight", ps.Box(-1, 1), method="project")
    assert_unchanged(layer, before)
    assert ps.constraints(layer) == {}


def test_project_init_raw_and_sample():
    layer = nn.Linear(6, 4)
    raw = layer.weight.detach().clone()
    ps.constrain(layer, "weight", "positive", init="raw", method="project")
    torch.testing.assert_close(layer.weight.detach(), 0.25 * torch.log1p(torch.exp(4 * raw)))  # softness 1/4
    ps.constrain(layer, "bias", ps.Box(2, 3), init="sample", method="project")
    assert ((layer.bias > 2) & (layer.bias < 3)).all()


def test_the_hook_projects_only_the_parameters_of_the_optimizer_that_stepped():
    a = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    b = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    optimizer = torch.optim.SGD(a.parameters(), lr=1.0)
    with torch.no_grad():
        b.value.fill_(5.0)  # b is not in the optimizer: left alone
    optimizer.zero_grad()
    (-a.value.sum()).backward()
    optimizer.step()
    assert torch.equal(a.value.detach(), torch.ones(3))
    assert torch.equal(b.value.detach(), torch.full((3,), 5.0))
    ps.project_(b)
    assert torch.equal(b.value.detach(), torch.ones(3))


def test_project_underscore_for_hand_written_updates_and_penalty_tensors():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    ps.constrain(model, "0.weight", ps.Box(-1, 1), init="project", method="project")
    ps.constrain(model, "1.weight", ps.Box(-1, 1), init="project", method="penalty")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(10.0)
    assert ps.project_(model) is model
    assert (model[0].weight <= 1).all()
    assert (model[1].weight > 1).all()  # penalty tensors are left alone by default
    ps.project_(model, include_penalty=True)
    assert (model[1].weight <= 1).all()
    assert (model[0].bias > 1).all()  # unconstrained tensors untouched


def test_unconstrain_stops_projection_and_removes_the_global_hook():
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    state = module.__dict__[_state.STATE_ATTRIBUTE]
    assert state in _state._PROJECTING
    assert "project" in _dispatch._HANDLERS
    ps.unconstrain(module, "value")
    assert ps.constraints(module) == {}
    assert _state.STATE_ATTRIBUTE not in module.__dict__
    assert state not in _state._PROJECTING
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)
    # Whether the handler stays enrolled depends on other tests' models still alive (a model the
    # collector drops leaves it on until the next unconstrain); what must hold is that this
    # optimizer's steps no longer run it.
    assert "project" not in _dispatch.handlers_for(optimizer)
    (-module.value.sum()).backward()
    optimizer.step()
    assert (module.value > 1).all()


def test_a_dropped_model_leaves_no_reference_behind():
    gc.collect()
    projecting = len(_state._PROJECTING)
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    assert len(_state._PROJECTING) == projecting + 1
    alive = weakref.ref(module)
    parameter = weakref.ref(module.value)
    del module
    gc.collect()
    assert alive() is None
    assert parameter() is None
    assert len(_state._PROJECTING) == projecting
    # The hook holds nothing and is a no-op once nothing is projected; the next step removes nothing
    # it should not.
    other = Holder(torch.full((2,), 7.0))
    optimizer = torch.optim.SGD(other.parameters(), lr=0.0)
    other.value.sum().backward()
    optimizer.step()
    assert torch.equal(other.value.detach(), torch.full((2,), 7.0))


def test_deep_copies_and_pickles_keep_projecting():
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    clone = copy.deepcopy(module)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for copied in (clone, loaded):
        assert copied.value is not module.value
        assert (
            repr(ps.constraint_info(copied))
            == "{'value': ConstraintInfo(Box(low=-1.0, high=1.0), method='project')}"
        )
        optimizer = torch.optim.SGD(copied.parameters(), lr=10.0)
        (-copied.value.sum()).backward()
        optimizer.step()
        assert torch.equal(copied.value.detach(), torch.ones(3))
    assert torch.equal(module.value.detach(), torch.zeros(3))


def test_replaced_parameters_are_followed_by_name():
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    module.load_state_dict({"value": torch.full((3,), 0.5)}, assign=True)
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)
    (-module.value.sum()).backward()
    optimizer.step()
    assert torch.equal(module.value.detach(), torch.ones(3))


def test_project_follows_the_module_dtype():
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project").double()
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)
    (-module.value.sum()).backward()
    optimizer.step()
    assert module.value.dtype == torch.float64
    assert torch.equal(module.value.detach(), torch.ones(3, dtype=torch.float64))
    assert ps.constraints(module)["value"].low.dtype == torch.float64


CLAMP_FAMILIES = [
    ps.Box(-1.0, 1.0),
    ps.Box(-0.5, 2.0),
    ps.Box(torch.tensor([[-1.0], [0.0]]), torch.tensor([1.0, 2.0, 3.0])),  # per-element bounds
    ps.Box(-torch.inf, 0.25),
    ps.Positive(),
    ps.GreaterThan(0.5),
    ps.LessThan(-0.5),
    ps.SoftClip(-1.0, 1.0),
    ps.Simplex(),  # not a clamp: its own projection runs
]


def _step_outward(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One SGD step (lr 1) of a loss whose gradient is a fixed +-3 pattern; returns the values the
    optimizer produced, before the hook projected them (computed by hand)."""
    optimizer.zero_grad()
    loss = sum(((-1.0) ** torch.arange(p.numel()).view(p.shape) * 3.0 * p).sum() for p in model.parameters())
    loss.backward()
    stepped = {name: (p - p.grad).detach() for name, p in model.named_parameters()}
    optimizer.step()
    return stepped


def test_the_step_hook_projects_in_place_exactly_as_project_for_every_family():
    model = nn.ModuleList(Holder(torch.zeros(2, 3)) for _ in CLAMP_FAMILIES)
    for holder, transform in zip(model, CLAMP_FAMILIES, strict=True):
        ps.constrain(holder, "value", transform, init="sample", method="project")
    tensors = [holder.value for holder in model]
    storages = [t.data_ptr() for t in tensors]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        stepped = _step_outward(model, optimizer)
        for index, (holder, transform) in enumerate(zip(model, CLAMP_FAMILIES, strict=True)):
            expected = transform.project(stepped[f"{index}.value"])
            assert torch.equal(holder.value.detach(), expected), transform
    assert [holder.value for holder in model] == tensors  # the same tensors, updated in place
    assert [t.data_ptr() for t in tensors] == storages


def test_a_subclass_with_its_own_projection_does_not_inherit_the_clamp():
    class HalfBox(ps.Box):
        def project(self, y):
            return super().project(y) / 2

    assert ps.Box(-1, 1).clamp_bounds() is not None
    assert HalfBox(-1, 1).clamp_bounds() is None
    module = ps.constrain(Holder(torch.zeros(3)), "value", HalfBox(-1, 1), method="project")
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)
    (-module.value.sum()).backward()
    optimizer.step()
    assert torch.equal(module.value.detach(), torch.full((3,), 0.5))


def test_the_cached_projection_follows_bounds_groups_and_dtypes_changed_between_steps():
    module = ps.constrain(Holder(torch.zeros(3)), "value", ps.Box(-1, 1), method="project")
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)

    def step(target: nn.Module) -> None:
        optimizer.zero_grad()
        (-sum(p.sum() for p in target.parameters())).backward()
        optimizer.step()

    step(module)
    assert torch.equal(module.value.detach(), torch.ones(3))
    with torch.no_grad():  # a bound changed in place (as load_state_dict does)
        ps.constraints(module)["value"].high.fill_(0.5)
    step(module)
    assert torch.equal(module.value.detach(), torch.full((3,), 0.5))
    other = ps.constrain(Holder(torch.zeros(2)), "value", ps.Box(-1, 0.25), method="project")
    optimizer.add_param_group({"params": other.parameters()})
    step(nn.ModuleList([module, other]))
    assert torch.equal(other.value.detach(), torch.full((2,), 0.25))
    module.double()
    step(module)
    assert module.value.dtype == torch.float64
    assert torch.equal(module.value.detach(), torch.full((3,), 0.5, dtype=torch.float64))
    ps.unconstrain(module, "value")
    step(module)
    assert torch.equal(module.value.detach(), torch.full((3,), 10.5, dtype=torch.float64))


def test_project_refuses_transforms_without_a_projection_and_buffers():
    module = Holder(torch.ones(3))
    before = snapshot(module)
    with pytest.raises(ps.ProjectionUnavailableError, match=r"'value' of Holder: method='project' is not"):
        ps.constrain(module, "value", NonNegativeSquare(), method="project")
    assert_unchanged(module, before)
    norm = nn.BatchNorm1d(3)
    with pytest.raises(ps.UnsupportedTensorError, match="'running_var' of BatchNorm1d is a buffer"):
        ps.constrain(norm, "running_var", "positive", method="project")


def test_tied_weights_are_accepted_by_the_plain_strategies():
    model = nn.Module()
    model.embedding = nn.Embedding(10, 4)
    model.decoder = nn.Linear(4, 10, bias=False)
    model.decoder.weight = model.embedding.weight
    with pytest.warns(ps.ParamshapeWarning):
        ps.constrain(model, "embedding.weight", ps.Box(-0.5, 0.5), init="project", method="project")
    assert model.decoder.weight is model.embedding.weight
    assert (model.decoder.weight.abs() <= 0.5).all()
    with pytest.raises(ps.ConstraintConflictError, match=re.escape("same Parameter as 'embedding.weight'")):
        ps.constrain(model, "decoder.weight", ps.Box(-0.5, 0.5), method="penalty")


# ------------------------------------------------------------------------------------- penalty
def test_penalty_is_zero_inside_and_on_the_boundary():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 0.3], [0.0, 1.0, -0.999]]))
    ps.constrain(layer, "weight", ps.Box(-1, 1), method="penalty")
    assert ps.penalty(layer).item() == 0.0
    with torch.no_grad():  # one ulp past the bound: inside for contains(), so no penalty either
        layer.weight[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert ps.constraints(layer)["weight"].contains(layer.weight.detach()).all()
    assert ps.penalty(layer).item() == 0.0
    with torch.no_grad():
        layer.weight[0, 0] = 1.001
    assert ps.penalty(layer).item() == pytest.approx(1e-6, rel=1e-3)


def test_penalty_is_the_weighted_squared_distance_and_its_gradient_points_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].bias.fill_(1.0)
    ps.constrain(model, "0.weight", "box(-1, 1)", method="penalty", weight=2.0)
    ps.constrain(model, "1.bias", "positive", method="penalty")
    with torch.no_grad():  # plain parameters: nothing stops them from leaving the set
        model[0].weight.copy_(torch.tensor([[1.5, 0.0], [-3.0, 0.5]]))
        model[1].bias.fill_(-0.25)
    value = ps.penalty(model)
    # 2 * ((1.5 - 1)^2 + (-3 + 1)^2) + 1 * (-0.25 - 0)^2
    assert value.item() == pytest.approx(2 * (0.25 + 4.0) + 0.0625)
    value.backward()
    torch.testing.assert_close(model[0].weight.grad, torch.tensor([[2 * 2 * 0.5, 0.0], [2 * 2 * -2.0, 0.0]]))
    torch.testing.assert_close(model[1].bias.grad, torch.tensor([2 * -0.25]))


def test_penalty_training_reduces_violation_and_weight_tightens_it():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([3.0, -2.0, 0.5])  # the unconstrained optimum lies outside the box
    violations = {}
    for weight in (0.1, 10.0):
        layer = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            layer.weight.zero_()
        ps.constrain(layer, "weight", ps.Box(-1, 1), method="penalty", weight=weight)
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(400):
            optimizer.zero_grad()
            loss = (layer(x).squeeze(-1) - y).square().mean() + ps.penalty(layer)
            loss.backward()
            optimizer.step()
        violations[weight] = (layer.weight.detach().abs() - 1).clamp_min(0).max().item()
    assert violations[0.1] > 0.1  # a weak penalty leaves a visible violation
    # The optimum trades loss against violation: 100x the weight, about 10x less violation here.
    assert 0 < violations[10.0] < violations[0.1] / 5


def test_penalty_falls_back_on_the_excess_without_a_projection():
    module = Holder(torch.ones(3))
    ps.constrain(module, "value", NonNegativeSquare(), method="penalty")
    assert ps.penalty(module).item() == 0.0
    with torch.no_grad():
        module.value.copy_(torch.tensor([-2.0, 1.0, 0.0]))
    assert ps.penalty(module).item() == pytest.approx(4.0)


def test_penalty_dtype_and_empty_model():
    assert ps.penalty(nn.Linear(2, 2)).item() == 0.0
    layer = ps.constrain(nn.Linear(2, 2).double(), "weight", ps.Box(-1, 1), method="penalty")
    assert ps.penalty(layer).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"method": "clip"},
            r"method must be one of \['reparam', 'project', 'penalty', 'riemannian', 'lagrangian'\]",
        ),
        ({"method": "penalty", "weight": -1.0}, "weight must be a finite number >= 0"),
        ({"method": "penalty", "weight": float("nan")}, "weight must be a finite number >= 0"),
        ({"method": "penalty", "weight": True}, "weight must be a finite number >= 0"),
        ({"method": "project", "weight": 2.0}, "weight= applies to method='penalty' and 'lagrangian' only"),
        (
            {"method": "riemannian", "weight": 2.0},
            "weight= applies to method='penalty' and 'lagrangian' only",
        ),
        ({"weight": 2.0}, "weight= applies to method='penalty' and 'lagrangian' only"),
        ({"method": "lagrangian", "weight": 0.0}, r"weight \(rho\) of method='lagrangian' must be > 0"),
    ],
)
def test_bad_method_or_weight(kwargs, message):
    layer = nn.Linear(2, 2)
    before = snapshot(layer)
    with pytest.raises(ps.SpecError, match=message):
        ps.constrain(layer, "weight", "box(-1, 1)", **kwargs)
    assert_unchanged(layer, before)


# ------------------------------------------------------------------- listing, switching, removing
def test_constraints_and_constraint_info_report_every_strategy():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model, "0.weight", "box(-1, 1)")
    ps.constrain(model, "0.bias", "box(-1, 1)", method="project")
    ps.constrain(model, "1.weight", "box(-1, 1)", method="penalty", weight=0.5)
    assert list(ps.constraints(model)) == ["0.weight", "0.bias", "1.weight"]
    assert all(isinstance(t, ps.Box) for t in ps.constraints(model).values())
    info = ps.constraint_info(model)
    assert [(i.method, i.weight) for i in info.values()] == [
        ("reparam", None),
        ("project", None),
        ("penalty", 0.5),
    ]
    assert info["0.weight"].transform is ps.constraints(model)["0.weight"]
    assert repr(info["1.weight"]) == "ConstraintInfo(Box(low=-1.0, high=1.0), method='penalty', weight=0.5)"
    ps.unconstrain(model)
    assert ps.constraint_info(model) == {}
    assert type(model[0]) is nn.Linear


def test_switching_strategies_keeps_the_parameter_object_and_the_value():
    layer = nn.Linear(3, 3)
    weight = layer.weight
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.warns(ps.ParamshapeWarning):
        ps.constrain(layer, "weight", ps.Box(-0.2, 0.2), init="project")
    value = layer.weight.detach().clone()
    for method in ("project", "penalty", "reparam", "penalty", "reparam", "project"):
        ps.constrain(layer, "weight", ps.Box(-0.2, 0.2), method=method)
        assert ps.constraint_info(layer)["weight"].method == method
        assert len(ps.constraints(layer)) == 1
        torch.testing.assert_close(layer.weight.detach(), value, rtol=0, atol=1e-6)
        stored = layer.parametrizations.weight.original if method == "reparam" else layer.weight
        assert stored is weight
    # parametrize's class is gone; a plain tensor keeps a per-instance subclass named as the user's
    # (it accepts numbers assigned to 'weight', see test_plain_assignment.py).
    assert type(layer).__bases__ == (nn.Linear,)
    assert type(layer).__name__ == "Linear"
    assert not torch.nn.utils.parametrize.is_parametrized(layer)
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert (layer.weight.abs() <= 0.2).all()


def test_unconstrain_one_plain_tensor_and_the_error_listing():
    layer = nn.Linear(2, 2)
    ps.constrain(layer, "weight", "box(-1, 1)", init="project", method="penalty")
    ps.constrain(layer, "bias", "box(-1, 1)", method="project")
    ps.unconstrain(layer, "weight")
    assert list(ps.constraints(layer)) == ["bias"]
    with pytest.raises(
        ps.ConstraintConflictError,
        match=re.escape("'weight' of Linear carries no paramshape constraint. Constrained tensors: bias"),
    ):
        ps.unconstrain(layer, "weight")


# -------------------------------------------------------------------------------------- patterns
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)
        self.norm = nn.BatchNorm1d(8)
        self.bound = ps.Box(-1, 1)  # a transform used as a layer: its bounds are not targets
        self.register_buffer("scale_lo", torch.ones(8))
        self.register_buffer("scale_hi", torch.ones(8))


def small(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.01)
    return module


def test_patterns_constrain_every_match_at_any_depth():
    net = small(Net())
    ps.constrain(net, {"encoder.*.weight": ps.Box(-1, 1), "*.bias": "box(-1, 1)"})
    assert list(ps.constraints(net)) == [
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
        "head.bias",
        "norm.bias",
    ]
    ps.constrain(net, {"head.weight": "box(-1, 1)", "scale_*": "positive"}, method="reparam")
    assert {"scale_lo", "scale_hi"} <= set(ps.constraints(net))
    # BatchNorm's running statistics are updated in place: a pattern that matches only them, like the
    # name written out, gets the error that says why, and nothing changes.
    with pytest.raises(ps.ConstraintConflictError, match="updates 'running_mean' in place"):
        ps.constrain(net, {"norm.weight": "positive", "norm.running_*": "positive"}, init="project")
    with pytest.raises(ps.ConstraintConflictError, match="updates 'running_mean' in place"):
        ps.constrain(net, {"norm.weight": "positive", "norm.running_mean": "positive"}, init="project")
    assert "norm.weight" not in ps.constraints(net)


def test_patterns_pass_method_and_weight_to_every_match():
    net = small(Net())
    ps.constrain(net, {"*.weight": ps.Box(-1, 1)}, method="penalty", weight=3.0)
    info = ps.constraint_info(net)
    assert set(info) == {"encoder.0.weight", "encoder.2.weight", "head.weight", "norm.weight"}
    assert {(i.method, i.weight) for i in info.values()} == {("penalty", 3.0)}


def test_a_pattern_that_matches_nothing_lists_the_names_and_changes_nothing():
    net = small(Net())
    before = snapshot(net)
    with pytest.raises(ps.TensorNotFoundError) as error:
        ps.constrain(net, {"*.bias": "box(-1, 1)", "decoder.*": "positive"})
    message = str(error.value)
    assert "The pattern 'decoder.*' matches no parameter or buffer of Net." in message
    assert "encoder.0.weight, encoder.0.bias" in message
    assert "bound.low" not in message  # a transform's bounds are not targets
    assert "num_batches_tracked" not in message  # not floating point
    assert_unchanged(net, before)
    assert ps.constraints(net) == {}


def test_overlapping_patterns_are_refused():
    net = small(Net())
    with pytest.raises(ps.SpecError, match=r"'head.bias' is matched by both '\*.bias' and 'head.\*'"):
        ps.constrain(net, {"*.bias": "box(-1, 1)", "head.*": "positive"})


def test_all_or_nothing_when_a_later_tensor_is_infeasible():
    net = small(Net())
    with torch.no_grad():
        net.head.bias.fill_(5.0)
    ps.constrain(net, "encoder.0.weight", ps.Box(-2, 2))  # an existing constraint to keep
    before = snapshot(net)
    with pytest.raises(ps.InfeasibleValueError, match=re.escape("'head.bias' of Net")):
        ps.constrain(net, {"encoder.*": ps.Box(-1, 1), "head.*": ps.Box(-1, 1)}, method="project")
    assert_unchanged(net, before)
    assert repr(ps.constraint_info(net)) == (
        "{'encoder.0.weight': ConstraintInfo(Box(low=-2.0, high=2.0), method='reparam')}"
    )


def test_all_or_nothing_when_applying_fails_half_way(monkeypatch):
    net = small(Net())
    ps.constrain(net, "encoder.0.weight", ps.Box(-2, 2))
    ps.constrain(net, "encoder.0.bias", ps.Box(-2, 2), method="penalty")
    before = snapshot(net)
    module = sys.modules["paramshape.attach.applying"]
    real = module._apply_one
    calls = []

    def failing(root, plan):
        calls.append(plan.ref.path)
        if len(calls) == 4:
            raise RuntimeError("boom")
        real(root, plan)

    monkeypatch.setattr(module, "_apply_one", failing)
    with pytest.raises(RuntimeError, match="boom"):
        ps.constrain(net, {"encoder.*": ps.Box(-1, 1)}, method="project")
    assert len(calls) == 4
    # Values, tensor objects and constraints are back (parametrize's dynamic class may be a new one).
    after = snapshot(net)[1]
    assert after.keys() == before[1].keys()
    for name, (identity, value) in before[1].items():
        assert after[name][0] == identity, name
        torch.testing.assert_close(after[name][1], value, rtol=0, atol=0)
    assert repr(ps.constraint_info(net)) == (
        "{'encoder.0.weight': ConstraintInfo(Box(low=-2.0, high=2.0), method='reparam'), "
        "'encoder.0.bias': ConstraintInfo(Box(low=-2.0, high=2.0), method='penalty', weight=1.0)}"
    )


def test_mapping_and_spec_together_or_missing_spec():
    layer = nn.Linear(2, 2)
    with pytest.raises(ps.SpecError, match="either a tensor name and a spec, or one mapping"):
        ps.constrain(layer, {"*": "positive"}, "positive")
    with pytest.raises(ps.SpecError, match="needs a spec for 'weight'"):
        ps.constrain(layer, "weight")
    with pytest.raises(ps.SpecError, match="empty mapping"):
        ps.constrain(layer, {})


def test_plain_names_in_a_mapping_keep_suggestions():
    layer = nn.Linear(2, 2)
    with pytest.raises(ps.TensorNotFoundError, match="Did you mean 'weight'"):
        ps.constrain(layer, {"wieght": "box(-1, 1)"})


def test_patterns_on_a_shared_module_constrain_it_once():
    shared = small(nn.Linear(2, 2))
    model = nn.Sequential(shared, nn.ReLU(), shared)
    ps.constrain(model, {"*.weight": "box(-1, 1)"})
    assert list(ps.constraints(model)) == ["0.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ps.SpecError, match="name the same tensor"):
            ps.constrain(model, {"0.bias": "box(-1, 1)", "2.bias": "box(-1, 1)"})


def test_a_pattern_string_stands_for_a_one_entry_mapping_in_constrain_and_unconstrain():
    net = small(Net())
    ps.constrain(net, "encoder.*.weight", ps.Box(-1, 1), method="project")
    ps.constrain(net, "*.bias", "box(-1, 1)", method="penalty")
    assert [i.method for i in ps.constraint_info(net).values()] == ["project", "penalty"] * 2 + [
        "penalty"
    ] * 2
    ps.unconstrain(net, "encoder.*")
    assert list(ps.constraints(net)) == ["head.bias", "norm.bias"]
    with pytest.raises(ps.TensorNotFoundError, match=re.escape("The pattern 'encoder.*' matches no")):
        ps.unconstrain(net, "encoder.*")


def test_constraint_info_repr_states_the_largest_multiplier():
    info = ps.ConstraintInfo(
        ps.Box(-1, 1), method="lagrangian", weight=1.0, multiplier=torch.tensor([0.5, -2.0])
    )
    assert repr(info).endswith("method='lagrangian', weight=1.0, max |multiplier|=2)")
    empty = ps.ConstraintInfo(ps.Box(-1, 1), method="lagrangian", weight=1.0, multiplier=torch.zeros(0))
    assert repr(empty).endswith("max |multiplier|=0)"), "no multiplier: the largest is 0"


def test_projection_after_a_dtype_move_uses_the_bounds_at_the_new_precision():
    """module.double() does not reach a plain constraint's transform (not a submodule): the project
    step moves it to the tensor's dtype first, so Box(-0.1, 0.1) clamps at float64's 0.1, not at
    float32's 0.100000001."""
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-0.1, 0.1), method="project", init="sample")
    layer.double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[5.0, -5.0], [0.05, 0.0]], dtype=torch.float64))
    ps.project_(layer)
    assert layer.weight.dtype == torch.float64
    assert layer.weight.tolist() == [[0.1, -0.1], [0.05, 0.0]]


def _outward_steps(box: ps.Transform) -> tuple[nn.Module, Callable[[], None]]:
    layer = ps.constrain(nn.Linear(2, 2, bias=False), "weight", box, method="project", init="sample")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)

    def step() -> None:
        optimizer.zero_grad()
        layer.weight.grad = -100 * torch.ones_like(layer.weight)
        optimizer.step()

    return layer, step


def test_the_project_step_follows_bounds_changed_in_place_and_dtype_moves():
    """The step hook caches its plan (which tensors, which bounds) between steps: a bound written in
    place, or the module moved to another dtype, must rebuild it, not clamp at the old bound."""
    layer, step = _outward_steps(ps.Box(-1.0, 1.0))
    high = ps.constraints(layer)["weight"].high  # read before the steps: no walk over the module after
    step()
    assert layer.weight.max().item() == 1.0
    with torch.no_grad():
        high.fill_(0.5)  # in place: only the buffer's version counter tells
    step()
    assert layer.weight.max().item() == 0.5, "the step clamped at the bound before the in-place write"

    layer, step = _outward_steps(ps.Box(-0.1, 0.1))  # Python numbers: 0.1 at the tensor's precision
    step()
    assert layer.weight.max().item() == torch.tensor(0.1).item()  # float32's 0.100000001
    layer.double()
    step()
    assert layer.weight.dtype == torch.float64
    assert layer.weight.max().item() == 0.1, "the step clamped at float32's 0.1 after module.double()"


def _projecting_layer(box: ps.Transform) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    layer = ps.constrain(nn.Linear(2, 2, bias=False), "weight", box, method="project", init="sample")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)

    def step() -> None:
        optimizer.zero_grad()
        layer.weight.grad = -100 * torch.ones_like(layer.weight)  # every value pushed past the top
        optimizer.step()

    return layer, optimizer, step


def test_the_project_step_reuses_its_plan_while_nothing_changed():
    """The plan (which tensors, which bounds, cast once) is built at the first step and reused:
    rebuilding it at every step would cost what the cache exists to save. Each of its staleness checks
    (dtype, device, shape, bound versions) must say 'unchanged' when nothing changed."""
    _, optimizer, step = _projecting_layer(ps.Box(-torch.ones(2, 1), torch.ones(2, 1)))
    step()
    plan = _state._PLANS[optimizer]
    for _ in range(3):
        step()
        assert _state._PLANS[optimizer] is plan, "the step hook rebuilt a plan that nothing made stale"


def test_the_project_step_follows_both_bounds_changed_in_place():
    """Each bound's own version counter makes the plan stale: with both bounds written in place (not
    one of the two, whose unchanged twin would hide a version check that never fires), the next step
    clamps at the new bounds."""
    layer, _, step = _projecting_layer(ps.Box(-1.0, 1.0))
    box = ps.constraints(layer)["weight"]
    low, high = box.low, box.high
    step()
    assert layer.weight.max().item() == 1.0
    with torch.no_grad():
        low.fill_(-0.5)
        high.fill_(0.5)
    step()
    assert layer.weight.max().item() == 0.5, "the step clamped at the bounds before the in-place writes"


def test_the_project_step_follows_a_parameter_resized_through_data():
    """``param.data = ...`` of another shape keeps the Parameter object (the module still holds it),
    so only the plan's shape check notices: per-row bounds are expanded anew to the new shape."""
    low, high = torch.tensor([[-1.0], [-2.0]]), torch.tensor([[1.0], [2.0]])
    layer, _, step = _projecting_layer(ps.Box(low, high))
    step()
    weight = layer.weight
    with torch.no_grad():
        layer.weight.data = torch.zeros(2, 3)
    assert layer.weight is weight
    step()
    assert torch.equal(layer.weight, high.expand(2, 3)), "the step used bounds expanded to the old shape"


def test_a_constraint_follows_a_tensor_removed_for_a_moment_and_assigned_anew():
    """A projected parameter set to None (weight tying, meta-device initialisation) and then assigned
    anew: walks and steps in between do not fail, and the new tensor is the one projected."""
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1.0, 1.0), method="project")
    layer.weight = None
    ps.project_(layer)  # a walk while the tensor is missing
    assert float(ps.penalty(layer)) == 0.0
    fresh = nn.Parameter(torch.full((2, 2), 0.5))  # a Parameter assigned must lie in the set
    layer.weight = fresh
    with torch.no_grad():
        fresh.fill_(5.0)  # and the one now registered is the one projected
    ps.project_(layer)
    assert layer.weight is fresh
    torch.testing.assert_close(layer.weight, torch.ones(2, 2), rtol=0, atol=0)


def test_the_project_step_clamps_bounds_in_one_pass_without_calling_each_entry(monkeypatch):
    """Clamp-type sets (Box, GreaterThan, LessThan) are projected by the plan's foreach clamps, the
    fast path, not one entry's ``project_`` after another."""

    def refuse(entry):
        raise AssertionError("the step hook projected a Box entry by entry")

    layer, _, step = _projecting_layer(ps.Box(-1.0, 1.0))
    monkeypatch.setattr(_state.PlainConstraint, "project_", refuse)
    step()
    torch.testing.assert_close(layer.weight, torch.ones(2, 2), rtol=0, atol=0)


def test_a_large_tensor_with_two_number_bounds_is_clamped_in_one_pass_like_the_hand_clamp():
    """From _CLAMP_ALONE_ELEMENTS values a tensor whose two bounds are numbers takes one
    clamp_(low, high) of its own (small ones stay in the foreach calls): values pushed past both
    bounds land where the hand clamp puts them, and bounds written in place or a dtype move are
    followed, as on the foreach path."""
    rows = _state._CLAMP_ALONE_ELEMENTS // 64
    layer = ps.constrain(nn.Linear(64, rows), "*", ps.Box(-0.5, 0.25), method="project", init="project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    push = torch.randn(rows, 64, generator=torch.Generator().manual_seed(0)) * 10

    def step_matches_the_hand_clamp(low: float, high: float) -> None:
        weight = layer.weight.detach()
        # The bounds at the tensor's precision, as a Python number means.
        low_t, high_t = torch.tensor(low, dtype=weight.dtype), torch.tensor(high, dtype=weight.dtype)
        expected = torch.minimum(torch.maximum(weight + push.to(weight.dtype), low_t), high_t)
        optimizer.zero_grad()
        layer.weight.grad = -push.to(weight.dtype)
        layer.bias.grad = torch.zeros_like(layer.bias)
        optimizer.step()
        torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=0)
        assert layer.weight.min().item() == low_t.item()
        assert layer.weight.max().item() == high_t.item()

    step_matches_the_hand_clamp(-0.5, 0.25)
    plan = _state._PLANS[optimizer]
    assert [entry[0] for entry in plan.clamped] == [layer.weight]  # the bias stays on foreach
    box = ps.constraints(layer)["weight"]
    with torch.no_grad():
        box.low.fill_(-0.125)
        box.high.fill_(0.0625)
    step_matches_the_hand_clamp(-0.125, 0.0625)
    layer.double()
    step_matches_the_hand_clamp(-0.125, 0.0625)
    assert layer.weight.dtype == torch.float64


def test_the_project_step_takes_in_a_tensor_constrained_after_the_first_step():
    """A constraint added after the optimizer's first step (the plan was built without it) is
    projected at the next step: adding one makes the plan stale."""
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1.0, 1.0), method="project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)

    def step() -> None:
        optimizer.zero_grad()
        (-100 * (layer.weight.sum() + layer.bias.sum())).backward()
        optimizer.step()

    step()
    assert float(layer.bias.detach().max()) > 99
    with torch.no_grad():
        layer.bias.zero_()  # in place: the optimizer still holds this tensor
    bias = layer.bias
    ps.constrain(layer, "bias", ps.Box(-1.0, 1.0), method="project")
    assert layer.bias is bias
    step()
    torch.testing.assert_close(layer.bias, torch.ones(2), rtol=0, atol=0)


def test_the_project_step_follows_a_parameter_swapped_in_the_module_and_its_param_group():
    """A new Parameter put in the module and, in place, in the optimizer's list (as frameworks that
    re-materialise parameters do): the optimizer's lists keep their identity and length, so only the
    plan's check of the tensor each module holds notices; the new tensor is the one projected."""
    layer, optimizer, step = _projecting_layer(ps.Box(-1.0, 1.0))
    step()
    new = nn.Parameter(torch.zeros(2, 2))
    layer.weight = new
    optimizer.param_groups[0]["params"][0] = new
    step()
    assert layer.weight is new
    torch.testing.assert_close(new, torch.ones(2, 2), rtol=0, atol=0)


def test_the_project_step_clamps_at_a_one_sided_tensor_bound():
    """A tensor bound on one side only (per-row GreaterThan) is the plan's tensor path for that side
    alone: values pushed below it are clamped to it."""
    low = torch.tensor([[-1.0], [-2.0]])
    layer = ps.constrain(nn.Linear(2, 2, bias=False), "weight", ps.GreaterThan(low), method="project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    optimizer.zero_grad()
    (100 * layer.weight.sum()).backward()
    optimizer.step()
    torch.testing.assert_close(layer.weight, low.expand(2, 2), rtol=0, atol=0)
