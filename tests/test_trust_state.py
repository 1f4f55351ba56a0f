"""Issue 10, part B: module state under hostile use.

All or nothing (class 4), checkpoints checked as a whole (5), optimizer resume (6), foreign
parametrizations and deferred initialisation (7), torch's init functions (8), ``init="keep"`` on the
values actually stored (9). Every refusal is compared against a full module snapshot
(``tests/module_snapshot.py``): classes, tensor identities and order, values, persistence, hooks,
parametrizations and paramshape's state.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.attach import applying

from .module_snapshot import assert_same, take


def names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_parameters()]


class Block(nn.Module):
    """Own parameters before and after a submodule, and a buffer: parameter order matters here."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((3,), 0.5))
        self.inner = nn.Linear(3, 3)
        self.shift = nn.Parameter(torch.zeros(3))
        self.register_buffer("temperature", torch.tensor(0.5))


def model() -> nn.Module:
    return nn.Sequential(nn.LayerNorm(3), Block(), nn.Linear(3, 2))


# ------------------------------------------------------------------------- 4. all or nothing
SPECS = {
    "0.weight": ps.Box(0, 2),
    "1.scale": "positive",
    "1.inner.weight": ps.Box(-1, 1),
    "1.temperature": "positive",
    "2.bias": ps.Box(-1, 1),
}


@pytest.mark.parametrize("fail_at", range(len(SPECS)))
@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_a_failure_at_any_step_leaves_the_module_exactly_as_it_was(monkeypatch, fail_at, failure):
    net = model()
    ps.constrain(net, "1.shift", ps.Box(-1, 1), method="project")  # existing state to keep
    ps.constrain(net, "2.weight", ps.Box(-1, 1))  # an existing transform to keep
    before = take(net)
    real = applying._apply_one
    calls = []

    def flaky(root, plan):
        calls.append(plan.ref.path)
        real(root, plan)
        if len(calls) == fail_at + 1:
            raise failure("injected")

    monkeypatch.setattr(applying, "_apply_one", flaky)
    with pytest.raises(failure, match="injected"):
        ps.constrain(net, SPECS)
    assert_same(before, take(net))
    monkeypatch.setattr(applying, "_apply_one", real)
    ps.constrain(net, SPECS)  # and the module still works afterwards
    assert set(SPECS) <= set(ps.constraints(net))


def test_a_failure_while_replacing_constraints_restores_the_old_ones(monkeypatch):
    net = model()
    ps.constrain(net, {"0.weight": ps.Box(0, 3), "1.scale": ps.Box(0, 1)}, method="project")
    ps.constrain(net, "1.inner.weight", ps.Box(-2, 2))
    before = take(net)
    real = applying._attach

    def failing(ref, *args):
        real(ref, *args)
        if ref.path == "1.inner.weight":
            raise KeyboardInterrupt

    monkeypatch.setattr(applying, "_attach", failing)
    with pytest.raises(KeyboardInterrupt):
        ps.constrain(net, {"0.weight": "positive", "1.scale": "positive", "1.inner.weight": ps.Box(-3, 3)})
    assert_same(before, take(net))


def test_a_refused_constrain_does_not_run_a_foreign_parametrization():
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    before = take(layer)
    with pytest.raises(
        ps.ConstraintConflictError, match=r"'weight' of Linear already carries .*_SpectralNorm"
    ):
        ps.constrain(layer, "weight", ps.Box(-9, 9))
    assert_same(before, take(layer))
    for key, value in layer.state_dict().items():  # the power iteration did not advance
        assert torch.equal(value, state[key]), key


# --------------------------------------------------------------- 5. checkpoints as a whole
def layer_by_layer() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    for i in (0, 2):
        ps.constrain(net[i], "weight", ps.Box(-1, 1))
    ps.constrain(net[1], "weight", ps.Box(-1, 1), method="project")
    return net


def fresh(net: nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in net.state_dict().items()}


def plain_checkpoint() -> dict:
    sd = fresh(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)))
    for key in ("0.weight", "1.weight", "2.weight"):
        sd[key].uniform_(-0.5, 0.5)
    return sd


BREAKS = {
    "plain key outside the set (last layer)": (
        plain_checkpoint,
        lambda sd: sd["2.weight"].fill_(5.0),
        ps.InfeasibleValueError,
        "'2.weight' of Sequential (shape (2, 2), float32): 4 of 4 values lie outside",
    ),
    "project value outside the set": (
        plain_checkpoint,
        lambda sd: sd["1.weight"].fill_(-3.0),
        ps.InfeasibleValueError,
        "'1.weight' of Sequential (shape (2, 2), float32): 4 of 4 values lie outside",
    ),
    "NaN in a stored unconstrained tensor": (
        lambda: fresh(layer_by_layer()),
        lambda sd: sd["2.parametrizations.weight.original"].view(-1)[1].fill_(math.nan),
        ps.InfeasibleValueError,
        "'2.parametrizations.weight.original' of Sequential (shape (2, 2), float32): 1 of 4 stored",
    ),
    "NaN bound": (
        lambda: fresh(layer_by_layer()),
        lambda sd: sd["2.parametrizations.weight.0.high"].fill_(math.nan),
        ps.SpecError,
        "Checkpoint keys under '2.parametrizations.weight.0.'",
    ),
    "stored tensor of another shape": (
        lambda: fresh(layer_by_layer()),
        lambda sd: sd.__setitem__("2.parametrizations.weight.original", torch.zeros(3, 2)),
        ps.ShapeMismatchError,
        "'2.parametrizations.weight.original' has shape (3, 2); the tensor it loads into needs (2, 2)",
    ),
}


@pytest.mark.parametrize("what", list(BREAKS))
@pytest.mark.parametrize(("strict", "assign"), [(True, False), (False, False), (True, True)])
def test_a_bad_checkpoint_is_refused_before_any_tensor_is_written(what, strict, assign):
    build, spoil, error, message = BREAKS[what]
    net = layer_by_layer()
    sd = build()
    spoil(sd)
    before = take(net)
    with pytest.raises(error, match=re.escape(message)):
        net.load_state_dict(sd, strict=strict, assign=assign)
    assert_same(before, take(net))


def test_a_good_checkpoint_loads_in_both_key_formats():
    net = layer_by_layer()
    sd = plain_checkpoint()
    net.load_state_dict(sd)
    for i in range(3):
        torch.testing.assert_close(net[i].weight.detach(), sd[f"{i}.weight"], rtol=0, atol=1e-6)
    other = layer_by_layer()
    other.load_state_dict(net.state_dict())
    for i in range(3):
        assert torch.equal(other[i].weight, net[i].weight)


# -------------------------------------------------------------- 7. other parametrizations
def test_spectral_norm_on_top_of_a_constraint_stays_visible_and_removable():
    layer = ps.constrain(nn.Linear(4, 4), "weight", ps.Box(-1, 1))
    nn.utils.parametrizations.spectral_norm(layer)
    assert list(ps.constraints(layer)) == ["weight"]
    layer.eval()
    with torch.no_grad():
        constrained = layer.parametrizations.weight[0](layer.parametrizations.weight.original)
        sigma = torch.linalg.matrix_norm(constrained, 2)
    ps.unconstrain(layer, "weight")
    assert ps.constraints(layer) == {}
    assert [type(p).__name__ for p in layer.parametrizations.weight] == ["_SpectralNorm"]
    torch.testing.assert_close(layer.parametrizations.weight.original, constrained)
    torch.testing.assert_close(
        torch.linalg.matrix_norm(layer.weight.detach(), 2), torch.tensor(1.0), rtol=0.05, atol=0
    )
    assert sigma > 0


def test_meta_models_constrain_and_initialise_after_to_empty():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    ps.constrain(net, {"0.weight": ps.Box(-0.5, 0.5), "1.bias": "positive"})
    net.to_empty(device="cpu")
    box = net[0].parametrizations.weight[0]
    assert box.low.item() == -0.5
    assert box.high.item() == 0.5
    assert repr(ps.constraints(net)["0.weight"]) == "Box(low=-0.5, high=0.5)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)  # to_empty leaves arbitrary memory
        net.apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None)
    assert bool(((net[0].weight >= -0.5) & (net[0].weight <= 0.5)).all())
    assert bool((net[1].bias > 0).all())


def test_disjoint_views_of_one_flat_storage_are_not_tied_and_overlapping_ones_are():
    flat = torch.zeros(10)
    module = nn.Module()
    module.a = nn.Parameter(flat[:5])
    module.b = nn.Parameter(flat[5:])
    module.c = nn.Parameter(flat[4:6])
    with pytest.raises(ps.TiedTensorError, match="'a' of Module is shared with 'c'"):
        ps.constrain(module, "a", ps.Box(-1, 1))
    del module.c
    ps.constrain(module, "a", ps.Box(-1, 1))
    assert list(ps.constraints(module)) == ["a"]


def test_a_non_persistent_buffer_stays_out_of_the_state_dict():
    module = nn.Module()
    module.register_buffer("t", torch.full((3,), 0.5), persistent=False)
    module.register_buffer("kept", torch.full((3,), 0.5))
    ps.constrain(module, {"t": ps.Box(0, 1), "kept": ps.Box(0, 1)})
    assert list(module.state_dict()) == [
        "parametrizations.kept.original",
        "parametrizations.kept.0.low",
        "parametrizations.kept.0.high",
    ]
    plain = nn.Module()
    plain.register_buffer("t", torch.zeros(3), persistent=False)
    plain.register_buffer("kept", torch.zeros(3))
    plain.load_state_dict(ps.plain_state_dict(module))
    module.load_state_dict({"kept": torch.full((3,), 0.25)})


def test_plain_state_dict_of_a_reused_submodule_loads_into_the_plain_model():
    shared = nn.Linear(2, 2)
    net = ps.constrain(nn.Sequential(shared, shared), "0.weight", ps.Box(-1, 1))
    sd = ps.plain_state_dict(net)
    assert sorted(sd) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    plain = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    plain.load_state_dict(sd)
    assert torch.equal(plain[1].weight, net[1].weight)
    net.load_state_dict(sd)


@pytest.mark.parametrize(
    ("method", "error", "message"),
    [
        ("reparam", ps.TiedTensorError, "'0.weight' of Sequential is shared with '1.weight'"),
        ("project", ps.SpecError, "'0.weight' and '1.weight' name the same tensor"),
        ("penalty", ps.SpecError, "'0.weight' and '1.weight' name the same tensor"),
    ],
)
def test_tied_tensors_named_twice_in_one_call_are_refused(method, error, message):
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    net[1].weight = net[0].weight
    before = take(net)
    with pytest.raises(error, match=re.escape(message)):
        ps.constrain(net, {"0.weight": ps.Box(-1, 1), "1.weight": ps.Box(-2, 2)}, method=method)
    assert_same(before, take(net))


# ------------------------------------------------------------------------ 8. init functions
def test_reset_parameters_reinitialises_a_constrained_weight():
    layer = ps.constrain(nn.Linear(8, 8), "weight", ps.Box(-1, 1))
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    after = layer.weight.detach()
    assert not torch.equal(before, after)
    bound = 1 / math.sqrt(8)  # kaiming_uniform_(a=sqrt(5)) on fan_in 8
    assert after.abs().max() <= bound + 1e-6
    assert after.std() > bound / 4  # a fresh draw, not a constant


def test_apply_with_an_init_function_reaches_constrained_tensors_of_every_strategy():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    ps.constrain(net, "0.weight", ps.Box(-1, 1))
    ps.constrain(net, "1.weight", ps.Box(-1, 1), method="project")
    net.apply(lambda m: nn.init.constant_(m.weight, 0.25) if isinstance(m, nn.Linear) else None)
    for i in range(2):
        torch.testing.assert_close(net[i].weight.detach(), torch.full((3, 3), 0.25))


def test_an_init_outside_the_set_is_moved_inside_with_a_warning():
    layer = ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1))
    with pytest.warns(ps.ParamshapeWarning, match="wrote 9 of 9 values outside Box"):
        layer.apply(lambda m: nn.init.constant_(m.weight, 3.0) if isinstance(m, nn.Linear) else None)
    assert bool((layer.weight < 1).all())


def test_raw_policy_reinitialises_the_unconstrained_tensor():
    layer = ps.constrain(nn.Linear(3, 3), "weight", "positive", init="raw")
    layer.apply(lambda m: nn.init.constant_(m.weight, 0.0) if isinstance(m, nn.Linear) else None)
    # init="raw": the 0 goes into the unconstrained tensor, so the value reads Positive's map at 0,
    # c softplus(0 / c) = c log 2 with the documented softness c (docs/transforms.md).
    softness = ps.Positive().softness
    torch.testing.assert_close(layer.weight.detach(), torch.full((3, 3), softness * math.log(2.0)))


def test_bounds_poisoned_by_a_blanket_init_are_put_back_and_reported():
    net = nn.Sequential(ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1)))
    before = take(net)

    def fill_buffers(module):
        for buffer in module.buffers(recurse=False):
            buffer.fill_(math.nan)

    with pytest.raises(ps.SpecError, match="the call wrote into the settings of its constraint Box"):
        net.apply(fill_buffers)
    assert_same(before, take(net))
    assert bool(torch.isfinite(net[0].weight).all())


def test_init_support_survives_pickling():
    layer = pickle.loads(pickle.dumps(ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1, 1))))
    layer.apply(lambda m: nn.init.constant_(m.weight, 0.5) if isinstance(m, nn.Linear) else None)
    assert torch.equal(layer.weight.detach(), torch.full((3, 3), 0.5))


# ------------------------------------------------------------ 9. init="keep" on stored values
class OffInverse(ps.Box):
    def inverse(self, y):
        return super().inverse(y) + 0.1


class NaNBeyondProbes(ps.Box):
    def forward(self, x):
        y = super().forward(x)
        return torch.where(x.abs() > 1.5, torch.nan, y)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (OffInverse(-1, 1), "does not give the value back: forward(inverse(y)) is"),
        (NaNBeyondProbes(-1, 1), "reads 1 of 9 stored values back as NaN or infinite"),
    ],
)
def test_keep_checks_the_round_trip_of_the_values_actually_stored(transform, message):
    layer = nn.Linear(3, 3)
    with torch.no_grad():
        layer.weight.fill_(0.1)
        layer.weight[1, 1] = 0.95  # inverse beyond 1.5 for this box
    before = take(layer)
    with pytest.raises(ps.TransformError, match=re.escape(message)):
        ps.constrain(layer, "weight", transform)
    assert_same(before, take(layer))
    assert not parametrize.is_parametrized(layer)


# ------------------------------------------------------------------------ 6. optimizer resume
def trained_checkpoint(build_before: bool) -> dict:
    torch.manual_seed(0)
    layer = nn.LayerNorm(3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1) if build_before else None
    ps.constrain(layer, "weight", "positive")
    optimizer = optimizer or torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": layer.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("saved_before", "resumed_before"), [(True, False), (False, True)])
def test_resuming_with_the_optimizer_built_in_another_order_raises_before_any_update(
    saved_before, resumed_before
):
    checkpoint = trained_checkpoint(saved_before)
    layer = nn.LayerNorm(3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1) if resumed_before else None
    ps.constrain(layer, "weight", "positive")
    optimizer = optimizer or torch.optim.Adam(layer.parameters(), lr=0.1)
    layer.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    layer(torch.randn(4, 3)).pow(2).sum().backward()
    before = take(layer)
    with pytest.raises(
        ps.ConstraintConflictError,
        match=r"parameter 0 \('(bias|weight)', shape \(3,\)\) was saved for '(weight|bias)'",
    ):
        optimizer.step()
    assert_same(before, take(layer))


@pytest.mark.parametrize("before", [True, False])
def test_resuming_in_the_same_order_restores_the_moments_of_the_right_tensors(before):
    checkpoint = trained_checkpoint(before)
    layer = nn.LayerNorm(3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1) if before else None
    ps.constrain(layer, "weight", "positive")
    optimizer = optimizer or torch.optim.Adam(layer.parameters(), lr=0.1)
    layer.load_state_dict(checkpoint["model"])
    saved = checkpoint["optimizer"]["state"][0 if before else 1]  # the weight's moments
    moment = saved["exp_avg_sq"].clone()
    optimizer.load_state_dict(checkpoint["optimizer"])
    stored = layer.parametrizations.weight.original
    assert torch.equal(optimizer.state[stored]["exp_avg_sq"], moment)
    layer(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()


# ----------------------------------------------------------------- 4. dtype moves, checked first
def test_a_dtype_move_that_overflows_a_bound_converts_no_constrained_module():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(net, "0.weight", ps.Box(-1, 1))
    ps.constrain(net, {"1.weight": ps.Box(-1, 1), "1.bias": ps.Box(-1, 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        ps.constrain(net, "2.weight", ps.Box(0, 1e5), init="project")
    before = take(net)
    with pytest.raises(
        ps.SpecError, match=r"'2.weight' of Sequential: Box: converting 'high' to torch.float16"
    ):
        net.half()
    assert_same(before, take(net))
    net.double()  # a move that fits converts everything, bounds included
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert {b.dtype for b in net.buffers()} == {torch.float64}
