"""Trustworthy in real training: checkpoints, pickling, export, torch.func, initialization,
optimizer groups, low precision and long runs. Each test fails on plain parametrize behaviour."""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.nn.utils import parametrize

import paramshape as ps

from .transform_cases import CASES, COMPLEX_CASES


def small_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    ps.constrain(model, "0.weight", ps.Box(-1, 1))
    ps.constrain(model, "2.bias", "positive", init="raw")
    return model


# ------------------------------------------------------------------------------ checkpoints
def test_state_dict_round_trip_into_a_fresh_constrained_model_is_exact():
    source = small_model()
    with torch.no_grad():
        source[0].weight = torch.rand(8, 4) * 2 - 1
    target = small_model()
    target.load_state_dict(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_saved_before_constraining_loads_through_the_inverse():
    plain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        plain[0].weight.clamp_(-0.9, 0.9)
        plain[2].bias.abs_()
    checkpoint = plain.state_dict()
    model = small_model()
    model.load_state_dict(checkpoint)  # plain 'weight' keys, strict loading
    torch.testing.assert_close(model[0].weight, checkpoint["0.weight"], rtol=0, atol=4e-7)
    torch.testing.assert_close(model[2].bias, checkpoint["2.bias"])


def test_infeasible_old_checkpoint_raises_like_an_assignment_and_loads_nothing():
    checkpoint = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).state_dict()
    checkpoint["0.weight"][1, 2] = 3.0
    model = small_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    message = "'0.weight' of Sequential (shape (8, 4), float32): 1 of 32 values lie outside Box(low=-1.0, high=1.0); worst: value 3.0 at [1, 2] is above high=1.0."
    with pytest.raises(ps.InfeasibleValueError, match=re.escape(message)):
        model.load_state_dict(checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_plain_state_dict_exports_constrained_values_under_original_names():
    model = small_model()
    exported = ps.plain_state_dict(model)
    assert set(exported) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(exported["0.weight"], model[0].weight.detach())
    plain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    plain.load_state_dict(exported)
    x = torch.randn(5, 4)
    torch.testing.assert_close(plain(x), model(x))


def test_torch_save_and_pickle_of_a_constrained_model_work():
    model = small_model()
    x = torch.randn(5, 4)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for loaded in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        assert list(ps.constraints(loaded)) == ["0.weight", "2.bias"]
        with pytest.raises(ps.InfeasibleValueError):
            loaded[0].weight = torch.full((8, 4), 2.0)


def test_pickling_a_weight_norm_model_says_what_to_do():
    model = small_model()
    torch.nn.utils.parametrizations.weight_norm(model[2], "weight")
    with pytest.raises(RuntimeError, match=r"Save model\.state_dict"):
        pickle.dumps(model)


# ------------------------------------------------------------------------------ export
def test_export_and_torchscript_after_unconstrain_match():
    model = small_model()
    x = torch.randn(5, 4)
    expected = model(x)
    ps.unconstrain(model)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected)


# ------------------------------------------------------------------------------ torch.func
def test_functional_call_with_the_constrained_name_warns_that_gradients_are_dropped():
    model = small_model()
    w = model[0].weight.detach().clone().requires_grad_(True)
    with pytest.warns(ps.ParamshapeWarning, match="no gradient will flow back"):
        functional_call(model, {"0.weight": w}, (torch.randn(2, 4),)).sum().backward()
    assert w.grad is None  # plain torch's silent behaviour, now announced


def test_functional_params_gives_gradients():
    model = small_model()
    x = torch.randn(2, 4)
    params = ps.functional_params(model)
    assert "0.parametrizations.weight.original" in params
    out = functional_call(model, params, (x,))
    torch.testing.assert_close(out, model(x))
    w = model[0].weight.detach().clone().requires_grad_(True)
    functional_call(model, ps.functional_params(model, {"0.weight": w}), (x,)).sum().backward()
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()


def test_vmap_over_an_ensemble_of_constrained_models():
    models = [small_model() for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = small_model().to("meta")
    x = torch.randn(5, 4)

    def run(p, b):
        return functional_call(base, (p, b), (x,))

    outputs = torch.vmap(run)(params, buffers)
    for i, model in enumerate(models):
        torch.testing.assert_close(outputs[i], model(x))


# ------------------------------------------------------------------------------ initialization
def test_nn_init_on_a_constrained_tensor_is_a_no_op_in_torch_and_init_works():
    model = small_model()
    before = model[0].weight.detach().clone()
    nn.init.constant_(model[0].weight, 0.5)  # the trap: writes into a temporary
    with pytest.warns(ps.ParamshapeWarning, match=r"'weight' of Linear .*the write was lost"):
        assert torch.equal(model[0].weight.detach(), before)  # lost, but no longer silently
    ps.init_(model, "0.weight", nn.init.uniform_, -0.5, 0.5)
    assert not torch.equal(model[0].weight.detach(), before)
    assert (model[0].weight.abs() <= 0.5 + 1e-6).all()
    with pytest.raises(ps.InfeasibleValueError):
        ps.init_(model, "0.weight", nn.init.constant_, 2.0)


# ------------------------------------------------------------------------------ optimizer
def test_weight_decay_on_the_stored_tensor_pulls_toward_the_transform_centre():
    def decayed(groups_of):
        module = ps.constrain(nn.Linear(1, 1, bias=False), "weight", ps.Box(0, 1), init="sample")
        module.weight = torch.tensor([[0.9]])
        optimizer = torch.optim.AdamW(groups_of(module), lr=0.05, weight_decay=0.5)
        for _ in range(200):
            optimizer.zero_grad()
            (module.weight * 0).sum().backward()
            optimizer.step()
        return module.weight.item()

    assert decayed(lambda m: m.parameters()) == pytest.approx(0.5, abs=0.02)  # the centre, not 0
    assert decayed(ps.param_groups) == pytest.approx(0.9, abs=1e-6)


def test_param_groups_separates_stored_tensors():
    model = small_model()
    plain, raw = ps.param_groups(model, lr=0.1, constrained={"lr": 0.01, "weight_decay": 0.0})
    assert {id(p) for p in raw["params"]} == {
        id(model[0].parametrizations.weight.original),
        id(model[2].parametrizations.bias.original),
    }
    assert len(plain["params"]) == 2
    assert raw["lr"] == 0.01
    assert plain["lr"] == 0.1


# ------------------------------------------------------------------------------ low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_modules_stay_in_the_set_with_finite_gradients(dtype):
    model = small_model().to(dtype)
    with torch.no_grad():
        model[0].parametrizations.weight.original.mul_(1000)  # saturate
    x = torch.randn(16, 4, dtype=dtype)
    out = model(x)
    out.float().sum().backward()
    assert model[0].weight.dtype == dtype
    assert (model[0].weight.abs() <= 1).all()
    assert (model[2].bias > 0).all()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all()


def test_autocast_keeps_values_in_the_set():
    model = small_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 4))
        assert (model[0].weight.abs() <= 1).all()
        assert (model[2].bias > 0).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------------------ stress
class Holder(nn.Module):
    def __init__(self, shape, dtype=torch.float32):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("case", CASES + COMPLEX_CASES, ids=[case.id for case in CASES + COMPLEX_CASES])
def test_long_run_with_a_large_learning_rate_pushing_outward(case):
    dtype = torch.float32 if torch.float32 in case.dtypes else torch.complex64
    module = ps.constrain(Holder(case.shape, dtype), "value", case.build(), init="sample")
    transform = ps.constraints(module)["value"]
    direction = torch.where(torch.rand(case.shape) < 0.5, -1.0, 1.0)
    if dtype.is_complex:  # outward along a random phase per entry; the loss is real
        direction = torch.polar(direction.abs(), 2 * math.pi * torch.rand(case.shape))
    optimizer = torch.optim.SGD(module.parameters(), lr=100.0)
    for step in range(2000):
        optimizer.zero_grad()
        loss = (module.value * direction).sum()
        (-(loss.real if loss.is_complex() else loss)).backward()
        optimizer.step()
        if step % 100 == 99:
            with torch.no_grad():
                assert torch.isfinite(module.parametrizations.value.original).all()
                assert transform.contains(module.value).all()


def test_plain_parametrize_would_not_catch_an_infeasible_assignment():
    """The baseline these tests guard against: torch's own interval transform clips silently."""
    layer = nn.Linear(2, 1)
    parametrize.register_parametrization(layer, "weight", _TorchBox())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.weight = torch.tensor([[2.0, -3.0]])
    assert (layer.weight.abs() <= 1).all()  # stored something else than what was assigned


class _TorchBox(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = torch.distributions.transforms.ComposeTransform(
            [
                torch.distributions.transforms.SigmoidTransform(),
                torch.distributions.transforms.AffineTransform(-1.0, 2.0),
            ]
        )

    def forward(self, x):
        return self.t(x)

    def right_inverse(self, y):
        return self.t.inv(y)
