"""constrain() of many small tensors checks their values in one flat pass (paramshape.attach.batched):
the result must be exactly what constraining them one call at a time builds, and a failure must be
reported as the one-by-one checks report it, naming the tensor."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.attach.batched import check_values
from paramshape.lookup.patterns import expand_targets


def _model(dtype: torch.dtype = torch.float32, layers: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(5, 7) for _ in range(layers))).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.55, 0.65)  # inside every spec below
    return model


def _one_by_one(model: nn.Module, spec: object) -> None:
    for name, _ in list(model.named_parameters()):
        ps.constrain(model, name, spec)


SPECS = [
    ps.Box(-1.0, 1.0),
    ps.Box(-0.3, 0.7, slope=2.0),
    "positive",
    ps.GreaterThan(0.5),
    ps.LessThan(1.0),
    ps.SoftClip(-1.0, 1.0),
    ps.Box(0.5, 1.0, learnable=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_flat_pass_builds_what_one_call_per_tensor_builds(spec: object, dtype: torch.dtype) -> None:
    batched, single = _model(dtype), _model(dtype)
    targets = expand_targets(batched, "*", spec, "reparam")
    # The flat pass admits every tensor here: the equality below is about that path.
    assert len(check_values(batched, targets, "keep", "reparam")) == len(targets)
    ps.constrain(batched, "*", spec)
    _one_by_one(single, spec)

    one, other = batched.state_dict(), single.state_dict()
    assert list(one) == list(other)
    for key in one:  # bit for bit: the stored tensors and the transforms' settings
        assert one[key].dtype == other[key].dtype, key
        assert torch.equal(one[key], other[key]), key
    assert [n for n, _ in batched.named_parameters()] == [n for n, _ in single.named_parameters()]
    for a, b in zip(batched, single, strict=True):
        assert type(a).__name__ == type(b).__name__
        assert type(a) is not nn.Linear
        assert parametrize.is_parametrized(a, "weight")
        assert parametrize.is_parametrized(a, "bias")
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.bias, b.bias)
        chain = a.parametrizations.weight
        assert type(chain) is parametrize.ParametrizationList
        assert len(chain) == 1
        assert type(chain.original) is nn.Parameter
        # Each tensor has its own transform and its own stored tensor (no shared flat buffer).
        assert chain[0] is not a.parametrizations.bias[0]
        assert (
            chain.original.untyped_storage().data_ptr()
            != a.parametrizations.bias.original.untyped_storage().data_ptr()
        )
        assert (
            chain.original.untyped_storage().nbytes()
            == chain.original.numel() * chain.original.element_size()
        )
    with parametrize.cached():
        assert all(torch.equal(p, q) for p, q in zip(_values(batched), _values(single), strict=True))


def _values(model: nn.Module) -> list[Tensor]:
    return [getattr(layer, name) for layer in model for name in ("weight", "bias")]


def test_flat_pass_result_pickles_copies_and_unconstrains_like_the_slow_one() -> None:
    batched, single = _model(), _model()
    ps.constrain(batched, "*", ps.Box(-1.0, 1.0))
    _one_by_one(single, ps.Box(-1.0, 1.0))
    for made in (batched, single):
        buffer = io.BytesIO()
        torch.save(made, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert {k: repr(v) for k, v in ps.constraints(loaded).items()} == {
            k: repr(v) for k, v in ps.constraints(made).items()
        }
        assert all(torch.equal(p, q) for p, q in zip(_values(loaded), _values(made), strict=True))
        copied = copy.deepcopy(made)
        assert all(torch.equal(p, q) for p, q in zip(_values(copied), _values(made), strict=True))
        assert pickle.loads(pickle.dumps(made)).state_dict().keys() == made.state_dict().keys()
    for a, b in zip(batched, single, strict=True):
        parametrize.remove_parametrizations(a, "weight", leave_parametrized=True)
        parametrize.remove_parametrizations(b, "weight", leave_parametrized=True)
        assert torch.equal(a.weight, b.weight)
    ps.unconstrain(batched)
    ps.unconstrain(single)
    assert all(type(layer) is nn.Linear for layer in batched)
    assert batched.state_dict().keys() == single.state_dict().keys()


def test_a_failing_tensor_in_a_group_is_named_and_nothing_changes() -> None:
    model = _model()
    with torch.no_grad():
        model[3].weight[2, 4] = 1.5  # outside Box(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = expand_targets(model, "*", ps.Box(-1.0, 1.0), "reparam")
    assert check_values(model, targets, "keep", "reparam") == {}  # the group is left to the plans
    with pytest.raises(
        ps.InfeasibleValueError,
        match=r"'3\.weight' of Sequential \(shape \(7, 5\), float32\): 1 of 35 values .* worst: value 1\.5 at \[2, 4\]",
    ):
        ps.constrain(model, "*", ps.Box(-1.0, 1.0))
    assert all(type(layer) is nn.Linear for layer in model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


class _SloppyAbove(ps.GreaterThan):
    """GreaterThan(0) whose inverse is off by 0.01: inside the round-trip tolerance of a tensor of
    values near 1000, beyond that of values near 1."""

    flat_checks = True

    def inverse(self, y: Tensor) -> Tensor:
        return super().inverse(y + 0.01)


def test_each_tensor_keeps_its_own_round_trip_tolerance() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.fill_(1000.0)
        model[0].bias.fill_(1000.0)
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(1.0)
    spec = _SloppyAbove(0.0)
    # Alone, the large tensors pass; a flat pass with one scale for all would let the small ones pass too.
    ps.constrain(copy.deepcopy(model), "0.*", spec)
    with pytest.raises(ps.TransformError, match=r"'1\.weight' of Sequential .* does not give the value back"):
        ps.constrain(model, "*", spec)
    assert type(model[0]) is nn.Linear
    assert type(model[1]) is nn.Linear


def test_groups_by_spec_and_dtype() -> None:
    model = nn.Sequential(_model(torch.float32, 2), _model(torch.float64, 2), _model(torch.float32, 2))
    box, positive = ps.Box(-1.0, 1.0), ps.Positive()
    spec = {"0.*": box, "1.*": box, "2.*.weight": positive, "2.*.bias": box}
    targets = expand_targets(model, spec, None, "reparam")
    checked = check_values(model, targets, "keep", "reparam")
    # Box in float32 (6 tensors), Box in float64 (4), Positive in float32 (2): every group has two or more.
    assert len(checked) == len(targets) == 12
    reference = copy.deepcopy(model)
    ps.constrain(model, spec)
    for pattern, one in spec.items():
        ps.constrain(reference, pattern, one)
    assert all(
        torch.equal(p, q)
        for p, q in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_only_transforms_that_say_so_check_flat() -> None:
    class Tweaked(ps.Box):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x)

    assert ps.Box.flat_checks
    assert ps.UnitInterval.flat_checks
    assert ps.Positive.flat_checks
    assert not Tweaked.flat_checks  # its own forward: maybe no longer element by element
    assert not ps.Simplex.flat_checks
    assert not ps.Transform.flat_checks
    model = _model()
    for spec in (Tweaked(-1.0, 1.0), ps.Box(torch.full((7, 1), -1.0), 1.0)):  # per-row bounds: not scalar
        targets = expand_targets(model, "*.weight", spec, "reparam")
        assert check_values(model, targets, "keep", "reparam") == {}
    targets = expand_targets(model, "*", ps.Box(-1.0, 1.0), "reparam")
    assert check_values(model, targets, "project", "reparam") == {}  # init='keep' only
    assert check_values(model, targets, "keep", "project") == {}  # reparam only


def _mixed() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Module()
    model.small = nn.Linear(4, 3)
    model.empty = nn.Parameter(torch.empty(0, 3))
    model.transposed = nn.Parameter(torch.rand(5, 6).t())  # not contiguous: joined by a copy
    model.big = nn.Parameter(torch.rand(70_000) * 0.5)  # above the flat pass's size: planned alone
    model.register_buffer("scale", torch.full((3,), 0.25))
    model.frozen = nn.Parameter(torch.rand(3, 2) * 0.5, requires_grad=False)
    with torch.no_grad():
        model.small.weight.uniform_(-0.5, 0.5)
        model.small.bias.uniform_(-0.5, 0.5)
    ps.constrain(model.small, "bias", ps.Box(-2.0, 2.0))  # constrained again below: planned alone
    return model


def test_mixed_tensors_in_one_call_match_one_call_each() -> None:
    batched, single = _mixed(), _mixed()
    spec = ps.Box(-1.0, 1.0)
    targets = expand_targets(batched, "*", spec, "reparam")
    names = [name for name, _ in targets]
    checked = check_values(batched, targets, "keep", "reparam")
    flat = {names[index] for index in checked}
    assert {"small.weight", "transposed", "scale", "frozen"} <= flat
    assert not flat & {"big", "small.bias", "empty"}
    ps.constrain(batched, "*", spec)
    for name in names:
        ps.constrain(single, name, spec)
    one, other = batched.state_dict(), single.state_dict()
    assert list(one) == list(other)
    for key in one:
        assert torch.equal(one[key], other[key]), key
    assert batched.parametrizations.frozen.original.requires_grad is False
    assert batched.parametrizations.empty.original.shape == (0, 3)
    assert "parametrizations.scale.original" in dict(batched.named_buffers())


_EDGE_SPECS = {
    "Box(-1, 1)": ps.Box(-1.0, 1.0),
    "Box(0, 1e-30)": ps.Box(0.0, 1e-30),
    "UnitInterval": ps.UnitInterval(),
    "Positive": ps.Positive(),
    "GreaterThan(0.5)": ps.GreaterThan(0.5),
    "LessThan(-2)": ps.LessThan(-2.0),
    "SoftClip(-1, 1)": ps.SoftClip(-1.0, 1.0),
}


def _edge_values(dtype: torch.dtype) -> list[float]:
    """Values on and next to the specs' bounds, and at the ends of the dtype's range."""
    info = torch.finfo(dtype)
    return [
        0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 1e-3, 1e-30, 1e-31, info.tiny, info.tiny / 4, info.eps,
        1 - info.eps / 2, -1 + info.eps, 0.5 + info.eps, -2.0 - 2 * info.eps, 1e-3 * (1 - info.eps),
        info.max, -info.max,
    ]  # fmt: skip


@pytest.mark.parametrize("name", list(_EDGE_SPECS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_flat_pass_admits_no_edge_value_the_one_tensor_check_refuses(
    name: str, dtype: torch.dtype
) -> None:
    """Values on a bound, subnormal, at the dtype's largest: whatever the flat pass admits, the
    check of that tensor alone admits too, and the stored tensor is the same (its inverse on the
    same value, up to an ulp of a vectorised kernel). The flat pass may refuse more (its group is
    then checked tensor by tensor), never less."""
    spec = _EDGE_SPECS[name]
    partner = {"GreaterThan(0.5)": 1.0, "LessThan(-2)": -3.0, "Box(0, 1e-30)": 5e-31}.get(name, 0.25)
    admitted = 0
    for value in _edge_values(dtype):
        pair = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).to(dtype)
        with torch.no_grad():
            pair[0].weight.fill_(value)
            pair[1].weight.fill_(partner)
        flat = check_values(pair, [("0.weight", spec), ("1.weight", spec)], "keep", "reparam")
        if 0 not in flat:
            continue
        alone = nn.Linear(1, 1, bias=False).to(dtype)
        with torch.no_grad():
            alone.weight.fill_(value)
        ps.constrain(alone, "weight", spec)  # raises if the one-tensor check refuses it
        expected = alone.parametrizations.weight.original.detach()
        stored = flat[0].stored
        assert torch.isfinite(stored).all(), value
        torch.testing.assert_close(stored, expected, rtol=2 * torch.finfo(dtype).eps, atol=0, msg=str(value))
        admitted += 1
    assert admitted >= 3  # the check compares something for every spec
