"""Issue 10, third round: the gaps the second round left (blockwise checks of matrix sets and of
``MaxNorm(dim=0)``, constrain without a backup copy, ``method="project"`` assignment,
``PositiveDeterminant``'s dtype moves, loads and moves checked from the outermost known module)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.attach import applying
from paramshape.attach.planning import Plan
from paramshape.transforms import base as transform_base
from tests.module_snapshot import assert_same, take


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 entries, so tiny tensors are checked in several blocks."""
    monkeypatch.setattr(transform_base, "_BLOCK_ELEMENTS", 64)


def _whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transform_base, "_BLOCK_ELEMENTS", 1 << 40)


# ------------------------------------------------------------------ blockwise matrix checks
MATRIX_SETS = [ps.PositiveDefinite, ps.CorrMatrix, ps.Orthogonal, ps.Symmetric, ps.CorrCholesky]


@pytest.mark.parametrize("family", MATRIX_SETS, ids=lambda f: f.__name__)
def test_matrix_sets_checked_in_blocks_of_matrices(family: type, small_blocks: None) -> None:
    transform = family()
    torch.manual_seed(0)
    value = transform.sample((12, 4, 4))
    blocks = list(transform._row_blocks(value, membership=True))
    assert len(blocks) > 1
    assert all(part.shape[-2:] == (4, 4) for _, part, _ in blocks)
    assert bool(transform.contains(value).all())
    bad = value.clone()
    bad[9, 0, 1] = 7.0  # breaks every one of these sets (symmetry, a unit row, a zero upper entry)
    inside = transform.contains(bad)
    assert inside.shape == (12, 1, 1)
    assert [int(i) for i in (~inside).nonzero()[:, 0]] == [9]
    with pytest.raises(ps.InfeasibleValueError, match=r"1 of 12 matrices .*at \[9"):
        transform.validate(bad)


@pytest.mark.parametrize("family", [ps.PositiveDefinite, ps.CorrMatrix, ps.Symmetric])
def test_blockwise_matrix_inverse_equals_whole(family: type, monkeypatch: pytest.MonkeyPatch) -> None:
    transform = family()
    torch.manual_seed(1)
    value = transform.sample((10, 3, 3), dtype=torch.float64)
    monkeypatch.setattr(transform_base, "_BLOCK_ELEMENTS", 32)
    blocked = transform.inverse_in_blocks(value)
    _whole(monkeypatch)
    whole = transform.inverse_in_blocks(value)
    # Per-matrix LAPACK calls: the same numbers up to the batch's summation order.
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", [ps.Orthogonal, ps.PositiveDeterminant, ps.SpecialLinear, ps.Grassmannian])
def test_state_setting_inverse_runs_in_blocks(family: type, monkeypatch: pytest.MonkeyPatch) -> None:
    # The inverse sets a base per matrix: each block on a copy, the bases gathered at the end.
    torch.manual_seed(4)
    value = family().sample((10, 3, 3), dtype=torch.float64)
    monkeypatch.setattr(transform_base, "_BLOCK_ELEMENTS", 32)
    blocked = family()
    assert len(list(blocked._row_blocks(value))) > 1
    stored = blocked.inverse_in_blocks(value)
    _whole(monkeypatch)
    whole = family()
    expected = whole.inverse_in_blocks(value)
    assert torch.equal(stored, expected)
    assert blocked.base.shape == whole.base.shape
    torch.testing.assert_close(blocked.base, whole.base, rtol=0, atol=1e-12)
    torch.testing.assert_close(blocked(stored), value, rtol=0, atol=1e-12)


def test_max_norm_dim0_checked_in_blocks_of_columns(small_blocks: None) -> None:
    transform = ps.MaxNorm(1.0, dim=0)
    torch.manual_seed(2)
    value = transform.to_interior(torch.randn(16, 40))
    blocks = list(transform._row_blocks(value, membership=True))
    assert len(blocks) > 1
    assert all(part.shape[0] == 16 for _, part, _ in blocks)
    assert transform.contains(value).shape == (1, 40)
    bad = value.clone()
    bad[:, 33] *= 50.0
    assert [int(i) for i in (~transform.contains(bad)).nonzero()[:, 1]] == [33]
    with pytest.raises(ps.InfeasibleValueError, match=r"1 of 40 slices .*\[:, 33\]"):
        transform.validate(bad)
    inverse = transform.inverse_in_blocks(value)
    torch.testing.assert_close(transform(inverse), value, rtol=1e-5, atol=1e-6)


def test_constrain_batch_of_matrices_in_blocks(small_blocks: None) -> None:
    holder = nn.Module()
    holder.weight = nn.Parameter(ps.PositiveDefinite().sample((8, 3, 3)))
    expected = holder.weight.detach().clone()
    ps.constrain(holder, "weight", ps.PositiveDefinite())
    torch.testing.assert_close(holder.weight, expected, rtol=1e-5, atol=1e-6)
    bad = expected.clone()
    bad[6] = -torch.eye(3)
    before = take(holder)
    with pytest.raises(ps.InfeasibleValueError, match=r"matrix at \[6\]"):
        holder.weight = bad
    assert_same(before, take(holder))


# ------------------------------------------------------------------ constrain without a backup copy
def test_constrain_swaps_storage_of_a_sole_tensor_and_rolls_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    first = model[0].weight
    with torch.no_grad():
        first.clamp_(-0.5, 0.5)
    pointer, values = first.data_ptr(), first.detach().clone()
    before = take(model)
    real = applying._apply_one
    applied: list[Plan] = []

    def interrupted(root: nn.Module, plan: Plan) -> None:
        applied.append(plan)
        real(root, plan)
        if len(applied) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(applying, "_apply_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ps.constrain(model, {"0.weight": ps.Box(-1, 1), "1.weight": ps.Box(-1, 1)})
    monkeypatch.setattr(applying, "_apply_one", real)
    assert [plan.swap for plan in applied] == [True, True]  # no backup copies were taken
    assert_same(before, take(model))
    assert model[0].weight is first
    assert first.data_ptr() == pointer  # its own storage back, not a copy of it
    assert torch.equal(first, values)
    ps.constrain(model, "0.weight", ps.Box(-1, 1))
    assert model[0].parametrizations.weight.original is first
    torch.testing.assert_close(model[0].weight, values)


def test_tied_tensor_is_copied_for_the_rollback() -> None:
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # one Parameter in two modules: project keeps it plain
    view = model[0].weight.detach()  # a second tensor on the storage: no swap
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    with pytest.warns(ps.ParamshapeWarning, match="moved"):
        ps.constrain(model, "0.weight", ps.Box(-1, 1), method="project", init="project")
    assert torch.equal(view, torch.ones(5, 3))  # written into the shared storage


def test_project_constrain_writes_into_shared_storage() -> None:
    # Two parameters viewing one flat buffer (as DDP/FSDP buckets do): a tensor kept plain gets its
    # projected values written into the shared storage, which stays shared (no storage swap).
    flat = torch.zeros(8)
    layer = nn.Module()
    layer.a = nn.Parameter(flat[:4])
    layer.b = nn.Parameter(flat[4:])
    with torch.no_grad():
        layer.a.fill_(3.0)
    with pytest.warns(ps.ParamshapeWarning, match="moved 4 of 4"):
        ps.constrain(layer, "a", ps.Box(-1, 1), method="project", init="project")
    assert layer.a.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    assert torch.equal(flat[:4], torch.ones(4))
    assert torch.equal(flat[4:], torch.zeros(4))


# ------------------------------------------------------------------ method="project": assignment
@pytest.mark.parametrize("how", ["setattr", "register_parameter"])
def test_project_assignment_outside_the_set_is_refused(how: str) -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="project")
    before = take(layer)
    outside = nn.Parameter(torch.full((2, 2), 5.0))

    def assign() -> None:
        if how == "setattr":
            layer.weight = outside
        else:
            layer.register_parameter("weight", outside)

    with pytest.raises(
        ps.InfeasibleValueError, match=r"'weight' of Linear .*4 of 4 values .*method='project'"
    ):
        assign()
    assert_same(before, take(layer))


def test_project_assignment_inside_the_set_is_registered_and_projected_later() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="project")
    inside = nn.Parameter(torch.full((2, 2), 0.5))
    layer.weight = inside
    assert layer.weight is inside
    optimizer = torch.optim.SGD(layer.parameters(), lr=10.0)
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert bool((layer.weight.abs() <= 1).all())  # the new tensor is the one projected


def test_project_assignment_shape_and_dtype() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="project")
    with pytest.raises(ps.ShapeMismatchError, match=r"shape \(3, 3\).*needs \(2, 2\)"):
        layer.weight = nn.Parameter(torch.zeros(3, 3))
    before = take(layer)
    with pytest.raises(ps.InfeasibleValueError, match="float64"):
        layer.weight = nn.Parameter(torch.full((2, 2), 2.0, dtype=torch.float64))
    assert_same(before, take(layer))
    assert ps.constraints(layer)["weight"].low.dtype == torch.float32  # checked on a copy
    layer.weight = nn.Parameter(torch.full((2, 2), 0.25, dtype=torch.float64))
    assert layer.weight.dtype == torch.float64


def test_penalty_assignment_must_be_finite() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="penalty", weight=1.0)
    layer.weight = nn.Parameter(torch.full((2, 2), 5.0))  # outside is allowed: the penalty acts
    before = take(layer)
    with pytest.raises(ps.InfeasibleValueError, match="NaN or infinite"):
        layer.weight = nn.Parameter(torch.full((2, 2), float("nan")))
    assert_same(before, take(layer))


def test_project_load_with_assign_still_checked() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="project")
    good = {"weight": torch.full((2, 2), 0.5), "bias": torch.zeros(2)}
    layer.load_state_dict(good, assign=True)
    assert torch.equal(layer.weight, good["weight"])
    with pytest.raises(ps.InfeasibleValueError):
        layer.load_state_dict({"weight": torch.full((2, 2), 3.0), "bias": torch.zeros(2)}, assign=True)
    assert torch.equal(layer.weight, good["weight"])


# ------------------------------------------------------------------ PositiveDeterminant's dtype moves
def _determinant_layer(family: type) -> nn.Linear:
    torch.manual_seed(3)
    layer = ps.constrain(nn.Linear(4, 4), "weight", family(), init="sample")
    with torch.no_grad():
        stored = layer.parametrizations.weight.original
        stored.copy_(torch.randn(4, 4))
        stored.mul_(3.0 / torch.linalg.vector_norm(stored))  # norm 3: above float16's cap 1.73
    return layer


@pytest.mark.parametrize("family", [ps.PositiveDeterminant, ps.SpecialLinear])
def test_determinant_double_keeps_the_value(family: type) -> None:
    layer = _determinant_layer(family)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(2.0)  # norm 6: capped at float32's 4.0
    value = layer.weight.detach().double()
    layer.double()
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(layer.weight.detach(), value, rtol=0, atol=64 * eps * float(value.abs().max()))


@pytest.mark.parametrize("family", [ps.PositiveDeterminant, ps.SpecialLinear])
def test_determinant_half_refused_before_anything_converts(family: type) -> None:
    layer = _determinant_layer(family)
    model = nn.Sequential(nn.Linear(2, 2), layer)
    before = take(model)
    with pytest.raises(
        ps.SpecError,
        match=r"'weight' of Linear: a move to torch.float16 would change .*Frobenius norm [23](\.\d+)?, above torch.float16's cap 1\.733",
    ):
        model.half()
    assert_same(before, take(model))
    # The workaround the message gives: the value moves into the base, the exponent to 0.
    layer.weight = layer.weight.detach()
    value = layer.weight.detach().clone()
    model.half()
    torch.testing.assert_close(layer.weight.float(), value, rtol=2e-3, atol=2e-3 * float(value.abs().max()))
    assert bool(torch.linalg.det(layer.weight.double()) > 0)


def test_determinant_small_exponent_moves_to_half() -> None:
    layer = _determinant_layer(ps.PositiveDeterminant)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(0.5)  # norm 1.5: under every cap
    value = layer.weight.detach().clone()
    layer.half()
    torch.testing.assert_close(layer.weight.float(), value, rtol=2e-3, atol=2e-3 * float(value.abs().max()))


# ------------------------------------------------------------------ loads and moves as a whole
def _bad_checkpoint(model: nn.Module, key: str) -> dict[str, torch.Tensor]:
    state = {k: torch.full_like(v, 0.125) for k, v in ps.plain_state_dict(model).items()}
    state[key] = torch.full_like(state[key], -3.0)  # outside Box(-1, 1) and Box(0, 1e5)
    return state


def test_pattern_root_move_refused_before_plain_modules_convert() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    ps.constrain(model, {"2.weight": ps.Box(0, 1e5)}, init="sample")
    before = take(model)
    with pytest.raises(ps.SpecError, match="No constrained module was converted") as error:
        model.half()
    assert "torch converted these modules" not in str(error.value)
    assert_same(before, take(model))


def test_parent_built_after_constraining_checks_loads_and_moves_first() -> None:
    block = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(0, 1e5), init="sample")
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), block))
    before = take(model)
    with pytest.raises(ps.InfeasibleValueError, match="Nothing was loaded"):
        model.load_state_dict(_bad_checkpoint(model, "1.1.weight"))
    assert_same(before, take(model))
    with pytest.raises(ps.SpecError, match="No constrained module was converted") as error:
        model.half()
    assert "torch converted these modules" not in str(error.value)
    assert_same(before, take(model))
    good = {k: v.clamp(0.0, 1.0) for k, v in _bad_checkpoint(model, "1.1.weight").items()}
    model.load_state_dict(good)
    assert torch.equal(model[0].weight, good["0.weight"])
    assert torch.equal(block.weight, good["1.1.weight"])


def test_parent_set_as_attribute_is_checked_too() -> None:
    block = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1))
    model = nn.Module()
    model.plain = nn.Linear(2, 2)
    model.block = block  # __setattr__, not add_module
    before = take(model)
    with pytest.raises(ps.InfeasibleValueError):
        model.load_state_dict(_bad_checkpoint(model, "block.weight"))
    assert_same(before, take(model))


def test_parent_that_existed_before_constraining_is_the_documented_limit() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model[1], "weight", ps.Box(-1, 1))  # constrained alone, inside an existing parent
    with pytest.raises(ps.InfeasibleValueError, match=r"torch loaded these modules .*'0' \(Linear\)"):
        model.load_state_dict(_bad_checkpoint(model, "1.weight"))


def test_root_checks_survive_deepcopy_and_pickle() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model, "1.weight", ps.Box(0, 1e5), init="sample")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        before = take(clone)
        with pytest.raises(ps.SpecError):
            clone.half()
        assert_same(before, take(clone))
        assert model[0].weight.dtype == torch.float32
        clone.double()  # a valid move converts the clone, not the original
        assert clone[0].weight.dtype == torch.float64
        assert model[0].weight.dtype == torch.float32


def test_a_refused_constrain_leaves_no_root_checks_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    real = applying._apply_one

    def interrupted(root: nn.Module, plan: Plan) -> None:
        real(root, plan)  # installs the root's checks, then the call is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(applying, "_apply_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ps.constrain(model, "1.weight", ps.Box(-1, 1))
    monkeypatch.setattr(applying, "_apply_one", real)
    assert "_apply" not in model.__dict__
    assert "_paramshape_root" not in model.__dict__
    assert not model._load_state_dict_pre_hooks
    # A later constrain installs them all again.
    ps.constrain(model, "1.weight", ps.Box(0, 1e5), init="sample")
    assert model._load_state_dict_pre_hooks
    assert "_apply" in model.__dict__
    before = take(model)
    with pytest.raises(ps.SpecError):
        model.half()
    assert_same(before, take(model))
