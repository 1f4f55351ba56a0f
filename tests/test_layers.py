"""Bounded outputs, every way: smooth transforms as layers, HardClamp (straight-through too),
BoundedReLU, softplus instead of ReLU, simplex outputs, and TemperatureSoftmax."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramshape as ps

WILD = torch.tensor([-1e4, -5.0, -1.0, -0.3, 0.0, 0.3, 1.0, 5.0, 1e4])


# ------------------------------------------------------------------------------------- HardClamp
def test_hard_clamp_bounds_values_and_stops_gradients_beyond_the_bounds():
    x = WILD.clone().requires_grad_(True)
    y = ps.HardClamp(-1, 1)(x)
    assert torch.equal(y.detach(), torch.clamp(WILD, -1, 1))
    y.sum().backward()
    inside = (WILD >= -1) & (WILD <= 1)  # torch.clamp passes the gradient on the bound itself
    assert torch.equal(x.grad, inside.float())


def test_straight_through_clamp_keeps_values_bounded_and_gradients_whole():
    x = WILD.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, len(WILD))
    y = ps.HardClamp(-1, 1, straight_through=True)(x)
    assert torch.equal(y.detach(), torch.clamp(WILD, -1, 1))
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_straight_through_lets_a_saturated_output_learn_back():
    """A policy whose output sits beyond the bound: the plain clamp freezes it, ST pulls it back."""
    results = {}
    for straight_through in (False, True):
        layer = nn.Linear(1, 1)
        with torch.no_grad():
            layer.weight.fill_(0.0)
            layer.bias.fill_(3.0)  # output 3, clamped to 1
        head = nn.Sequential(layer, ps.HardClamp(-1, 1, straight_through=straight_through))
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
        for _ in range(100):
            optimizer.zero_grad()
            (head(torch.ones(1, 1)) - 0.5).square().sum().backward()
            optimizer.step()
        results[straight_through] = head(torch.ones(1, 1)).item()
    assert results[False] == 1.0  # stuck at the bound: no gradient ever arrived
    assert results[True] == pytest.approx(0.5, abs=1e-3)


def test_straight_through_with_infinite_inputs_and_broadcast_bounds():
    high = torch.tensor([1.0, 2.0, 3.0])
    clamp = ps.HardClamp(-high, high, straight_through=True)
    x = torch.tensor([[math.inf, -math.inf, 0.5]] * 2, requires_grad=True)
    y = clamp(x)
    assert torch.equal(y.detach(), torch.tensor([[1.0, -2.0, 0.5]] * 2))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0, 1.0]] * 2))  # no gradient for infinities
    # Bounds larger than the input: the gradient is summed back to the input's shape.
    wide = ps.HardClamp(torch.full((4, 3), -1.0), 1.0, straight_through=True)
    z = torch.zeros(3, requires_grad=True)
    wide(z).sum().backward()
    assert torch.equal(z.grad, torch.full((3,), 4.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_hard_clamp_follows_the_input_dtype(dtype):
    for straight_through in (False, True):
        y = ps.HardClamp(-1.0, 2.0, straight_through=straight_through)(WILD.to(dtype))
        assert y.dtype == dtype
        assert ((y >= -1) & (y <= 2)).all()


def test_hard_clamp_settings_are_buffers_and_validated():
    clamp = ps.HardClamp(-1.0, 1.0, straight_through=True)
    assert set(clamp.state_dict()) == {"low", "high"}
    assert repr(clamp) == "HardClamp(low=-1.0, high=1.0, straight_through=True)"
    assert clamp.double().low.dtype == torch.float64
    with pytest.raises(ps.SpecError, match="low < high"):
        ps.HardClamp(1.0, 1.0)
    with pytest.raises(ps.SpecError, match="NaN"):
        ps.HardClamp(float("nan"), 1.0)


def test_hard_clamp_is_the_box_projection():
    x = 3 * torch.randn(50)
    assert torch.equal(ps.HardClamp(-1, 2)(x), ps.Box(-1, 2).project(x))


def test_hard_clamp_compiles_without_graph_breaks():
    for straight_through in (False, True):
        clamp = ps.HardClamp(-1, 1, straight_through=straight_through)
        torch.compiler.reset()
        compiled = torch.compile(clamp, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(WILD), torch.clamp(WILD, -1, 1))


# ---------------------------------------------------------------------- BoundedReLU and friends
def test_bounded_relu_is_relu6_and_per_feature_caps():
    x = 4 * torch.randn(100)
    assert torch.equal(ps.BoundedReLU(6.0)(x), F.relu6(x))
    caps = torch.tensor([1.0, 2.0])
    y = ps.BoundedReLU(caps)(torch.full((3, 2), 10.0))
    assert torch.equal(y, caps.expand(3, 2))
    assert repr(ps.BoundedReLU(6.0)) == "BoundedReLU(high=6.0)"
    with pytest.raises(ps.SpecError):
        ps.BoundedReLU(0.0)
    with pytest.raises(ps.SpecError):
        ps.BoundedReLU(-1.0)


def test_softplus_output_has_no_dead_zone_unlike_relu():
    x = torch.full((4,), -3.0, requires_grad=True)
    torch.relu(x).sum().backward()
    assert (x.grad == 0).all()  # ReLU: dead for negative pre-activations
    x.grad = None
    y = ps.Positive()(x)
    assert (y > 0).all()
    y.sum().backward()
    assert (x.grad > 0).all()


def test_simplex_and_box_outputs_as_layers():
    probabilities = nn.Sequential(nn.Linear(5, 4), ps.Simplex(dim=-1))(torch.randn(3, 5))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
    bounded = nn.Sequential(nn.Linear(5, 4), ps.Box(-2, 3))(100 * torch.randn(3, 5))
    assert ((bounded >= -2) & (bounded <= 3)).all()


def test_soft_clip_output_is_the_identity_inside_and_bounded_outside():
    clip = ps.SoftClip(-1.0, 1.0)
    x = torch.tensor([-100.0, -0.5, 0.0, 0.5, 100.0], requires_grad=True)
    y = clip(x)
    torch.testing.assert_close(y[1:4], x[1:4], rtol=0, atol=1e-4)
    assert (y.abs() <= 1).all()
    y.sum().backward()
    torch.testing.assert_close(x.grad[1:4], torch.ones(3), rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "layer",
    [
        ps.Box(-1, 1),
        ps.SoftClip(-1, 1),
        ps.HardClamp(-1, 1),
        ps.HardClamp(-1, 1, straight_through=True),
        nn.Tanh(),
    ],
    ids=repr,
)
def test_bound_output_accepts_every_output_layer(layer):
    policy = ps.bound_output(nn.Linear(4, 2), layer)
    assert policy.output_bound is not layer
    assert repr(policy.output_bound) == repr(layer)
    assert (policy(100 * torch.randn(8, 4)).abs() <= 1).all()


# --------------------------------------------------------------------------- TemperatureSoftmax
def test_temperature_softmax_matches_softmax_of_scaled_logits():
    head = ps.TemperatureSoftmax(dim=0, init=0.5)
    x = torch.randn(4, 3)
    torch.testing.assert_close(head(x), torch.softmax(x / 0.5, dim=0))
    log_head = ps.TemperatureSoftmax(init=3.0, bounds=(0.1, 10.0), log=True)
    torch.testing.assert_close(log_head(x), torch.log_softmax(x / 3.0, dim=-1))
    assert repr(ps.constraints(head)) == "{'temperature': Positive()}"
    assert repr(ps.constraints(log_head)) == "{'temperature': Box(low=0.1, high=10.0)}"


def test_the_temperature_learns_and_stays_in_its_bounds():
    # Targets are one-hot: the loss keeps asking for a sharper distribution, i.e. T -> 0.
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    target = x.argmax(-1)
    head = ps.TemperatureSoftmax(init=1.0, bounds=(0.2, 5.0), log=True)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        F.nll_loss(head(x), target).backward()
        optimizer.step()
        assert 0.2 <= head.temperature.item() <= 5.0
    assert head.temperature.item() < 0.3
    assert torch.isfinite(head.parametrizations.temperature.original.grad).all()


def test_project_temperature_is_clamped_like_clips_logit_scale():
    head = ps.TemperatureSoftmax(init=1.0, bounds=(0.2, 5.0), method="project")
    assert ps.constraint_info(head)["temperature"].method == "project"
    optimizer = torch.optim.SGD(head.parameters(), lr=100.0)
    x = torch.randn(16, 4)
    F.nll_loss(torch.log(head(x)), x.argmax(-1)).backward()
    optimizer.step()
    assert head.temperature.detach() == torch.tensor(0.2)


def test_large_logits_and_half_inputs_stay_finite():
    head = ps.TemperatureSoftmax(init=0.01)
    x = torch.tensor([[1e30, 0.0, -1e30]], requires_grad=True)
    y = head(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.detach(), torch.tensor([[1.0, 0.0, 0.0]]))
    y[0, 0].backward()
    assert torch.isfinite(x.grad).all()
    half = head(torch.randn(2, 3).half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float().sum(-1), torch.ones(2), rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": 0.0}, "init must be a positive finite temperature"),
        ({"init": float("inf")}, "init must be a positive finite temperature"),
        ({"bounds": (1.0, 0.5)}, "0 <= low < high"),
        ({"bounds": (-1.0, 2.0)}, "0 <= low < high"),
        ({"bounds": "tight"}, "pair"),
        ({"init": 3.0, "bounds": (0.1, 2.0)}, "init=3.0 lies outside bounds"),
        ({"init": 0.1, "bounds": (0.1, 2.0)}, "init=0.1 lies outside bounds"),
        ({"method": "project"}, "without bounds"),
        ({"method": "project", "bounds": (0.0, 1.0), "init": 0.5}, "low > 0"),
        ({"dim": 1.5}, "dim must be an integer"),
    ],
)
def test_temperature_softmax_rejects_bad_settings(kwargs, message):
    with pytest.raises(ps.SpecError, match=message):
        ps.TemperatureSoftmax(**kwargs)


def test_a_temperature_head_through_bound_output_trains_with_the_model():
    classifier = ps.bound_output(nn.Linear(3, 4), ps.TemperatureSoftmax(bounds=(0.1, 10.0)))
    names = [name for name, _ in classifier.named_parameters()]
    assert names == ["weight", "bias", "output_bound.parametrizations.temperature.original"]
    torch.testing.assert_close(classifier(torch.randn(5, 3)).sum(-1), torch.ones(5))
    assert list(ps.constraints(classifier)) == ["output_bound.temperature"]
    clone = copy.deepcopy(classifier)
    assert clone.output_bound.temperature.item() == pytest.approx(1.0)


def test_output_layers_compile_without_graph_breaks():
    x = torch.randn(4, 3)
    for layer in (ps.BoundedReLU(2.0), ps.TemperatureSoftmax(init=0.5, bounds=(0.1, 5.0))):
        torch.compiler.reset()
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x))
