"""clip_grad: per-tensor gradient clipping through tensor hooks, composing with constraints."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps


def big_backward(module: nn.Module, scale: float = 1000.0) -> None:
    (scale * module(torch.ones(2, module.in_features))).sum().backward()


def test_max_norm_rescales_large_gradients_and_leaves_small_ones():
    layer = ps.clip_grad(nn.Linear(4, 3), "weight", max_norm=1.0)
    reference = copy.deepcopy(layer)
    ps.clip_grad(reference, "weight")  # removed on the copy: the unclipped gradient
    big_backward(layer)
    big_backward(reference)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(1.0))
    direction = reference.weight.grad / reference.weight.grad.norm()
    torch.testing.assert_close(layer.weight.grad, direction)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)  # other tensors untouched
    layer.zero_grad()
    reference.zero_grad()
    big_backward(layer, scale=1e-3)
    big_backward(reference, scale=1e-3)
    assert reference.weight.grad.norm() < 1.0
    # Below max_norm the gradient is the unclipped one, bit for bit (not scaled up towards the cap).
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=0, atol=0)


def test_agrees_with_torch_per_tensor_clipping_for_one_backward():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    hooked = ps.clip_grad(nn.Linear(5, 3), "weight", max_norm=0.5, max_value=0.2)
    plain = copy.deepcopy(hooked)
    ps.clip_grad(plain, "weight")
    (hooked(x) ** 3).sum().backward()
    (plain(x) ** 3).sum().backward()
    torch.nn.utils.clip_grad_value_([plain.weight], 0.2)
    torch.nn.utils.clip_grad_norm_([plain.weight], 0.5)
    torch.testing.assert_close(hooked.weight.grad, plain.weight.grad)


def test_each_backward_is_clipped_on_its_own():
    """Unlike clip_grad_norm_ on the accumulated .grad, the hook clips each backward's gradient."""
    layer = ps.clip_grad(nn.Linear(4, 1), "weight", max_norm=1.0)
    big_backward(layer)
    big_backward(layer)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(2.0))


def test_the_hook_goes_on_the_stored_tensor_of_a_reparametrized_one_in_either_order():
    for order in ("clip first", "constrain first"):
        layer = nn.Linear(4, 3)
        with torch.no_grad():
            layer.weight.mul_(0.1)
        if order == "clip first":
            ps.clip_grad(layer, "weight", max_value=1e-3)
        ps.constrain(layer, "weight", ps.Box(-1, 1))
        if order == "constrain first":
            ps.clip_grad(layer, "weight", max_value=1e-3)
        big_backward(layer)
        stored = layer.parametrizations.weight.original
        assert stored.grad.abs().max() == pytest.approx(1e-3)
        ps.unconstrain(layer)
        layer.zero_grad()
        big_backward(layer)
        assert layer.weight.grad.abs().max() == pytest.approx(1e-3)  # same Parameter, same hook


def test_composes_with_project_and_a_step_stays_feasible():
    layer = ps.constrain(nn.Linear(4, 3), "weight", ps.Box(-0.5, 0.5), init="project", method="project")
    ps.clip_grad(layer, "weight", max_norm=0.1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = layer.weight.detach().clone()
    big_backward(layer)
    optimizer.step()
    step = (layer.weight.detach() - before).norm()
    assert step <= 0.1 + 1e-6
    assert (layer.weight.abs() <= 0.5).all()


def test_calling_again_replaces_and_none_removes():
    layer = nn.Linear(4, 1)
    ps.clip_grad(layer, "weight", max_norm=1.0)
    ps.clip_grad(layer, "weight", max_norm=2.0)
    assert len(layer.weight._backward_hooks) == 1
    big_backward(layer)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(2.0))
    ps.clip_grad(layer, "weight")
    assert not layer.weight._backward_hooks
    assert "_paramshape_state" not in layer.__dict__
    ps.clip_grad(layer, "bias")  # nothing to remove: no error


def test_copies_and_pickles_keep_clipping_without_warnings():
    layer = ps.clip_grad(nn.Linear(4, 1), "weight", max_norm=1.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.save(layer, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        assert copied.weight is not layer.weight
        assert len(copied.weight._backward_hooks) == 1
        big_backward(copied)
        torch.testing.assert_close(copied.weight.grad.norm(), torch.tensor(1.0))


def test_bad_arguments():
    layer = nn.Linear(2, 2)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ps.SpecError, match="must be a positive finite number or None"):
            ps.clip_grad(layer, "weight", max_norm=bad)
    layer.bias.requires_grad_(False)
    with pytest.raises(ps.UnsupportedTensorError, match="'bias' of Linear does not require gradients"):
        ps.clip_grad(layer, "bias", max_value=1.0)
    with pytest.raises(ps.TensorNotFoundError):
        ps.clip_grad(layer, "wieght", max_value=1.0)


def test_a_pattern_clips_every_match_on_its_own():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    ps.clip_grad(model, "*.weight", max_norm=0.5)
    (1000 * model(torch.ones(2, 4))).sum().backward()
    for layer in (model[0], model[2]):
        torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(0.5))
    assert model[2].bias.grad.norm() > 0.5
    model[0].weight.requires_grad_(False)
    with pytest.raises(ps.UnsupportedTensorError, match=r"'0\.weight' of Sequential"):
        ps.clip_grad(model, "*.weight", max_value=1.0)
    assert len(model[2].weight._backward_hooks) == 1  # nothing changed
    ps.clip_grad(model, "*.weight")
    assert not model[2].weight._backward_hooks


def test_a_clip_follows_a_tensor_removed_for_a_moment_and_assigned_anew():
    """Weight tying and meta-device initialisation set a parameter to None, then assign a new one: a
    walk over the module in between must not drop the clip, which moves to the new tensor."""
    layer = ps.clip_grad(nn.Linear(4, 3), "bias", max_norm=1.0)
    layer.bias = None
    assert ps.constraints(layer) == {}  # a walk over the module while the tensor is missing
    layer.bias = nn.Parameter(torch.zeros(3))
    ps.constraints(layer)  # the walk that moves the clip to the new tensor
    big_backward(layer)
    torch.testing.assert_close(layer.bias.grad.norm(), torch.tensor(1.0))
