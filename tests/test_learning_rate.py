"""Learning-rate transfer, gradient-friendly initialization and saturation (issue 11).

The reference for "moves by about the learning rate" is a plain parameter: Adam's first step moves
every coordinate by ``lr`` exactly (the step is ``lr * m / sqrt(v)`` with ``m / sqrt(v) = sign(g)``
after one step, bias-corrected), so a map with unit slope at the starting point moves the value by
``lr`` to first order. The maps themselves are checked against float64 closed forms written here
(``c + r tanh(x / r)``, ``s log(1 + e^{x / s})``), not against the library's own functions.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps

LR = 1e-3

# (transform, starting value): the centre of a box, one unit from a one-sided bound.
CENTRES = [
    pytest.param(lambda: ps.Box(-0.01, 0.01), 0.0, id="Box(-0.01, 0.01)"),
    pytest.param(lambda: ps.Box(-100.0, 100.0), 0.0, id="Box(-100, 100)"),
    pytest.param(lambda: ps.Box(2.0, 3.0), 2.5, id="Box(2, 3)"),
    pytest.param(lambda: ps.UnitInterval(), 0.5, id="UnitInterval"),
    pytest.param(lambda: ps.GreaterThan(0.5), 1.5, id="GreaterThan(0.5)"),
    pytest.param(lambda: ps.LessThan(-2.0), -3.0, id="LessThan(-2)"),
    pytest.param(lambda: ps.Positive(), 1.0, id="Positive"),
    pytest.param(lambda: ps.Box(0.0, math.inf), 1.0, id="Box(0, inf)"),
    pytest.param(lambda: ps.SoftClip(-1.0, 1.0), 0.0, id="SoftClip(-1, 1)"),
    pytest.param(lambda: ps.SoftClip(-0.01, 0.01), 0.0, id="SoftClip(-0.01, 0.01)"),
]


def _first_adam_move(transform: ps.Transform | None, start: float, lr: float = LR) -> torch.Tensor:
    """How far one Adam step moves each of four values that start at ``start``, when the loss pushes
    two of them up and two down."""
    holder = nn.Module()
    holder.value = nn.Parameter(torch.full((4,), start, dtype=torch.float64))
    if transform is not None:
        ps.constrain(holder, "value", transform, init="keep")
    before = holder.value.detach().clone()
    optimizer = torch.optim.Adam(holder.parameters(), lr=lr)
    direction = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    (-(direction * holder.value).sum()).backward()
    optimizer.step()
    return (holder.value.detach() - before) * direction


@pytest.mark.parametrize(("make", "start"), CENTRES)
def test_first_adam_step_from_the_centre_moves_the_value_by_about_the_learning_rate(make, start):
    plain = _first_adam_move(None, start)
    torch.testing.assert_close(plain, torch.full((4,), LR, dtype=torch.float64))  # the reference
    moved = _first_adam_move(make().double(), start)
    # Unit slope at the centre (0.98 one unit from a one-sided bound), and a step of 1e-3 of the
    # box's scale bends the map by less than 1%: within 3% of the plain parameter's move.
    assert bool((moved > 0.97 * plain).all() and (moved < 1.03 * plain).all()), moved


def test_the_old_logistic_scale_is_one_argument_away():
    """``slope=(h - l)/4`` is the logistic ``l + (h - l) sigmoid(x)``: 200 times less movement."""
    box = ps.Box(-0.01, 0.01, slope=0.005).double()
    x = torch.linspace(-6.0, 6.0, 13, dtype=torch.float64)
    torch.testing.assert_close(box(x), -0.01 + 0.02 * torch.sigmoid(x))
    moved = _first_adam_move(box, 0.0)
    torch.testing.assert_close(moved, torch.full((4,), 0.005 * LR, dtype=torch.float64), rtol=1e-3, atol=0)


@pytest.mark.parametrize(("low", "high", "slope"), [(-1.0, 1.0, 1.0), (-0.01, 0.01, 1.0), (2.0, 7.0, 0.5)])
def test_box_map_is_the_scaled_tanh(low, high, slope):
    box = ps.Box(torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64), slope=slope)
    centre, radius = (low + high) / 2, (high - low) / 2
    x = torch.linspace(-3 * radius, 3 * radius, 101, dtype=torch.float64)
    expected = centre + radius * torch.tanh(slope * x / radius)
    ulps = 4 * torch.finfo(torch.float64).eps * max(abs(low), abs(high))
    torch.testing.assert_close(box(x), expected, rtol=0, atol=ulps)
    torch.testing.assert_close(box.inverse(expected[1:-1]), x[1:-1], rtol=1e-9, atol=1e-12 * radius)


@pytest.mark.parametrize("softness", [0.25, 1.0, 0.05])
def test_one_sided_map_is_the_scaled_softplus(softness):
    t = ps.GreaterThan(-1.0, softness=softness).double()
    x = torch.linspace(-2.0, 5.0, 71, dtype=torch.float64)
    expected = -1.0 + softness * torch.log1p(torch.exp(x / softness))
    # Distances from the bound agree to 1e-8 relative (softplus turns linear past 20 / softness).
    torch.testing.assert_close(t(x) + 1.0, expected + 1.0, rtol=1e-8, atol=0)
    slope = torch.autograd.functional.jacobian(lambda v: t(v).sum(), x)
    torch.testing.assert_close(slope, 1 - torch.exp(-(expected + 1.0) / softness), rtol=1e-8, atol=1e-12)


def test_softness_is_refused_with_exp_and_must_be_positive():
    with pytest.raises(ps.SpecError, match=r"Positive: softness applies to method='softplus' only"):
        ps.Positive(method="exp", softness=0.5)
    with pytest.raises(ps.SpecError, match=r"GreaterThan: softness must be a positive finite number; got 0"):
        ps.GreaterThan(0.0, softness=0)
    with pytest.raises(ps.SpecError, match=r"Box: slope must be a positive finite number; got -1.0"):
        ps.Box(0.0, 1.0, slope=-1.0)


@pytest.mark.parametrize(
    ("make", "peak_slope"),
    [
        (lambda: ps.Box(-0.01, 0.01), 1.0),
        (lambda: ps.Box(-3.0, 5.0, slope=2.0), 2.0),
        (lambda: ps.Box(1.0, math.inf), 1.0),
        (lambda: ps.Positive(), 1.0),
        (lambda: ps.LessThan(4.0), 1.0),
        (lambda: ps.SoftClip(-1.0, 1.0), 1.0),
    ],
)
def test_init_project_moves_values_where_the_slope_is_a_quarter_of_its_largest(make, peak_slope):
    transform = make().double()
    holder = nn.Module()
    holder.value = nn.Parameter(torch.tensor([-1e6, -50.0, -0.02, 0.02, 50.0, 1e6], dtype=torch.float64))
    outside = ~transform.contains(holder.value.detach())
    with pytest.warns(ps.ParamshapeWarning, match="init='project' moved"):
        ps.constrain(holder, "value", transform, init="project")
    stored = holder.parametrizations.value.original.detach().clone().requires_grad_(True)
    transform(stored).sum().backward()
    slope = stored.grad[outside]
    # INTERIOR_SLOPE = 1/4 of the largest slope, up to the 8-ulp floor and rounding.
    torch.testing.assert_close(slope, torch.full_like(slope, peak_slope / 4), rtol=1e-6, atol=0)
    assert ps.saturation(holder)["value"] == 0.0


def test_wgan_clipping_init_leaves_no_critic_weight_saturated():
    """Issue 11's WGAN critic: default nn.Linear weights, 92% outside Box(-0.01, 0.01)."""
    torch.manual_seed(0)
    critic = nn.Linear(64, 64)
    with pytest.warns(ps.ParamshapeWarning, match="moved"):
        ps.constrain(critic, "weight", ps.Box(-0.01, 0.01), init="project")
    value = critic.weight.detach()
    moved = value.abs() > 0.01 * math.sqrt(3 / 4) - 1e-9  # the moved ones sit at 87% of the half-width
    assert float(moved.double().mean()) > 0.9
    assert float(value[moved].abs().min()) == pytest.approx(0.01 * math.sqrt(3 / 4), rel=1e-6)
    # The values that were inside stay where they were; a few may sit in the outer 0.25%.
    assert ps.saturation(critic)["weight"] < 0.01


def test_saturation_report_counts_values_below_one_percent_of_the_slope():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    ps.constrain(model, "0.weight", ps.Box(-1.0, 1.0))
    ps.constrain(model, "1.bias", ps.Positive(), init="sample")
    ps.constrain(model, "1.weight", ps.Box(-1.0, 1.0), method="project")  # not reparametrised
    # Slope 1 - t^2 < 0.01 beyond t = 0.995 of the half-width: 3 of the 12 values here.
    model[0].weight = torch.tensor(  # shape (4, 3)
        [[0.0, 0.5, 0.99], [0.994, 0.0, 0.5], [0.99, 0.994, 0.996], [-0.999, 0.9999, 0.0]]
    )
    # Positive (softness 1/4): slope 1 - exp(-y / 0.25) < 0.01 below y = 0.0025.
    model[1].bias = torch.tensor([0.002, 1.0])
    report = ps.saturation(model)
    assert dict(report) == {"0.weight": 3 / 12, "1.bias": 0.5}
    assert report.to_dict()["0.weight"] == {
        "fraction": 0.25,
        "saturated": 3,
        "numel": 12,
        "transform": "Box(low=-1.0, high=1.0)",
    }
    text = repr(report)
    assert "  0.weight    25.0% saturated  (3 of 12)  Box(low=-1.0, high=1.0)" in text
    assert "  1.bias      50.0% saturated  (1 of 2)  Positive()" in text


def _train_saturated(steps: int) -> list[warnings.WarningMessage]:
    layer = ps.constrain(nn.Linear(8, 8), "weight", ps.Box(-0.01, 0.01), init="sample")
    layer.weight = torch.full((8, 8), 0.00999)  # slope 0.002 of the centre's
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            layer(torch.randn(2, 8)).sum().backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, ps.SaturationWarning)]


def test_saturation_warning_fires_once_per_tensor_and_points_to_project():
    caught = _train_saturated(250)  # checks at steps 10, 100 and 200
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "100% of weight (ParametrizedLinear.weight) (shape (8, 8), torch.float32)" in message
    assert "method='project'" in message
    assert "ps.set_saturation_warning(False)" in message


def test_saturation_warning_has_an_off_switch():
    previous = ps.set_saturation_warning(False)
    try:
        assert _train_saturated(20) == []
    finally:
        ps.set_saturation_warning(previous)
    assert previous is True


def test_no_saturation_warning_while_values_are_inside():
    layer = ps.constrain(nn.Linear(8, 8), "weight", ps.Box(-1.0, 1.0))
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.SaturationWarning)
        for _ in range(20):
            optimizer.zero_grad()
            layer(torch.randn(2, 8)).sum().backward()
            optimizer.step()


def _drive_saturation(fractions: dict[int, float], steps: int) -> list[warnings.WarningMessage]:
    """Train 100 values of Box(-1, 1) with a zero learning rate, setting before step ``n`` the
    fraction ``fractions[n]`` of them deep in the tail (t = 0.9999, slope 2e-4): the hook sees
    exactly these fractions at its checks (steps 10, 100, 200, ...)."""
    holder = nn.Module()
    holder.value = nn.Parameter(torch.zeros(100))
    ps.constrain(holder, "value", ps.Box(-1.0, 1.0))
    optimizer = torch.optim.SGD(holder.parameters(), lr=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, steps + 1):
            if step in fractions:
                count = round(100 * fractions[step])
                holder.value = torch.cat([torch.full((count,), 0.9999), torch.zeros(100 - count)])
            optimizer.zero_grad()
            holder.value.sum().backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, ps.SaturationWarning)]


def test_saturation_warning_fires_when_a_fifth_is_saturated_and_growing():
    """Below the "most of a tensor" threshold, but growing at each of the last two checks: the
    sign of an optimum on the bound (values keep sliding into the tail), as on a clipped critic."""
    from paramshape.strategies import saturation as module

    assert (module.GROWING_FRACTION, module.GROWING_CHECKS, module.WARN_FRACTION) == (0.2, 2, 0.5)
    caught = _drive_saturation({1: 0.10, 50: 0.22, 150: 0.30}, steps=250)  # checks: 10, 100, 200
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "30% of value (ParametrizedModule.value) (shape (100,), torch.float32)" in message
    assert "and growing (10% at step 10, 22% at step 100, 30% at step 200)" in message
    assert "method='project'" in message
    assert "Box's slope=, the one-sided sets' softness=" in message


@pytest.mark.parametrize(
    "fractions",
    [
        pytest.param({1: 0.40}, id="steady 40%"),
        pytest.param({1: 0.45, 50: 0.30, 150: 0.35}, id="shrank, then grew once"),
        pytest.param({1: 0.05, 50: 0.10, 150: 0.15}, id="growing but under a fifth"),
        pytest.param({1: 0.10, 50: 0.25, 150: 0.25}, id="grew, then stopped"),
    ],
)
def test_no_saturation_warning_for_a_steady_shrinking_or_small_saturated_fraction(fractions):
    assert _drive_saturation(fractions, steps=250) == []
