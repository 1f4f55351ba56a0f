"""The short paths that keep a constraint's fixed cost low give the same results as the long ones.

``lookup.modules.fast_read`` replaces parametrize's getter of a constrained tensor by one that calls
the transform directly; it must fall back to parametrize's own whenever that would do something else.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _reference(layer: nn.Linear) -> torch.Tensor:
    """The value computed by hand from the stored tensor, the independent reference."""
    chain = layer.parametrizations.weight
    return chain[0].forward(chain.original)


def test_a_constrained_read_takes_the_short_getter_and_matches_the_map_and_its_gradient():
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1.0, 1.0))
    getter = type(layer).__dict__["weight"].fget
    assert getattr(getter, "_paramshape_fast", False)
    assert torch.equal(layer.weight, _reference(layer))
    original = layer.parametrizations.weight.original
    (layer.weight * torch.arange(6.0).view(2, 3)).sum().backward()
    reference = original.detach().clone().requires_grad_(True)
    (ps.Box(-1.0, 1.0).forward(reference) * torch.arange(6.0).view(2, 3)).sum().backward()
    torch.testing.assert_close(original.grad, reference.grad, rtol=0, atol=0)


def test_the_short_getter_defers_to_parametrize_for_caching_stacking_and_hooks():
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1.0, 1.0))
    chain = layer.parametrizations.weight
    calls = []
    handle = chain.register_forward_hook(lambda module, args, out: calls.append(1))
    _ = layer.weight
    assert calls == [1]  # the list's own hook ran: parametrize's path was taken
    handle.remove()
    with parametrize.cached():
        assert layer.weight is layer.weight
    parametrize.register_parametrization(layer, "weight", Double())
    torch.testing.assert_close(layer.weight, 2 * _reference(layer), rtol=0, atol=0)


def test_the_short_getter_survives_copies_and_goes_with_unconstrain():
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1.0, 1.0))
    clone = copy.deepcopy(layer)
    assert torch.equal(clone.weight, _reference(clone))
    value = layer.weight.detach().clone()
    ps.unconstrain(layer)
    assert type(layer) is nn.Linear
    assert "weight" not in type(layer).__dict__
    assert torch.equal(layer.weight.detach(), value)


def test_a_constrained_buffer_reads_through_the_short_getter():
    module = nn.Module()
    module.register_buffer("scale", torch.ones(3))
    ps.constrain(module, "scale", ps.Positive())
    chain = module.parametrizations.scale
    assert isinstance(chain._buffers["original"], torch.Tensor)
    assert torch.equal(module.scale, chain[0].forward(chain.original))


SYNC_FREE = [
    ps.Box(-1.0, 1.0),
    ps.Box(torch.zeros(4, 1), 2.0),
    ps.Positive(),
    ps.GreaterThan(0.5),
    ps.LessThan(0.5),
    ps.SoftClip(-1.0, 1.0),
    ps.Simplex(),
]


@pytest.mark.parametrize("transform", SYNC_FREE, ids=repr)
@pytest.mark.parametrize("size", [(4, 5), (256, 64)], ids=["small", "hand-fused"])
def test_a_constrained_step_never_waits_for_the_gpu(transform, size, device):
    """A forward, its backward and an optimizer step with projection run without a host sync (which
    would stall the GPU's queue every step). CUDA only: on a CPU every op is synchronous."""
    if device.type != "cuda":
        pytest.skip("host synchronisation only exists on a GPU")
    reparam = ps.constrain(
        nn.Linear(size[1], size[0]).to(device), "weight", copy.deepcopy(transform), init="sample"
    )
    plain = ps.constrain(
        nn.Linear(size[1], size[0]).to(device),
        "weight",
        copy.deepcopy(transform),
        init="sample",
        method="project",
    )
    x = torch.randn(8, size[1], device=device)
    for model in (reparam, plain):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x).sum().backward()
        optimizer.step()  # the first step builds the projection plan, which may read bounds once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with ps.fusion("off"):
                model(x).sum().backward()
                optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
