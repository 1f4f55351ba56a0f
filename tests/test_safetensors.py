"""safetensors, the format most checkpoints are shared in, both ways (docs/checkpoints.md).

``save_model``/``load_model`` keep a constrained model's own keys (``parametrizations.*.original``
and the transforms' buffers); ``save_file`` of ``ps.plain_state_dict`` writes the constrained values
under the plain names, which load into a plain model as they are and into a constrained one through
the inverse. Values outside the set in such a file raise, as they do from ``torch.save``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

import paramshape as ps


def plain_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def constrained_model() -> nn.Sequential:
    model = plain_model()
    ps.constrain(model, "0.weight", ps.Box(-1, 1))
    ps.constrain(model, "2.bias", "positive", init="raw")
    return model


def trained(model: nn.Sequential) -> nn.Sequential:
    """A few steps, so that the saved values differ from a fresh model's."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
    return model.eval()


def test_save_model_load_model_round_trip_of_a_constrained_model_is_exact(tmp_path):
    source = trained(constrained_model())
    save_model(source, str(tmp_path / "m.safetensors"))
    target = constrained_model()
    missing, unexpected = load_model(target, str(tmp_path / "m.safetensors"))
    assert (missing, unexpected) == (set(), [])
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(5, 3)
    assert torch.equal(target.eval()(x), source(x))
    # The file holds the unconstrained tensor the optimizer updates, under parametrize's key.
    keys = load_file(tmp_path / "m.safetensors").keys()
    assert "0.parametrizations.weight.original" in keys
    assert "0.weight" not in keys


def test_plain_state_dict_in_safetensors_loads_into_a_plain_model(tmp_path):
    source = trained(constrained_model())
    save_file(ps.plain_state_dict(source), tmp_path / "plain.safetensors")
    plain = plain_model()
    plain.load_state_dict(load_file(tmp_path / "plain.safetensors"))
    assert torch.equal(plain[0].weight, source[0].weight)
    assert torch.equal(plain[2].bias, source[2].bias)
    x = torch.randn(5, 3)
    torch.testing.assert_close(plain.eval()(x), source(x))


def test_plain_safetensors_checkpoint_loads_into_a_constrained_model_through_the_inverse(tmp_path):
    # A checkpoint saved before constraining (or by plain_state_dict) has the plain keys.
    source = trained(constrained_model())
    save_file(ps.plain_state_dict(source), tmp_path / "plain.safetensors")
    target = constrained_model()
    target.load_state_dict(load_file(tmp_path / "plain.safetensors"))
    torch.testing.assert_close(target[0].weight, source[0].weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(target[2].bias, source[2].bias, rtol=0, atol=1e-6)
    # safetensors' own loader goes through the same load_state_dict, and so through paramshape's hook.
    other = constrained_model()
    missing, unexpected = load_model(other, str(tmp_path / "plain.safetensors"))
    assert (missing, unexpected) == (set(), [])
    torch.testing.assert_close(other[0].weight, source[0].weight, rtol=0, atol=1e-6)


def test_safetensors_file_with_values_outside_the_set_raises_and_loads_nothing(tmp_path):
    plain = plain_model()
    with torch.no_grad():
        plain[0].weight[1, 2] = 3.0  # outside Box(-1, 1)
    save_model(plain, str(tmp_path / "bad.safetensors"))
    target = constrained_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ps.InfeasibleValueError, match=r"0\.weight.*3\.0"):
        load_model(target, str(tmp_path / "bad.safetensors"))
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_constrained_safetensors_file_into_a_plain_model_names_the_missing_keys(tmp_path):
    # The documented rule: share plain_state_dict, not the constrained model's own keys.
    save_model(constrained_model(), str(tmp_path / "m.safetensors"))
    with pytest.raises(RuntimeError, match=r"0\.weight"):
        load_model(plain_model(), str(tmp_path / "m.safetensors"))
