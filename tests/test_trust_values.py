"""Issue 10, part A: values entering through assignment, construction, spec strings and dtype moves.

One section per class of the issue: the shape rule of an assigned value (1), non-tensor and other
dtype values (2), number bounds at the tensor's precision (3), spec strings of bounded cost (10),
shape checks on direct use (11), dtype moves that round but never change the map (12), Compose's
domain and Orthogonal's inverse (13). Each case is checked against an independent reference (a plain
tensor, Python's own parser, float64 arithmetic), and every refusal leaves the module as it was.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.transforms.matrix.base import matrix_tolerance

from .test_constrain import assert_unchanged, snapshot

# A spread of families: elementwise (bounds broadcast), vector, shape-changing vector, matrix.
FAMILIES = [
    ("box(-1, 1)", (3, 4)),
    ("positive", (1,)),
    ("simplex", (2, 5)),
    ("simplex(method='ilr')", (2, 5)),
    ("sum_to_zero", (3, 4)),
    ("positive_definite", (3, 3)),
    ("orthogonal", (4, 3)),
]


def holder(shape: tuple[int, ...], spec: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(shape, dtype=dtype))
    return ps.constrain(module, "w", spec, init="sample")


# --------------------------------------------------------------------- 1. the shape rule
@pytest.mark.parametrize(("spec", "shape"), FAMILIES)
def test_assignment_of_another_shape_is_refused_and_changes_nothing(
    spec: str, shape: tuple[int, ...]
) -> None:
    module = holder(shape, spec)
    before = snapshot(module)
    wrong = (*shape[:-1], shape[-1] + 1)
    for value in (torch.zeros(wrong), torch.zeros((2, *shape)), torch.eye(5)):
        with pytest.raises(ps.ShapeMismatchError, match=r"'w' of Module \(shape .*never changes shape"):
            module.w = value
        assert_unchanged(module, before)
        assert module.w.shape == shape


@pytest.mark.parametrize(("spec", "shape"), FAMILIES)
def test_assigning_the_current_value_keeps_it(spec: str, shape: tuple[int, ...]) -> None:
    module = holder(shape, spec)
    value = module.w.detach().clone()
    module.w = value
    torch.testing.assert_close(module.w.detach(), value, rtol=1e-5, atol=1e-6)


def test_a_value_that_broadcasts_fills_the_tensor_without_changing_its_shape() -> None:
    # The GPyTorch habit: a 0-d noise assigned to a shape-(1,) parameter keeps shape (1,).
    module = holder((1,), "positive")
    stored = module.parametrizations.w.original
    module.w = torch.tensor(0.01)
    assert module.w.shape == (1,)
    assert module.parametrizations.w.original is stored
    torch.testing.assert_close(module.w.detach(), torch.tensor([0.01]))
    # One row for every row, as Tensor.copy_ broadcasts: compared with a plain tensor.
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    row = torch.tensor([0.1, -0.2, 0.3])
    layer.weight = row
    torch.testing.assert_close(layer.weight.detach(), torch.zeros(2, 3).copy_(row))
    assert layer.weight.stride() == (3, 1)  # materialised, not a stride-0 view


def test_a_broadcast_value_is_still_checked_against_the_set() -> None:
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    before = snapshot(layer)
    with pytest.raises(ps.InfeasibleValueError, match="6 of 6 values lie outside"):
        layer.weight = 2.0
    assert_unchanged(layer, before)


def test_init_and_plain_checkpoint_share_the_shape_rule() -> None:
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    before = snapshot(layer)
    with pytest.raises(ps.ShapeMismatchError, match="never changes shape"):
        ps.init_(layer, "weight", lambda value: value.resize_(3, 3))
    assert_unchanged(layer, before)
    # A checkpoint needs the exact shape, as load_state_dict does for a plain model.
    plain = {"weight": torch.zeros(1, 3), "bias": torch.zeros(2)}
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.Linear(3, 2).load_state_dict(plain)
    with pytest.raises(ps.ShapeMismatchError, match=r"has shape \(1, 3\).*needs \(2, 3\)"):
        layer.load_state_dict(plain)
    assert_unchanged(layer, before)


# ------------------------------------------------------ 2. numbers, arrays, other dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numbers_lists_and_arrays_are_converted_to_the_tensors_dtype(dtype: torch.dtype) -> None:
    reference = torch.tensor([[0.1, -0.2], [0.3, 0.4]], dtype=dtype)
    for value in (
        [[0.1, -0.2], [0.3, 0.4]],
        np.array([[0.1, -0.2], [0.3, 0.4]]),
        np.array([[0.1, -0.2], [0.3, 0.4]], dtype=np.float32),
        reference.double(),
        reference.float(),
    ):
        layer = ps.constrain(nn.Linear(2, 2).to(dtype), "weight", ps.Box(-1, 1))
        layer.weight = value
        assert layer.weight.dtype == dtype
        expected = torch.as_tensor(np.asarray(value)).to(dtype)  # one rounding, from the value given
        # The stored tensor is exactly the inverse of that rounded value (a fresh Box's inverse).
        assert torch.equal(layer.parametrizations.weight.original, ps.Box(-1, 1).to(dtype).inverse(expected))
    layer = ps.constrain(nn.Linear(2, 2).to(dtype), "weight", ps.Box(-1, 1))
    layer.weight = 0.1
    expected = ps.Box(-1, 1).to(dtype).inverse(torch.full((2, 2), 0.1, dtype=dtype))
    assert torch.equal(layer.parametrizations.weight.original, expected)


def test_integer_tensors_are_their_numbers() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-2, 2))
    layer.weight = torch.tensor([[1, 0], [-1, 1]])
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "cannot assign None to a constrained tensor.*ps.unconstrain"),
        (True, "cannot assign a bool"),
        ("0.5", "cannot assign a str"),
        (object(), "cannot assign a object"),
        (torch.ones(2, 2, dtype=torch.bool), r"cannot assign a boolean value \(bool\).*\.float\(\)"),
        (torch.ones(2, 2, dtype=torch.complex64), r"cannot assign a complex value \(complex64\)"),
        (np.ones((2, 2), dtype=np.complex128), r"cannot assign a complex value \(complex128\)"),
        ([[0.1, 0.2], [0.3]], "cannot convert the list"),
    ],
)
def test_values_that_are_not_real_numbers_are_refused(value: object, match: str) -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1))
    before = snapshot(layer)
    with pytest.raises(
        ps.UnsupportedTensorError, match=r"'weight' of Linear \(shape \(2, 2\), float32\): " + match
    ):
        layer.weight = value
    assert_unchanged(layer, before)


def test_a_transform_used_on_its_own_converts_numbers_in_the_default_dtype() -> None:
    box = ps.Box(-1.0, 1.0)
    raw = box.right_inverse(0.5)
    assert raw.dtype == torch.get_default_dtype()
    assert raw.shape == ()
    torch.testing.assert_close(box(raw), torch.tensor(0.5))
    with pytest.raises(ps.UnsupportedTensorError, match="cannot assign None"):
        box.right_inverse(None)


def test_the_expected_dtype_follows_dtype_moves() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1)).double()
    layer.weight = [[0.1, 0.2], [0.3, 0.4]]
    assert layer.weight.dtype == torch.float64
    stored = layer.parametrizations.weight.original
    assert torch.equal(
        stored[0], ps.Box(-1, 1).double().inverse(torch.tensor([0.1, 0.2], dtype=torch.float64))
    )


# ------------------------------------------------------------- 10. spec strings
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("box(" + "-" * 1000 + "1, 2)", "more than 2 signs in a row"),
        ("box(" + "-" * 10000 + "1, 2)", "characters long, more than 4096"),
        ("box(" + "[" * 100 + "1" + "]" * 100 + ", 2)", "brackets nested 101 deep"),
        ("box(" + "(" * 300 + "1" + ")" * 300 + ", 2)", "brackets nested"),
        ("box(low=2, high=3, low=-1)", "keyword 'low' is given twice"),
        ("box(1" + ", 1" * 3000 + ")", "characters long"),
    ],
)
def test_hostile_spec_strings_are_spec_errors(text: str, match: str) -> None:
    with pytest.raises(ps.SpecError, match=match):
        ps.resolve(text)
    module = nn.Linear(2, 2)
    before = snapshot(module)
    with pytest.raises(ps.SpecError, match=match):
        ps.constrain(module, "weight", text)
    assert_unchanged(module, before)


def test_python_itself_rejects_what_the_parser_rejects() -> None:
    # The reference: compile() refuses a repeated keyword, as parse_spec now does.
    with pytest.raises(SyntaxError):
        compile("box(low=2, high=3, low=-1)", "<spec>", "eval")


def test_ordinary_specs_still_parse() -> None:
    assert ps.resolve("box(--1, 2)").low.item() == 1.0
    assert ps.resolve("box(low=-1e-3, high=+2)").high.item() == 2.0
    nested = ps.resolve("box([[[0.0]], [[1.0]]], 5)")
    assert nested.low.shape == (2, 1, 1)


# ------------------------------------------------------------ 13. Compose's domain
@pytest.mark.parametrize(
    "parts",
    [
        (ps.Affine(0.0, 2.0), ps.Symmetric()),
        (ps.Symmetric(), ps.Affine(0.0, 2.0)),
        (ps.Affine(1.0, 1.0), ps.Simplex()),
        (ps.Box(-1, 1), ps.Affine(0.0, 3.0)),
    ],
)
def test_compose_domain_and_codomain_cover_its_event_dim(parts: tuple[ps.Transform, ...]) -> None:
    chain = ps.Compose(*parts)
    # torch's rule, checked on torch's own ComposeTransform of the same event dims.
    assert chain.domain.event_dim == chain.event_dim
    assert chain.codomain.event_dim == chain.event_dim
    x = torch.randn(2, 3, 3)
    assert chain.domain.check(x).shape == x.shape[: x.dim() - chain.event_dim]


def test_compose_log_det_has_the_batch_shape_torch_expects() -> None:
    chain = ps.Compose(ps.Affine(0.0, 2.0), ps.Symmetric())
    x = torch.randn(4, 3, 3)
    y = chain(x)
    ladj = chain.log_abs_det_jacobian(x, y)
    assert ladj.shape == x.shape[: x.dim() - chain.domain.event_dim]
    assert math.isfinite(float(ladj.sum()))


# ------------------------------------------------- 3. number bounds at the tensor's precision
@pytest.mark.parametrize(
    ("build", "name", "number"),
    [
        (lambda: ps.GreaterThan(1e-4), "low", 1e-4),
        (lambda: ps.LessThan(0.1), "high", 0.1),
        (lambda: ps.Box(0.1, 0.7), "low", 0.1),
        (lambda: ps.Box(0.1, 0.7), "high", 0.7),
        (lambda: ps.SoftClip(-0.3, 0.3), "high", 0.3),
        (lambda: ps.Affine(0.1, 3.3), "scale", 3.3),
    ],
)
def test_a_number_bound_is_that_number_at_the_tensors_precision(build, name: str, number: float) -> None:
    transform = build()
    # Constructed in the default dtype: the float32 rounding of the number, as before.
    assert getattr(transform, name).item() == torch.tensor(number, dtype=torch.float32).item()
    # Moved to float64, directly or through float16 and back: the float64 number, not float32's.
    assert getattr(transform.double(), name).item() == number
    assert getattr(transform.half().double(), name).item() == number
    module = ps.constrain(nn.Linear(2, 2), "weight", build(), init="sample").double()
    assert getattr(module.parametrizations.weight[0], name).item() == number


def test_a_float64_floor_is_never_undercut() -> None:
    # The reference is Python's float: 1e-4 in float64. float32's 9.99999997e-05 lies below it.
    module = ps.constrain(nn.Linear(2, 2).double(), "weight", ps.GreaterThan(1e-4), init="sample")
    module.weight = 1e-4  # exactly the floor: inside the closed set
    assert float(module.weight.detach().min()) >= 1e-4 * (1 - 4 * torch.finfo(torch.float64).eps)
    with torch.no_grad():
        module.parametrizations.weight.original.fill_(-1e4)  # far below: the map's floor
    assert float(module.weight.detach().min()) >= 1e-4


def test_a_float64_parameter_holding_the_bound_exactly_is_inside() -> None:
    layer = nn.Linear(2, 2).double()
    with torch.no_grad():
        layer.weight.fill_(0.1)
    ps.constrain(layer, "weight", ps.GreaterThan(0.1))  # init="keep" checks membership
    assert float(layer.weight.detach().min()) == pytest.approx(0.1, rel=4 * torch.finfo(torch.float64).eps)


def test_a_huge_bound_stays_finite_in_float64_and_is_refused_where_it_overflows() -> None:
    box = ps.Box(-1e300, 1e300)
    assert box.low.item() == -1e300
    assert box.high.item() == 1e300
    module = ps.constrain(nn.Linear(2, 2).double(), "weight", box, init="sample")
    before = snapshot(module)
    with pytest.raises(ps.InfeasibleValueError, match=r"above high=1e[+]?300"):
        module.weight = 1e305
    assert_unchanged(module, before)
    with pytest.raises(
        ps.SpecError, match=r"converting 'low' to torch.float32 would turn a finite bound into infinity"
    ):
        module.float()
    assert_unchanged(module, before)
    with pytest.raises(ps.SpecError, match="would turn a finite bound into infinity"):
        ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1e300, 1e300))


def test_a_bound_changed_in_place_is_not_reverted_by_a_dtype_move() -> None:
    box = ps.GreaterThan(1e-4)
    with torch.no_grad():
        box.low.fill_(0.5)
    assert box.double().low.item() == 0.5


def test_tensor_bounds_keep_their_own_precision() -> None:
    low = torch.tensor([0.1, 0.2], dtype=torch.float64)
    box = ps.Box(low, 1.0)
    assert box.low.dtype == torch.float64
    assert torch.equal(box.float().double().low, low)
    low32 = torch.tensor([0.1, 0.2])
    assert torch.equal(ps.Box(low32, 1.0).double().low, low32.double())


# ------------------------------------------------------------ 11. shape checks on direct use
MATRIX_SPECS = ["symmetric", "positive_definite", "corr_matrix", "corr_cholesky"]


@pytest.mark.parametrize("spec", MATRIX_SPECS)
@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3), "needs square matrices"),
        ((3,), "acts on matrices"),
        ((), "acts on matrices"),
        ((2, 0), "empty"),
    ],
)
def test_matrix_transforms_refuse_what_is_not_a_batch_of_square_matrices(
    spec: str, shape: tuple[int, ...], match: str
) -> None:
    transform = ps.resolve(spec)
    with pytest.raises(ps.ShapeMismatchError, match=match):
        transform(torch.rand(shape))


@pytest.mark.parametrize("spec", MATRIX_SPECS)
def test_bound_output_with_a_matrix_transform_checks_the_outputs_shape(spec: str) -> None:
    model = ps.bound_output(nn.Linear(2, 3), spec)
    with pytest.raises(ps.ShapeMismatchError, match="needs square matrices"):
        model(torch.rand(4, 2))  # a 4 x 3 output is no batch of square matrices
    with pytest.raises(ps.ShapeMismatchError, match="acts on matrices"):
        model(torch.rand(2))
    assert model(torch.rand(5, 3, 2)).shape == (5, 3, 3)


@pytest.mark.parametrize("spec", MATRIX_SPECS)
def test_matrix_transforms_still_map_square_batches(spec: str) -> None:
    transform = ps.resolve(spec)
    x = torch.randn(2, 3, 3)
    y = transform(x)
    assert y.shape == transform.forward_shape(x.shape)
    assert bool(transform.contains(y).all())


@pytest.mark.parametrize(
    "build",
    [lambda: ps.SumToZero(), lambda: ps.Simplex(method="ilr"), lambda: ps.SumToZero(dim=0)],
)
def test_sets_that_need_two_entries_say_so(build) -> None:
    transform = build()
    for stored in (torch.zeros(3, 0), torch.zeros(0)):
        with pytest.raises(ps.ShapeMismatchError, match="needs at least 2 entries"):
            transform(stored.mT if transform.dim == 0 and stored.dim() == 2 else stored)
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(3, 1) if transform.dim == -1 else torch.zeros(1, 3))
    before = snapshot(module)
    with pytest.raises(ps.ShapeMismatchError, match=r"needs at least 2 entries.*nothing to"):
        ps.constrain(module, "w", build(), init="sample")
    assert_unchanged(module, before)


def test_bounds_that_would_broadcast_the_input_up_are_refused() -> None:
    box = ps.Box(torch.zeros(3, 1), 1.0)
    with pytest.raises(ps.ShapeMismatchError, match="does not broadcast"):
        box(torch.zeros(2))  # would silently return a (3, 2) tensor
    assert box(torch.zeros(3, 5)).shape == (3, 5)


# --------------------------------------------------------------------------- 14. memory
@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 entries, so small tensors take the blockwise path of large ones."""
    from paramshape.transforms import base

    monkeypatch.setattr(base, "_BLOCK_ELEMENTS", 16)


BLOCKED = [
    lambda: ps.Box(-1.0, 1.0),
    lambda: ps.Box(torch.linspace(-2.0, -1.0, 37).reshape(37, 1), torch.full((1, 5), 2.0)),
    lambda: ps.GreaterThan(torch.linspace(0.0, 1.0, 5)),
    lambda: ps.LessThan(torch.zeros(37, 5)),
    lambda: ps.Positive(),
    lambda: ps.SoftClip(-1.0, torch.linspace(1.0, 2.0, 37).reshape(37, 1)),
]


@pytest.mark.parametrize("build", BLOCKED)
def test_blockwise_checks_and_inverse_equal_the_whole_tensor_ones(build, small_blocks) -> None:
    transform = build()
    y = torch.randn(37, 5, dtype=torch.float64) * 3
    y[4, 2] = math.nan
    # The reference: the transform's own per-element excess on the whole tensor, in one go.
    reference = transform._finite_excess(y) == 0
    assert len(list(transform._row_blocks(y))) > 1
    assert torch.equal(transform.contains(y), reference)
    with pytest.raises(ps.InfeasibleValueError) as caught:
        transform.validate(y)
    count = int((~reference).sum())
    assert f"{count} of {y.numel()} values lie outside" in str(caught.value)
    assert "value nan at [4, 2] is not finite" in str(caught.value)  # the worst: NaN counts as infinite
    inside = transform.sample((37, 5), dtype=torch.float64)
    assert torch.equal(transform.inverse_in_blocks(inside), transform.inverse(inside))


def test_blockwise_validate_names_the_worst_element_across_blocks(small_blocks) -> None:
    box = ps.Box(torch.zeros(40, 1), 1.0)
    y = torch.full((40, 3), 0.5)
    y[3, 1], y[31, 2], y[20, 0] = 1.5, 7.0, -2.0
    with pytest.raises(
        ps.InfeasibleValueError,
        match=r"3 of 120 values lie outside.*value 7.0 at \[31, 2\] is above high=1.0",
    ):
        box.validate(y)


def test_large_assignments_and_loads_go_through_the_blocks(small_blocks) -> None:
    layer = ps.constrain(nn.Linear(8, 6), "weight", ps.Box(torch.full((6, 1), -1.0), 1.0))
    value = torch.rand(6, 8) - 0.5
    layer.weight = value
    torch.testing.assert_close(layer.weight.detach(), value, rtol=1e-5, atol=1e-6)
    layer.load_state_dict({"weight": value * 0.5, "bias": torch.zeros(6)})
    torch.testing.assert_close(layer.weight.detach(), value * 0.5, rtol=1e-5, atol=1e-6)
    with pytest.raises(ps.InfeasibleValueError, match=r"1 of 48 values lie outside.*at \[5, 7\]"):
        layer.weight = torch.where(torch.arange(48).reshape(6, 8) == 47, 3.0, 0.0)


@pytest.mark.slow  # three fresh interpreters importing torch
def test_the_memory_benchmark_runs(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
    out = tmp_path / "memory.json"
    subprocess.run(
        [sys.executable, str(script), "--sizes", "1", "--json", str(out)], check=True, capture_output=True
    )
    results = json.loads(out.read_text())["results"]
    assert {r["operation"] for r in results} == {"constrain", "assign", "load"}
    assert all(math.isfinite(r["ratio"]) for r in results)


# -------------------------------------------- 12. a dtype move rounds, never changes the map
@pytest.mark.parametrize("shape", [(4, 5), (5, 4), (4, 4)])
def test_orthogonal_after_double_is_orthogonal_to_float64_precision(shape: tuple[int, int]) -> None:
    layer = ps.constrain(nn.Linear(shape[1], shape[0]), "weight", ps.Orthogonal(), init="sample")
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(0.3 * torch.randn(shape))
    before = layer.weight.detach().double()
    layer.double()
    value = layer.weight.detach()
    # The reference: Q Q^T (or Q^T Q) against the identity, in float64, with torch's own tolerance
    # rule for float64 (10 n epsilons), far below float32's 1e-7.
    tall = value if shape[0] >= shape[1] else value.mT
    gram = tall.mT @ tall
    assert (
        float((gram - torch.eye(gram.shape[0], dtype=torch.float64)).abs().max()) < 10 * max(shape) * 2.3e-16
    )
    assert bool(layer.parametrizations.weight[0].contains(value).all())
    # Only rounding moved: the float32 value up to float32's documented matrix tolerance (the
    # float32 map itself is only that accurate; float64 now computes it more exactly).
    allowed = matrix_tolerance(torch.float32, max(shape))
    torch.testing.assert_close(value, before, rtol=0, atol=allowed)
    # And a plain checkpoint of it loads into a float64 model.
    fresh = ps.constrain(nn.Linear(shape[1], shape[0]).double(), "weight", ps.Orthogonal(), init="sample")
    fresh.load_state_dict(ps.plain_state_dict(layer))
    torch.testing.assert_close(fresh.weight.detach(), value, rtol=0, atol=1e-13)


# ------------------------------------------------------ 13. Orthogonal's inverse side effect
def test_checking_a_value_through_compose_does_not_change_an_orthogonal_weight() -> None:
    chain = ps.Compose(ps.Affine(0.0, 1.0), ps.Orthogonal())
    layer = ps.constrain(nn.Linear(3, 3), "weight", chain, init="sample")
    before = snapshot(layer)
    value = layer.weight.detach().clone()
    transform = layer.parametrizations.weight[0]
    assert not bool(transform.contains(2 * torch.eye(3)).all())
    assert bool(transform.contains(torch.eye(3)).all())
    assert_unchanged(layer, before)
    assert torch.equal(layer.weight.detach(), value)


def test_orthogonal_refuses_a_tensor_its_base_does_not_fit() -> None:
    orthogonal = ps.Orthogonal()
    assert orthogonal(torch.zeros(3, 3)).shape == (3, 3)
    orthogonal.inverse(torch.eye(3).expand(2, 3, 3))  # the base is now a batch of two
    with pytest.raises(ps.ShapeMismatchError, match=r"base was set by an inverse.*\(2, 3, 3\)"):
        orthogonal(torch.zeros(3, 3))
    assert orthogonal(torch.zeros(2, 3, 3)).shape == (2, 3, 3)
