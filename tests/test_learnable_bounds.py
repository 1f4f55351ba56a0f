"""Learnable bounds (issue 13): ``Box``, ``GreaterThan`` and ``LessThan`` with ``learnable=True``.

The bounds are parameters of the transform module, trained through the map. These tests check the
gradients against a float64 reference written here, training to a known optimum, the ordering rule
(low < high after any finite step), checkpoints, dtype moves, and the refusals."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramshape as ps
from paramshape.strategies.saturation import FIRST_CHECK

F64 = torch.float64


def _box_reference(x, centre, spread, slope=1.0):
    """Box(learnable=True)'s documented map in float64, written without paramshape:
    r = softplus(rho) + eps (1 + |c|) (the floor without gradient), l = c - r, h = c + r,
    f(x) = l + (h - l) sigmoid(4 a x / (h - l))."""
    floor = torch.finfo(centre.dtype).eps * (1 + centre.detach().abs())
    half = F.softplus(spread) + floor
    low, high = centre - half, centre + half
    return low + (high - low) * torch.sigmoid(4 * slope * x / (high - low))


def _constrained(transform, shape=(3, 4), dtype=torch.float32):
    module = nn.Linear(shape[1], shape[0]).to(dtype)
    return ps.constrain(module, "weight", transform, init="sample")


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("slope", [1.0, 0.25])
def test_box_gradients_into_the_bounds_match_a_float64_reference(slope):
    box = ps.Box(torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([1.0, 0.75, 40.0]), slope=slope, learnable=True)
    box = box.double()
    x = torch.tensor([[-3.0, 0.1, 25.0], [0.0, -0.02, -60.0]], dtype=F64)
    weights = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.5, -1.0]], dtype=F64)
    (box(x) * weights).sum().backward()
    centre = box.centre.detach().clone().requires_grad_(True)
    spread = box.spread.detach().clone().requires_grad_(True)
    (_box_reference(x, centre, spread, slope) * weights).sum().backward()
    torch.testing.assert_close(box.centre.grad, centre.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(box.spread.grad, spread.grad, rtol=1e-12, atol=1e-14)
    assert bool((centre.grad.abs() > 0.1).all()), "the value does not depend on the centre; the check is void"


def test_box_gradient_in_the_spread_matches_central_differences():
    box = ps.Box(-1.0, 2.0, learnable=True).double()
    x = torch.linspace(-1.0, 3.0, 7, dtype=F64)  # not symmetric: the width's effect does not cancel
    box(x).sum().backward()
    h = 1e-6

    def total(spread_shift):
        with torch.no_grad():
            probe = copy.deepcopy(box)
            probe.spread.add_(spread_shift)
            return float(probe(x).sum())

    numeric = (total(h) - total(-h)) / (2 * h)
    assert abs(float(box.spread.grad) - numeric) <= 1e-6 * (1 + abs(numeric))
    assert abs(numeric) > 0.1


@pytest.mark.parametrize(
    ("cls", "sign"),
    [(ps.GreaterThan, 1.0), (ps.LessThan, -1.0)],
)
def test_a_learnable_floor_or_ceiling_gets_the_gradient_of_its_map(cls, sign):
    # f = l + s softplus(x / s) (GreaterThan), h - s softplus(-x / s) (LessThan): df/dbound = 1.
    transform = cls(torch.tensor([0.5, -2.0]), learnable=True).double()
    x = torch.tensor([[-5.0, 1.0], [3.0, -0.5], [0.0, 40.0]], dtype=F64)
    weights = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, 1.0]], dtype=F64)
    (transform(x) * weights).sum().backward()
    name = "low" if sign > 0 else "high"
    grad = getattr(transform, name).grad
    torch.testing.assert_close(grad, weights.sum(0), rtol=1e-15, atol=0)


def test_no_nan_in_values_or_gradients_for_any_finite_input():
    for transform in (
        ps.Box(-1.0, 3.0, learnable=True),
        ps.GreaterThan(0.5, learnable=True),
        ps.LessThan(-1.0, learnable=True),
    ):
        x = torch.tensor([-3e38, -1e4, -30.0, -1e-30, 0.0, 1e-30, 30.0, 1e4, 3e38], requires_grad=True)
        y = transform(x)
        y.sum().backward()
        assert bool(torch.isfinite(y).all()), f"{transform!r}: {y}"
        assert bool(torch.isfinite(x.grad).all())
        for parameter in transform.parameters():
            assert bool(torch.isfinite(parameter.grad).all()), f"{transform!r}: {parameter.grad}"


# ----------------------------------------------------------------------- training
def test_box_bounds_trained_to_the_range_of_the_data():
    """The stored values are frozen at 0 and at +-30 (where the map is the centre and, to float64
    precision, the bounds): fitting targets -1, 0.5 and 2 there has the unique optimum low=-1,
    high=2 (centre 0.5, half-width 1.5), which only the bounds can reach."""
    module = ps.constrain(
        nn.Linear(3, 1, bias=False).double(), "weight", ps.Box(-0.2, 0.2, learnable=True), init="sample"
    )
    with torch.no_grad():
        module.parametrizations.weight.original.copy_(torch.tensor([[-30.0, 0.0, 30.0]]))
    box = ps.constraints(module)["weight"]
    target = torch.tensor([[-1.0, 0.5, 2.0]], dtype=F64)
    optimizer = torch.optim.Adam(box.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        ((module.weight - target) ** 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(box.low.detach(), torch.tensor(-1.0, dtype=F64), rtol=0, atol=1e-4)
    torch.testing.assert_close(box.high.detach(), torch.tensor(2.0, dtype=F64), rtol=0, atol=1e-4)


def test_a_learnable_floor_trained_with_the_model_reaches_its_closed_form_optimum():
    """With the stored tensor frozen, loss mean((l + s softplus(x/s) - 3)^2) is minimised at
    l* = 3 - mean(s softplus(x/s))."""
    module = ps.constrain(
        nn.Linear(4, 1, bias=False).double(), "weight", ps.GreaterThan(0.0, learnable=True), init="sample"
    )
    raw = module.parametrizations.weight.original
    raw.requires_grad_(False)
    floor = ps.constraints(module)["weight"].low
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    assert [p is floor for p in optimizer.param_groups[0]["params"]] == [True]
    for _ in range(100):
        optimizer.zero_grad()
        ((module.weight - 3.0) ** 2).mean().backward()
        optimizer.step()
    expected = 3.0 - float((0.25 * F.softplus(raw / 0.25)).mean())
    assert abs(float(floor.detach()) - expected) < 1e-9


# ------------------------------------------------------------------- the ordering rule
@pytest.mark.parametrize("lr", [1e3, 1e30])
def test_low_stays_below_high_under_hostile_steps(lr):
    """Steps that shrink the width as hard as they can (SGD at a huge learning rate on the width,
    then Adam pushing the bounds to cross) leave low < high, with finite values and gradients."""
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    box = ps.constraints(module)["weight"]
    optimizer = torch.optim.SGD(box.parameters(), lr=lr)
    for _ in range(3):
        optimizer.zero_grad()
        (box.high - box.low).sum().backward()
        optimizer.step()
        assert bool((box.low < box.high).all()), f"{box!r}"
        assert bool(torch.isfinite(module.weight).all())
    adam = torch.optim.Adam(box.parameters(), lr=10.0)
    for _ in range(50):
        adam.zero_grad()
        (box.high - box.low + module.weight.sum()).backward()
        adam.step()
        assert bool((box.low < box.high).all()), f"{box!r}"
    x = torch.tensor([-1e4, 0.0, 1e4], requires_grad=True)
    y = box(x)
    y.sum().backward()
    assert bool(torch.isfinite(y).all())
    assert bool(torch.isfinite(x.grad).all())
    assert bool(box.contains(module.weight).all())


def test_a_step_that_leaves_the_bounds_non_finite_is_refused_at_the_next_read():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    box = ps.constraints(module)["weight"]
    with torch.no_grad():
        box.centre.fill_(float("inf"))
    with pytest.raises(
        ps.SpecError,
        match=r"'weight' of Linear \(shape \(3, 4\), float32\): the learnable bounds of Box.* are no longer valid: Box: 'low' is nan.*must stay finite",
    ):
        module.weight  # noqa: B018


def test_a_learnable_box_narrower_than_its_floor_is_refused():
    with pytest.raises(ps.SpecError, match=r"half-width .* above eps"):
        ps.Box(1.0, 1.0 + 1e-7, learnable=True)
    with pytest.raises(ps.SpecError, match="learnable must be True or False"):
        ps.Box(0.0, 1.0, learnable=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- wiring through constrain
def test_the_bounds_are_parameters_of_the_model_exactly_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    ps.constrain(model, "*.weight", ps.Box(-1.0, 1.0, learnable=True))
    names = [name for name, _ in model.named_parameters()]
    bounds = [name for name in names if name.endswith((".centre", ".spread"))]
    assert bounds == [
        "0.parametrizations.weight.0.centre",
        "0.parametrizations.weight.0.spread",
        "1.parametrizations.weight.0.centre",
        "1.parametrizations.weight.0.spread",
    ]
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    # An optimizer built after constrain trains them: one step moves both tensors' bounds apart.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("centre")}
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    after = model.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in before.items())


def test_spec_string_and_constraints_listing():
    module = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1, learnable=True)")
    assert repr(ps.constraints(module)["weight"]) == "Box(low=-1.0, high=1.0, learnable=True)"
    assert ps.constraint_info(module)["weight"].method == "reparam"
    floor = ps.constrain(nn.Linear(2, 2), "bias", "greater_than(-5, learnable=True)")
    assert [n for n, _ in floor.named_parameters()][-1] == "parametrizations.bias.0.low"


@pytest.mark.parametrize("method", ["project", "penalty"])
def test_methods_that_give_the_bounds_no_gradient_are_refused(method):
    module = nn.Linear(2, 2)
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(
        ps.SpecError, match=rf"has learnable bounds.*method='{method}'.*never give them a gradient"
    ):
        ps.constrain(module, "weight", ps.Box(-1.0, 1.0, learnable=True), method=method)
    assert not ps.constraints(module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(ps.SpecError, match=r"learnable bounds; fold=True"):
        ps.constrain(module, "weight", ps.Box(-1.0, 1.0, learnable=True), fold=True)
    assert not ps.constraints(module)


def test_assigning_a_learnable_bound_is_refused_and_changes_nothing():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    box = ps.constraints(module)["weight"]
    with pytest.raises(
        ps.SpecError, match=r"'low' of Box\(low=-1.0, high=1.0, learnable=True\) is learnable"
    ):
        box.low = 0.5
    assert float(box.low.detach()) == -1.0


def test_in_place_writes_to_the_parameters_take_effect_without_a_false_alarm():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    box = ps.constraints(module)["weight"]
    module.weight  # noqa: B018
    with torch.no_grad():
        box.centre.add_(10.0)
    assert bool(((module.weight > 8.0) & (module.weight < 12.0)).all())
    assert bool(box.contains(module.weight).all())


def test_saturation_and_functional_call():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    report = ps.saturation(module)
    assert "weight" in report.to_dict()
    box = ps.constraints(module)["weight"]
    params = dict(module.named_parameters())
    centre = torch.tensor(5.0, requires_grad=True)
    params["parametrizations.weight.0.centre"] = centre
    out = torch.func.functional_call(module, params, (torch.ones(1, 4),))
    out.sum().backward()
    assert centre.grad is not None
    assert float(centre.grad) != 0.0
    assert float(box.centre.detach()) == 0.0  # the module's own parameter is untouched


# ------------------------------------------------------------------- checkpoints and moves
def test_checkpoint_round_trip_restores_trained_bounds():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        module(torch.ones(2, 4)).pow(2).sum().backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    target = _constrained(ps.Box(-3.0, 7.0, learnable=True))
    target.load_state_dict(torch.load(buffer))
    assert torch.equal(target.weight, module.weight)
    source_box, target_box = ps.constraints(module)["weight"], ps.constraints(target)["weight"]
    assert torch.equal(source_box.low, target_box.low)
    assert torch.equal(source_box.high, target_box.high)


def test_a_checkpoint_with_invalid_learnable_bounds_loads_nothing():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    state = module.state_dict()
    before = copy.deepcopy(state)
    bad = dict(state)
    bad["parametrizations.weight.0.centre"] = torch.tensor(float("nan"))
    with pytest.raises(ps.SpecError, match=r"'low' is nan.*Nothing was loaded"):
        module.load_state_dict(bad)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_plain_state_dict_leaves_the_bounds_out_and_loads_keeping_the_current_ones():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    plain = ps.plain_state_dict(module)
    assert sorted(plain) == ["bias", "weight"]
    target = _constrained(ps.Box(-2.0, 2.0, learnable=True))
    target.load_state_dict(plain)
    torch.testing.assert_close(target.weight, module.weight)
    assert float(ps.constraints(target)["weight"].high.detach()) == pytest.approx(2.0)


def test_a_dtype_move_keeps_the_bounds_and_the_parameter_objects():
    module = _constrained(ps.Box(-1.0, 3.0, learnable=True))
    box = ps.constraints(module)["weight"]
    centre = box.centre
    module.double()
    assert box.centre is centre
    assert centre.dtype == F64
    assert box.spread.dtype == F64
    assert float(box.low.detach()) == pytest.approx(-1.0, abs=2e-7)
    assert float(box.high.detach()) == pytest.approx(3.0, abs=4e-7)
    assert module.weight.dtype == F64
    wide = _constrained(ps.Box(-1e5, 1e5, learnable=True))
    before = copy.deepcopy(wide.state_dict())
    with pytest.raises(ps.SpecError, match=r"learnable bounds"):
        wide.half()
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())


def test_infinite_learnable_bounds_are_refused():
    with pytest.raises(ps.SpecError, match=r"Box: 'high' is inf at \[\]; learnable bounds must stay finite"):
        ps.Box(0.0, float("inf"), learnable=True)
    with pytest.raises(ps.SpecError, match=r"GreaterThan: 'low' is -inf"):
        ps.GreaterThan(-float("inf"), learnable=True)


def test_per_row_learnable_bounds_on_a_tensor_checked_in_blocks():
    """Above 2**18 entries membership and the inverse run a block of rows at a time; bounds computed
    from parameters are not sliced there, so the whole tensor is one block, with the same answers."""
    rows, cols = 600, 500
    low = torch.linspace(-2.0, -1.0, rows).reshape(rows, 1)
    module = ps.constrain(nn.Linear(cols, rows), "weight", ps.Box(low, low + 3.0, learnable=True))
    box = ps.constraints(module)["weight"]
    value = (low + 0.5).expand(rows, cols).clone()
    module.weight = value
    torch.testing.assert_close(module.weight.detach(), value, rtol=0, atol=1e-5)
    outside = value.clone()
    outside[599, 7] = 5.0
    with pytest.raises(ps.InfeasibleValueError, match=r"1 of 300000 values lie outside .* at \[599, 7\]"):
        module.weight = outside
    assert bool(box.contains(module.weight).all())


def test_a_pickled_model_keeps_its_learnable_bounds():
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    with torch.no_grad():
        ps.constraints(module)["weight"].centre.add_(0.25)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.weight, module.weight)
    assert repr(ps.constraints(loaded)["weight"]) == "Box(low=-0.75, high=1.25, learnable=True)"
    assert len(list(loaded.parameters())) == len(list(module.parameters()))


def test_the_saturation_warning_does_not_advise_a_refused_method():
    """Values frozen in the flat tails: the warning fires on the first check, and for learnable
    bounds points to fixed ones for method='project' (refused with learnable bounds)."""
    module = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    with torch.no_grad():
        module.parametrizations.weight.original.fill_(50.0)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)

    def steps() -> None:
        for _ in range(FIRST_CHECK):
            optimizer.zero_grad()
            module(torch.ones(1, 4)).sum().backward()
            optimizer.step()

    with pytest.warns(
        ps.SaturationWarning, match=r"use fixed bounds with method='project' \(learnable bounds"
    ):
        steps()


def test_compiled_reads_train_the_bounds_as_eager_ones():
    eager = _constrained(ps.Box(-1.0, 1.0, learnable=True))
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager")
    x = torch.ones(2, 4)
    for model, call in ((eager, eager), (compiled_module, compiled)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            call(x).square().sum().backward()
            optimizer.step()
    low = ps.constraints(eager)["weight"].low.detach()
    assert float(low) != -1.0
    torch.testing.assert_close(ps.constraints(compiled_module)["weight"].low.detach(), low)
    torch.testing.assert_close(compiled_module.weight.detach(), eager.weight.detach())


def test_a_learnable_box_as_an_output_layer_trains_its_bounds():
    model = nn.Sequential(nn.Linear(4, 2), ps.Box(-2.0, 3.0, learnable=True))
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.centre", "1.spread"]
    model(torch.randn(3, 4)).sum().backward()
    assert float(model[1].centre.grad) == pytest.approx(6.0)  # d(sum of 6 outputs)/dc: 1 each
    bounded = ps.bound_output(nn.Linear(4, 2), ps.Box(-1.0, 1.0, learnable=True))
    assert [name for name, _ in bounded.named_parameters()][-2:] == [
        "output_bound.centre",
        "output_bound.spread",
    ]


def test_an_optimizer_resumes_with_learnable_bounds():
    """The optimizer-resume check names the bounds' parameters apart from the tensor they bound
    (``weight.0.centre``, not ``weight``), and a resumed run steps without a false alarm."""

    def start():
        torch.manual_seed(0)
        module = ps.constrain(nn.Linear(4, 3), "weight", ps.Box(-1.0, 1.0, learnable=True))
        return module, torch.optim.Adam(module.parameters(), lr=0.1)

    def step(module, optimizer):
        optimizer.zero_grad()
        module(torch.ones(2, 4)).square().sum().backward()
        optimizer.step()

    module, optimizer = start()
    step(module, optimizer)
    saved_module, saved_optimizer = copy.deepcopy(module.state_dict()), copy.deepcopy(optimizer.state_dict())
    step(module, optimizer)
    resumed, resumed_optimizer = start()
    resumed.load_state_dict(saved_module)
    resumed_optimizer.load_state_dict(saved_optimizer)
    step(resumed, resumed_optimizer)
    torch.testing.assert_close(resumed.weight, module.weight)
    box, resumed_box = ps.constraints(module)["weight"], ps.constraints(resumed)["weight"]
    torch.testing.assert_close(resumed_box.low.detach(), box.low.detach())
