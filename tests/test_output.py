"""Bounded outputs: a transform as a layer, and bound_output on an existing module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps


def test_transform_as_the_last_layer():
    head = nn.Sequential(nn.Linear(16, 2), ps.Box(-2, 3))
    out = head(100 * torch.randn(32, 16))
    assert ((out >= -2) & (out <= 3)).all()


def test_bound_output_keeps_outputs_in_the_box_and_gradients_alive():
    policy = nn.Linear(4, 2)
    ps.bound_output(policy, ps.Box(-1, 1))
    x = 50 * torch.randn(64, 4)
    out = policy(x)
    assert (out.abs() <= 1).all()
    out.sum().backward()
    assert policy.weight.grad.abs().sum() > 0


def test_clamping_the_output_instead_kills_the_gradient():
    """The comparison that motivates the smooth map: outside the bounds clamp's gradient is 0."""
    policy = nn.Linear(1, 1)
    with torch.no_grad():
        policy.weight.fill_(10.0)
    x = torch.ones(1, 1)
    policy(x).clamp(-1, 1).sum().backward()
    assert policy.weight.grad.item() == 0.0
    policy.zero_grad()
    ps.bound_output(policy, ps.Box(-1, 1))
    policy(x).sum().backward()
    assert policy.weight.grad.item() != 0.0


def test_bound_output_is_replaced_and_removed():
    module = nn.Linear(3, 3)
    ps.bound_output(module, "box(-1, 1)")
    ps.bound_output(module, "positive")
    assert len(module._forward_hooks) == 1
    assert repr(module.output_bound) == "Positive()"
    assert (module(torch.randn(5, 3)) > 0).all()
    ps.bound_output(module, None)
    assert not module._forward_hooks
    assert not hasattr(module, "output_bound")


def test_bound_output_follows_the_module_dtype_and_state_dict():
    module = ps.bound_output(nn.Linear(3, 3), ps.Box(-1, 1)).double()
    assert module(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    # The bounds are part of the code, not of checkpoints (tests/test_user_intent.py).
    assert list(module.state_dict()) == ["weight", "bias"]
    assert module.output_bound.low.dtype == torch.float64


def test_simplex_outputs():
    classifier = ps.bound_output(nn.Linear(5, 4), ps.Simplex(dim=-1))
    torch.testing.assert_close(classifier(torch.randn(3, 5)).sum(-1), torch.ones(3))


def test_non_tensor_outputs_get_a_clear_error():
    lstm = ps.bound_output(nn.LSTM(2, 3), ps.Box(-1, 1))
    with pytest.raises(ps.UnsupportedTensorError, match="LSTM returned tuple, not a tensor"):
        lstm(torch.randn(4, 1, 2))


def test_unconstrain_keeps_output_bounds():
    module = ps.bound_output(nn.Linear(3, 3), ps.Box(-1, 1))
    ps.constrain(module, "weight", "box(-1, 1)", init="project")
    x = 10 * torch.randn(4, 3)
    expected = module(x)
    ps.unconstrain(module)
    torch.testing.assert_close(module(x), expected)
