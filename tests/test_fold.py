"""``constrain(..., fold=True)``: values computed once per change of the stored tensor, the same
values, gradients and training trajectory as the default mode; what it refuses, and where it falls
back to the default computation."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.strategies.folded import GROUP_MAX_ELEMENTS, FoldGroup
from tests import module_snapshot

BOX = (-0.01, 0.01)


def _model(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(
        dtype
    )
    with torch.no_grad():
        for parameter in model.parameters():  # inside the box, some near its bounds
            parameter.mul_(0.0099 / parameter.abs().max())
    return model


def _pair(
    spec: object = None, dtype: torch.dtype = torch.float32, **options: object
) -> tuple[nn.Module, nn.Module]:
    spec = ps.Box(*BOX) if spec is None else spec
    base = _model(dtype)
    default = ps.constrain(copy.deepcopy(base), "*", spec, **options)
    folded = ps.constrain(copy.deepcopy(base), "*", spec, fold=True, **options)
    return default, folded


def _loss(model: nn.Module, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(32, 2, generator=generator, dtype=dtype)
    return F.mse_loss(model(x), torch.sin(3 * x[:, :1]))


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in model.parameters()]


def _count_hook_registrations(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The shapes of the tensors that get a gradient hook from now on (the list fills as they do)."""
    calls: list[torch.Size] = []
    original = torch.Tensor.register_post_accumulate_grad_hook

    def counting(self: torch.Tensor, hook: object) -> object:
        calls.append(self.shape)
        return original(self, hook)

    monkeypatch.setattr(torch.Tensor, "register_post_accumulate_grad_hook", counting)
    return calls


def test_groups_small_tensors_of_one_call() -> None:
    _, folded = _pair()
    folded_values = [
        folded[i].parametrizations[n]._paramshape_folded for i in (0, 2, 4) for n in ("weight", "bias")
    ]
    groups = {id(value._group) for value in folded_values}
    assert len(groups) == 1
    assert isinstance(folded_values[0]._group, FoldGroup)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "spec",
    [ps.Box(*BOX), ps.Box(torch.full((16, 1), -0.01), 0.01), ps.Positive(), ps.Box(-0.01, float("inf"))],
    ids=["box", "box-tensor-bounds", "positive", "box-one-sided"],
)
def test_values_and_gradients_match_the_default(spec: ps.Transform, dtype: torch.dtype) -> None:
    if isinstance(spec, ps.Box) and spec.low.dim():
        base = _model(dtype)
        default = ps.constrain(copy.deepcopy(base), "2.weight", spec)
        folded = ps.constrain(copy.deepcopy(base), "2.weight", spec, fold=True)
    else:
        default, folded = _pair(spec, dtype, init="raw" if isinstance(spec, ps.Positive) else "keep")
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        assert torch.equal(a, b)  # the same stored tensors
    # Twice: gradients accumulate over two backward calls, as in the default mode.
    for seed in (1, 2):
        _loss(default, seed).backward()
        _loss(folded, seed).backward()
    for a, b in zip(default.state_dict().values(), folded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    values = [(default[i].weight, folded[i].weight) for i in (0, 2, 4)]
    for a, b in values:
        torch.testing.assert_close(b, a, rtol=0, atol=2 * torch.finfo(dtype).eps * a.abs().max().item())
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(
            b, a, rtol=8 * torch.finfo(dtype).eps, atol=8 * torch.finfo(dtype).eps * a.abs().max().item()
        )


@pytest.mark.parametrize("foreach", [False, True])
def test_training_trajectory_matches_the_default(foreach: bool) -> None:
    # foreach=True: the optimizer's grouped kernels take the group's gradients (views of one
    # product) as they take separate tensors.
    default, folded = _pair()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, foreach=foreach) for m in (default, folded)]
    for step in range(30):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    for i in (0, 2, 4):
        torch.testing.assert_close(folded[i].weight, default[i].weight, rtol=0, atol=1e-8)
        assert folded[i].weight.abs().max() <= BOX[1]


def test_zero_grad_and_a_second_optimizer_step_recompute() -> None:
    _, folded = _pair()
    optimizer = torch.optim.SGD(folded.parameters(), lr=10.0)
    before = folded[2].weight.detach().clone()
    _loss(folded).backward()
    optimizer.zero_grad()  # the gradient reached the stored tensors, so zero_grad discards it
    assert all(p.grad is None for p in folded.parameters())
    _loss(folded).backward()
    optimizer.step()
    after = folded[2].weight
    assert not torch.equal(after, before)
    expected = ps.Box(*BOX)(folded[2].parametrizations.weight.original.detach())
    torch.testing.assert_close(after.detach(), expected, rtol=0, atol=1e-9)


def test_assignment_load_and_bound_changes_are_seen() -> None:
    default, folded = _pair()
    value = torch.full((16, 16), 0.005)
    folded[2].weight = value
    torch.testing.assert_close(folded[2].weight.detach(), value)
    # load_state_dict writes the stored tensors (and the bounds) in place.
    folded.load_state_dict(default.state_dict())
    torch.testing.assert_close(folded[2].weight.detach(), default[2].weight.detach(), rtol=0, atol=1e-9)
    state = folded.state_dict()
    state["2.parametrizations.weight.0.high"] = torch.tensor(0.02)
    folded.load_state_dict(state)
    moved = folded[2].weight
    expected = ps.Box(-0.01, 0.02)(folded[2].parametrizations.weight.original.detach())
    torch.testing.assert_close(moved.detach(), expected, rtol=0, atol=4e-9)  # 2 ulps of the bound
    assert folded[2].parametrizations.weight._paramshape_folded._group is None  # left its group
    assert folded[0].weight.abs().max() <= 0.01  # the others keep their group and bounds


def test_an_in_place_write_to_a_read_value_is_repaired() -> None:
    _, folded = _pair()
    with torch.no_grad():
        folded[0].weight.fill_(1.0)  # outside the box: the cache must not serve it
    with pytest.warns(ps.ParamshapeWarning, match="written in place, and the write was lost") as record:
        assert folded[0].weight.abs().max() <= BOX[1]
    # It names the tensor read, and points at the line that read it.
    assert str(record[0].message).startswith("'0.weight' of Sequential (or a tensor folded together with it)")
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next read serves the repaired value without a warning
        assert folded[0].weight.abs().max() <= BOX[1]


def test_no_grad_reads_and_frozen_tensors() -> None:
    _, folded = _pair()
    with torch.no_grad():
        assert not folded[0].weight.requires_grad
    folded[0].parametrizations.weight.original.requires_grad_(False)
    assert not folded[0].weight.requires_grad
    _loss(folded).backward()
    assert folded[0].parametrizations.weight.original.grad is None
    assert folded[2].parametrizations.weight.original.grad is not None


def test_cached_and_functional_call_fall_back_to_the_default() -> None:
    default, folded = _pair()
    with parametrize.cached():
        _loss(folded).backward()
    _loss(default).backward()
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(b, a)
    # A stored tensor swapped in by functional_call is differentiated through the map.
    raw = folded[2].parametrizations.weight.original.detach().clone().requires_grad_()
    x = torch.randn(4, 2)
    out = torch.func.functional_call(folded, {"2.parametrizations.weight.original": raw}, (x,))
    out.sum().backward()
    assert raw.grad is not None
    assert raw.grad.abs().sum() > 0


def test_a_copy_trains_its_own_tensors() -> None:
    _, folded = _pair()
    folded[0].weight  # noqa: B018  # fill the cache before copying
    twin = copy.deepcopy(folded)
    _loss(twin).backward()
    assert all(p.grad is None for p in folded.parameters())
    assert all(p.grad is not None for p in twin.parameters())


def test_double_backward_is_refused() -> None:
    _, folded = _pair()
    with pytest.raises(ps.TransformError, match="no second derivatives"):
        _loss(folded).backward(create_graph=True)


def test_refusals_name_the_tensor_and_leave_the_module_unchanged() -> None:
    model = _model()
    before = module_snapshot.take(model)
    with pytest.raises(ps.SpecError, match="fold=True applies to method='reparam' only"):
        ps.constrain(model, "*", ps.Box(*BOX), method="project", fold=True)
    with pytest.raises(ps.SpecError, match="fold must be True or False"):
        ps.constrain(model, "*", ps.Box(*BOX), fold="yes")  # type: ignore[arg-type]
    with pytest.raises(
        ps.UnsupportedTensorError,
        match=r"'2\.weight' of Sequential: fold=True needs an elementwise transform",
    ):
        ps.constrain(
            model, {"0.weight": ps.Box(*BOX), "2.weight": ps.UnitNorm(dim=-1)}, init="raw", fold=True
        )
    module_snapshot.assert_same(before, module_snapshot.take(model))


def test_a_new_constraint_without_fold_replaces_the_fold() -> None:
    _, folded = _pair()
    ps.constrain(folded, "2.weight", ps.Box(-0.02, 0.02))
    assert "_paramshape_folded" not in folded[2].parametrizations.weight.__dict__
    assert folded[2].weight.grad_fn is not None  # computed at the read again


def test_a_graph_built_before_a_step_keeps_the_slopes_it_used() -> None:
    """A group refresh allocates new values and slopes: a loss built before the stored tensors
    change, differentiated after a read that refreshed the group, gets the gradient the default
    mode gives (the slope at the time of the read), not one from the new slopes."""
    default, folded = _pair()
    losses = [_loss(default), _loss(folded)]
    with torch.no_grad():
        for model in (default, folded):
            for layer in model:
                if hasattr(layer, "parametrizations"):
                    layer.parametrizations.weight.original.add_(3.0)  # far into the tails
    _ = [layer.weight for layer in folded if hasattr(layer, "parametrizations")]  # refresh the group
    for loss in losses:
        loss.backward()
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad)


def test_a_group_registers_its_gradient_hooks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The members' values are views of persistent flat tensors: the gradient hooks are registered
    when the group first lays them out (one per member in each of the two sets), never again at a
    refresh, and each stored tensor gets a gradient of its own shape."""
    _, folded = _pair()
    calls = _count_hook_registrations(monkeypatch)
    optimizer = torch.optim.SGD(folded.parameters(), lr=1e-3)
    for step in range(4):
        optimizer.zero_grad()
        _loss(folded, step).backward()
        optimizer.step()
    shapes = [p.shape for p in folded.parameters()]
    assert sorted(calls) == sorted(shapes * 2)
    for parameter in folded.parameters():
        assert parameter.grad is not None
        assert parameter.grad.shape == parameter.shape


def _folded_values(model: nn.Module) -> list[torch.Tensor]:
    return [model[i].weight for i in (0, 2, 4)] + [model[i].bias for i in (0, 2, 4)]


def test_a_no_grad_read_first_still_trains() -> None:
    """A recomputation made by a read under ``no_grad`` (an evaluation before the training forward)
    serves values that require no grad there, and the next reads with grad enabled serve values
    that do: gradients reach every stored tensor, as by default."""
    default, folded = _pair()
    with torch.no_grad():
        served = _folded_values(folded)
    assert not any(value.requires_grad for value in served)
    _loss(default).backward()
    _loss(folded).backward()
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-12)


def test_gradients_accumulate_over_backward_calls() -> None:
    """Two forwards and backwards between steps, from the same cached values: the stored gradients
    add up as the default mode's do."""
    default, folded = _pair()
    for model in (default, folded):
        _loss(model, 1).backward()
        _loss(model, 2).backward()
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-12)


def test_a_tensor_frozen_after_training_gets_no_gradient() -> None:
    """A stored tensor frozen after some steps gets no gradient from then on (its value is served
    without grad), and the others train as by default."""
    default, folded = _pair()
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (default, folded)]
    for step in range(5):
        if step == 2:
            for model in (default, folded):
                model[2].parametrizations.weight.original.requires_grad_(False)
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()
        assert folded[2].weight.requires_grad == (step < 2)
        for a, b in zip(default.parameters(), folded.parameters(), strict=True):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-10)


def _outlived(model: nn.Module, loss: torch.Tensor, times: int) -> None:
    """Change the stored tensors ``times`` times (each read then recomputes), then differentiate
    ``loss``, built before."""
    for _ in range(times):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1e-3)
        _ = [model[i].weight for i in (0, 2, 4)]  # a read recomputes
    loss.backward()


@pytest.mark.parametrize("times", [1, 2, 3])
@pytest.mark.parametrize("saves_values", [True, False], ids=["mse", "sum of values"])
def test_a_graph_outliving_refreshes_is_differentiated_as_built(times: int, saves_values: bool) -> None:
    """A graph built before the stored tensors changed (once, twice, three times: one recomputation
    each) gets the gradient the default mode gives it, computed with the values and slopes it was
    built from, whether or not it saved a value (a sum of the values saves none, so an overwritten
    slope could not be detected): a set of values a graph still uses is never overwritten."""
    default, folded = _pair()

    def build(model: nn.Module) -> torch.Tensor:
        if saves_values:
            return _loss(model)
        return sum(model[i].weight.sum() + model[i].bias.sum() for i in (0, 2, 4))

    losses = [build(default), build(folded)]  # no value kept but by the graphs
    for model, loss in zip((default, folded), losses, strict=True):
        _outlived(model, loss, times)
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False], ids=["read with grad", "read under no_grad"])
def test_a_value_kept_is_never_rewritten(grad: bool) -> None:
    """A value read and kept in a variable (no graph) holds what it held, as a value read in the
    default mode does, however many recomputations follow; the next reads serve the new values."""
    _, folded = _pair()
    with torch.set_grad_enabled(grad):
        held = folded[2].weight
    kept = held.detach().clone()
    for _ in range(3):
        with torch.no_grad():
            folded[2].parametrizations.weight.original.add_(1e-3)
        fresh = folded[2].weight
        assert not torch.equal(fresh.detach(), kept)
    assert torch.equal(held.detach(), kept)


def test_a_graph_keeps_a_reference_to_the_python_object_of_a_tensor_it_uses() -> None:
    """What ``_Buffers.held`` relies on to see a graph built from a value: while C++ refers to a
    tensor (a gradient accumulator), torch holds a reference to its Python object."""
    tensors = [torch.zeros(4, requires_grad=True)]
    # Counted into plain names first: pytest's assertion rewriting keeps what an assert reads.
    free = sys.getrefcount(tensors[0])
    loss = tensors[0].sum()
    in_graph = sys.getrefcount(tensors[0])
    del loss
    after = sys.getrefcount(tensors[0])
    assert in_graph > free
    assert after == free


def _count_buffer_sets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sets of values and slopes laid out from now on (the list fills as they are)."""
    from paramshape.strategies import folded as folded_module

    made: list[int] = []
    original = folded_module._Buffers.__init__

    def counting(self: object, *args: object) -> None:
        made.append(1)
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(folded_module._Buffers, "__init__", counting)
    return made


def test_without_torchs_memory_counter_every_set_is_new(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch without the storage use count: every recomputation takes its set as in use and
    writes a new one (slower, never a slope that is not its values'); training is unchanged."""
    from paramshape.strategies import folded as folded_module

    monkeypatch.setattr(folded_module, "_storage_use_count", None)
    made = _count_buffer_sets(monkeypatch)
    default, folded = _pair()
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (default, folded)]
    for step in range(4):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()
    assert len(made) == 2 + 4  # the first two, then one per recomputation
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-9)


def test_graphs_kept_from_every_step_still_train_as_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that keeps every step's loss (and so its graph) alive: each recomputation from the
    third on finds its set in use and writes a new one; training is still the default mode's. A
    loop that keeps nothing lays out its two sets once."""
    made = _count_buffer_sets(monkeypatch)
    default, folded = _pair()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (default, folded)]
    kept: list[torch.Tensor] = []
    for step in range(6):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            loss = _loss(model, step)
            loss.backward()
            kept.append(loss)
            optimizer.step()
    assert len(made) == 2 + 4  # the first two sets, then a new one for each of steps 3 to 6
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    made.clear()
    _, plain_loop = _pair()
    optimizer = torch.optim.Adam(plain_loop.parameters(), lr=1e-3)
    for step in range(6):
        optimizer.zero_grad()
        loss = _loss(plain_loop, step)
        loss.backward()
        optimizer.step()
    assert len(made) == 2


def test_layout_follows_freezing_and_moves() -> None:
    """The persistent values are laid out again when a member's requires_grad, dtype or memory
    changes: gradients reach exactly the trained stored tensors, values follow the move."""
    default, folded = _pair()
    for model in (default, folded):
        model[2].parametrizations.weight.original.requires_grad_(False)
    _loss(default).backward()
    _loss(folded).backward()
    assert folded[2].parametrizations.weight.original.grad is None
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-9)
    default, folded = default.double(), folded.double()
    for i in (0, 2, 4):
        assert folded[i].weight.dtype == torch.float64
        torch.testing.assert_close(folded[i].weight, default[i].weight, rtol=0, atol=1e-15)


def test_box_value_and_slope_follows_its_bounds() -> None:
    """Box.value_and_slope keeps what it derives from its bounds between calls; an in-place write
    to a bound, a new bound and another dtype are seen."""
    box = ps.Box(-0.01, 0.01)
    x = torch.linspace(-0.05, 0.05, 11)
    for change in (None, "fill", "assign", "double"):
        if change == "fill":
            with torch.no_grad():
                box.high.fill_(0.02)
        elif change == "assign":
            box.low = -0.03
        elif change == "double":
            box = box.double()
            x = x.double()
        value, slope = box.value_and_slope(x)
        reference = x.clone().requires_grad_()
        expected = box(reference)
        (expected_slope,) = torch.autograd.grad(expected.sum(), reference)
        # Within 2 ulps of the larger bound: the fold tolerance of the values (small tensors'
        # forward takes the reference arithmetic, rounded in another order).
        eps = torch.finfo(x.dtype).eps
        bound = max(abs(float(box.low)), abs(float(box.high)))
        torch.testing.assert_close(value, expected.detach(), rtol=0, atol=2 * eps * bound)
        torch.testing.assert_close(slope, expected_slope, rtol=8 * eps, atol=8 * eps)


def test_a_group_of_frozen_tensors_serves_plain_values() -> None:
    """Every stored tensor of a group frozen: the values are the map of the stored tensors and
    require no grad (no flat leaf, no hook); unfrozen again, they train."""
    default, folded = _pair()
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    for i in (0, 2, 4):
        value = folded[i].weight
        assert not value.requires_grad
        torch.testing.assert_close(value, default[i].weight.detach(), rtol=0, atol=1e-9)
    for parameter in folded.parameters():
        parameter.requires_grad_(True)
    _loss(folded).backward()
    _loss(default).backward()
    for a, b in zip(_grads(default), _grads(folded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)


def test_a_tensor_folded_alone_reuses_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor too large for a group keeps two sets of value and slope too: its hooks are
    registered once per set, its values and gradients are the default mode's step after step."""
    from paramshape.strategies.folded import GROUP_MAX_ELEMENTS

    torch.manual_seed(0)
    rows = GROUP_MAX_ELEMENTS // 64 + 1
    base = nn.Linear(64, rows, bias=False)
    with torch.no_grad():
        base.weight.mul_(0.0099 / base.weight.abs().max())
    default = ps.constrain(copy.deepcopy(base), "weight", ps.Box(*BOX))
    folded = ps.constrain(copy.deepcopy(base), "weight", ps.Box(*BOX), fold=True)
    assert folded.parametrizations.weight._paramshape_folded._group is None
    calls = _count_hook_registrations(monkeypatch)
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (default, folded)]
    x = torch.randn(8, 64)
    for _ in range(3):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
        a, b = default.parametrizations.weight.original, folded.parametrizations.weight.original
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-9)
        for optimizer in optimizers:
            optimizer.step()
    assert calls == [torch.Size([rows, 64])] * 2
    torch.testing.assert_close(folded.weight, default.weight, rtol=0, atol=4e-9)


@pytest.mark.parametrize("rows", [16, 300], ids=["grouped", "alone"])
def test_reads_under_inference_mode_and_training_after(rows: int) -> None:
    """A read under ``torch.inference_mode`` (no version counters there) computes the value
    without keeping anything; training afterwards is the default mode's."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(rows, rows), nn.Tanh(), nn.Linear(rows, 1))
    default = ps.constrain(copy.deepcopy(base), "*", ps.Box(-1.0, 1.0), init="project")
    folded = ps.constrain(copy.deepcopy(base), "*", ps.Box(-1.0, 1.0), init="project", fold=True)
    x = torch.randn(4, rows)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), default(x), rtol=1e-6, atol=1e-7)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (default, folded)]
    for _ in range(3):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), default(x), rtol=1e-5, atol=1e-6)
    for a, b in zip(default.parameters(), folded.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_process_group_is_refused_at_constrain_and_at_the_next_recomputation(tmp_path) -> None:
    """DDP and FSDP reduce the stored tensor's gradient from its own hooks, which a folded gradient
    bypasses: with a process group up, constrain(fold=True) refuses (changing nothing), and a model
    folded before the group came up refuses at its next recomputation, never training unreduced."""
    import torch.distributed as dist

    _, folded = _pair()
    _loss(folded).backward()
    model = _model(torch.float32)
    before = module_snapshot.take(model)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(
            ps.UnsupportedTensorError, match=r"fold=True is not supported with torch\.distributed"
        ):
            ps.constrain(model, "*", ps.Box(*BOX), fold=True)
        module_snapshot.assert_same(before, module_snapshot.take(model))
        with torch.no_grad():
            for parameter in folded.parameters():
                parameter.add_(1e-3)  # what a step does: the next read recomputes
        with pytest.raises(
            ps.UnsupportedTensorError, match=r"fold=True is not supported with torch\.distributed"
        ):
            _loss(folded)
    finally:
        dist.destroy_process_group()
    _loss(folded).backward()  # without the group, it serves again


def test_a_bound_written_in_place_moves_only_its_own_tensor_out_of_the_group() -> None:
    """One member's bound written in place (valid bounds take effect): that member leaves the
    group and is recomputed with its own settings; the members whose settings are unchanged stay
    together with theirs. (A checkpoint load writes every bound, so it cannot tell the two apart.)"""
    _, folded = _pair()
    _loss(folded).backward()  # the group computed once
    chain = folded[2].parametrizations.weight
    with torch.no_grad():
        chain[0].high.fill_(0.02)
    moved = folded[2].weight.detach()
    torch.testing.assert_close(moved, ps.Box(-0.01, 0.02)(chain.original.detach()), rtol=0, atol=4e-9)
    assert chain._paramshape_folded._group is None
    group = folded[0].parametrizations.weight._paramshape_folded._group
    assert group is not None
    assert len(group.members) == 5  # the other weights and the three biases
    for index in (0, 4):
        stored = folded[index].parametrizations.weight.original.detach()
        torch.testing.assert_close(folded[index].weight.detach(), ps.Box(*BOX)(stored), rtol=0, atol=2e-9)


def test_a_group_with_a_strided_stored_tensor_follows_every_step() -> None:
    """A member whose stored tensor is not contiguous (a channels_last convolution weight) is
    joined into the group's flat tensor by a copy, which must be made afresh at every recomputation:
    the values follow every optimizer step, as the default mode's do."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.mul_(0.009 / parameter.abs().max())
    default = ps.constrain(copy.deepcopy(base), "*", ps.Box(*BOX))
    folded = ps.constrain(copy.deepcopy(base), "*", ps.Box(*BOX), fold=True)
    for model in (default, folded):
        model.to(memory_format=torch.channels_last)  # the stored weights become strided
    assert not folded[0].parametrizations.weight.original.is_contiguous()
    assert folded[0].parametrizations.weight._paramshape_folded._group is not None
    x = torch.randn(2, 2, 6, 6).to(memory_format=torch.channels_last)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (default, folded)]
    for _ in range(3):
        for model, optimizer in zip((default, folded), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
        for a, b in zip(default.parameters(), folded.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(folded[0].weight, default[0].weight, rtol=1e-5, atol=1e-9)


def test_a_value_kept_costs_one_more_set_not_one_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value read and kept (a snapshot for logging) holds its set: the recomputation whose turn
    it is writes a new set in its place, and from then on the two sets alternate again, one new set
    in all, however long the loop runs; the kept value never changes."""
    _, folded = _pair()
    optimizer = torch.optim.SGD(folded.parameters(), lr=1e-3)
    _loss(folded).backward()
    optimizer.step()
    kept = folded[0].weight.detach()  # a view of the set just written, held from here on
    snapshot = kept.clone()
    made = _count_buffer_sets(monkeypatch)
    for step in range(8):
        optimizer.zero_grad()
        _loss(folded, step).backward()
        optimizer.step()
    assert len(made) == 1
    assert torch.equal(kept, snapshot)


@pytest.mark.parametrize("elements", [2, GROUP_MAX_ELEMENTS, GROUP_MAX_ELEMENTS + 1])
def test_two_tensors_form_a_group_up_to_the_size_limit(elements: int) -> None:
    """Two small tensors of one call are recomputed together; a tensor over
    GROUP_MAX_ELEMENTS values is recomputed on its own."""
    holder = nn.Module()
    holder.a = nn.Parameter(torch.full((elements,), 0.001))
    holder.b = nn.Parameter(torch.full((3,), -0.001))
    ps.constrain(holder, "*", ps.Box(*BOX), fold=True)
    group_a = holder.parametrizations.a._paramshape_folded._group
    group_b = holder.parametrizations.b._paramshape_folded._group
    if elements <= GROUP_MAX_ELEMENTS:
        assert group_a is not None
        assert group_a is group_b
        holder.a  # noqa: B018  # a read recomputes the pair, which stays a group
        assert holder.parametrizations.a._paramshape_folded._group is group_a
        assert group_a.members == [
            holder.parametrizations.a._paramshape_folded,
            holder.parametrizations.b._paramshape_folded,
        ]
    else:
        assert group_a is None
        assert group_b is None  # a group of one is none
    torch.testing.assert_close(holder.a.detach(), torch.full((elements,), 0.001), rtol=0, atol=1e-9)


def test_a_model_built_on_meta_folds_after_to_empty() -> None:
    """fold=True on a model built on the meta device (no values yet): nothing is computed or
    grouped then; after to_empty() and a checkpoint load it trains as the default mode does."""
    default, _ = _pair()
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    ps.constrain(model, "*", ps.Box(*BOX), fold=True)
    model = model.to_empty(device="cpu")
    model.load_state_dict(default.state_dict())
    for model_ in (default, model):
        _loss(model_).backward()
    for a, b in zip(default.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("held", [None, "dense"])
def test_the_gradient_hook_multiplies_a_strided_gradient_of_any_layout(held: str | None) -> None:
    """The folded gradient hook on a gradient that is not contiguous (torch's accumulation gives
    contiguous ones to a contiguous value; a hook or a user may set another): u.grad gets g f'(u)."""
    from paramshape.strategies.folded import _chain_rule

    raw = torch.zeros(3, 4, requires_grad=True)
    slope = torch.linspace(0.5, 2.0, 12).reshape(3, 4)
    value = torch.zeros(3, 4, requires_grad=True)
    incoming = torch.arange(12.0).reshape(4, 3).t()  # a transposed view: not contiguous
    assert not incoming.is_contiguous()
    if held == "dense":
        raw.grad = torch.ones(3, 4)
    value.grad = incoming
    _chain_rule(raw, slope)(value)
    expected = incoming * slope + (0 if held is None else 1)
    torch.testing.assert_close(raw.grad, expected, rtol=0, atol=0)
    assert value.grad is None
