"""Issue 10, third round: a red team's new cases for the eight classes of hostile use.

Each section holds the cases that failed before this round (fixed in the package, by class) and a
spread of new ones that passed, over set families (elementwise, vector, matrix, complex, learnable
bounds, spec strings, FunctionTransform), strategies (reparam, fold=True, project, penalty) and entry
points. A refused call is compared with a full snapshot of the module taken before it
(``tests/module_snapshot.py``).
"""

from __future__ import annotations

import copy
import decimal
import io
import math
import pickle
import warnings
from fractions import Fraction
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps

from .module_snapshot import assert_same, take


def holder(spec, shape=(2, 2), *, dtype=torch.float32, **kwargs) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(shape, dtype=dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        return ps.constrain(module, "w", spec, init="project", **kwargs)


def refused(module: nn.Module, operation, error: type[Exception], match: str) -> None:  # type: ignore[no-untyped-def]
    """``operation`` raises ``error`` (a paramshape error) matching ``match`` and changes nothing."""
    before = take(module)
    with pytest.raises(error, match=match):
        operation()
    assert_same(before, take(module))


# ----------------------------------------------------------------- 1. shapes of values coming in
WRONG_SHAPES = [
    pytest.param("simplex", (5,), torch.ones(6) / 6, id="simplex-longer"),
    pytest.param("orthogonal", (4, 3), torch.eye(4)[:, :3].T.contiguous(), id="orthogonal-transposed"),
    pytest.param("positive_definite", (3, 3), torch.eye(3)[None], id="pd-extra-batch-dim"),
    pytest.param("box(-1, 1, learnable=True)", (2, 2), torch.zeros(3, 3), id="learnable-bigger"),
    pytest.param("low_rank(rank=1)", (4, 3), torch.zeros(3, 4), id="low-rank-transposed"),
    pytest.param("grassmannian", (4, 2), torch.eye(2), id="grassmannian-stored-shape"),
    pytest.param("doubly_stochastic", (3, 3), torch.full((2, 2), 0.5), id="doubly-stochastic-smaller"),
    pytest.param("box(-1, 1)", (2, 2), torch.zeros(1, 2, 2), id="leading-one"),
]


@pytest.mark.parametrize("entry", ["attribute", "register_parameter", "parameter"])
@pytest.mark.parametrize(("spec", "shape", "value"), WRONG_SHAPES)
def test_a_value_of_another_shape_is_refused_at_every_entry(spec, shape, value, entry) -> None:  # type: ignore[no-untyped-def]
    module = holder(spec, shape)
    operation = {
        "attribute": lambda: setattr(module, "w", value),
        "register_parameter": lambda: module.register_parameter("w", nn.Parameter(value)),
        "parameter": lambda: setattr(module, "w", nn.Parameter(value)),
    }[entry]
    refused(module, operation, ps.ShapeMismatchError, r"'w' of Module \(shape")


def test_wrong_shapes_are_refused_under_fold_and_for_function_transforms() -> None:
    folded = holder("box(-1, 1)", fold=True)
    refused(
        folded, lambda: setattr(folded, "w", torch.zeros(3, 3)), ps.ShapeMismatchError, "never changes shape"
    )
    exp = ps.FunctionTransform(torch.exp, torch.log, torch.distributions.constraints.positive)
    user = holder(exp)
    refused(user, lambda: setattr(user, "w", torch.ones(3, 3)), ps.ShapeMismatchError, "never changes shape")
    complex_module = holder(ps.Unitary(), (3, 3), dtype=torch.complex64)
    refused(
        complex_module,
        lambda: setattr(complex_module, "w", torch.ones(4, dtype=torch.complex64)),
        ps.ShapeMismatchError,
        r"shape \(3, 3\)",
    )


def test_a_value_that_broadcasts_keeps_the_stored_shape() -> None:
    noise = holder("positive", (1,))
    noise.w = torch.tensor(0.01)
    assert noise.w.shape == (1,)
    torch.testing.assert_close(noise.w.detach(), torch.tensor([0.01]))
    rows = holder("sum_to_zero", (3, 4))
    rows.w = torch.tensor([1.0, -1.0, 0.5, -0.5])
    assert rows.w.shape == (3, 4)
    torch.testing.assert_close(rows.w.detach(), torch.tensor([1.0, -1.0, 0.5, -0.5]).expand(3, 4))


# ------------------------------------------------------------------- 2. non-tensors and dtypes
@pytest.mark.parametrize(
    "value",
    [Fraction(1, 2), decimal.Decimal("0.5"), torch.tensor([0.5, 0.5]).to_sparse()],
    ids=["Fraction", "Decimal", "sparse"],
)
@pytest.mark.parametrize("fold", [False, True])
def test_exact_numbers_and_sparse_tensors_are_their_values(value, fold: bool) -> None:  # type: ignore[no-untyped-def]
    module = holder("box(-1, 1)", (2,), fold=fold)
    module.w = value
    torch.testing.assert_close(module.w.detach(), torch.tensor([0.5, 0.5]))
    assert module.parametrizations.w.original.layout == torch.strided


def test_a_meta_value_is_refused_and_changes_nothing() -> None:
    module = holder("box(-1, 1)", (2,))
    refused(
        module,
        lambda: setattr(module, "w", torch.zeros(2, device="meta")),
        ps.UnsupportedTensorError,
        "meta device",
    )


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0.5", "cannot assign a str"),
        (object(), "cannot assign a object"),
        ([[0.5], [0.1, 0.2]], "cannot convert the list"),
        (0.5 + 0.1j, "complex"),
        (None, "cannot assign None"),
    ],
    ids=["str", "object", "ragged", "complex", "None"],
)
@pytest.mark.parametrize("spec", ["box(-1, 1)", "simplex", "box(-1, 1, learnable=True)"])
def test_values_that_are_not_real_numbers_are_refused_for_every_family(spec: str, value, match: str) -> None:  # type: ignore[no-untyped-def]
    module = holder(spec, (2, 2))
    refused(module, lambda: setattr(module, "w", value), ps.UnsupportedTensorError, match)


def test_numbers_reach_complex_and_float64_tensors_in_their_dtype() -> None:
    unitary = holder(ps.Unitary(), (2, 2), dtype=torch.complex64)
    unitary.w = [[1.0, 0.0], [0.0, 1.0]]
    assert unitary.w.dtype == torch.complex64
    wide = holder("box(-1, 1)", (2,), dtype=torch.float64)
    wide.w = [0.1, 0.2]
    assert wide.w.dtype == torch.float64
    torch.testing.assert_close(wide.w.detach(), torch.tensor([0.1, 0.2], dtype=torch.float64))


# ------------------------------------------------------------ 3. number bounds at their precision
def test_bound_output_holds_a_number_bound_at_the_modules_precision() -> None:
    # Box(1e-4, 1) was applied with float32 bounds to float64 outputs: the floor was 9.99999997e-05.
    for order in ("bound then double", "double then bound"):
        layer = nn.Linear(1, 1)
        if order == "double then bound":
            layer.double()
        ps.bound_output(layer, ps.Box(1e-4, 1.0))
        if order == "bound then double":
            layer.double()
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        out = layer(torch.full((3, 1), -1e3, dtype=torch.float64)).detach()
        assert out.dtype == torch.float64
        assert float(out.min()) >= 1e-4, order


@pytest.mark.parametrize(
    ("spec", "fill", "side"),
    [
        (ps.LessThan(-1e-4), -1e-4, "high"),
        (ps.Box(0.1, 0.3), 0.3, "high"),
        ("greater_than(1e-4)", 1e-4, "low"),
        (ps.SoftClip(0.1, 0.3), 0.1, "low"),
        (ps.MaxNorm(0.1), 0.1, "high"),
    ],
)
def test_a_float64_tensor_holds_its_number_bound_exactly_and_never_crosses_it(spec, fill, side) -> None:  # type: ignore[no-untyped-def]
    module = holder(spec, (1, 1) if isinstance(spec, ps.MaxNorm) else (3,), dtype=torch.float64)
    module.w = torch.full(module.w.shape, fill, dtype=torch.float64)  # exactly the bound: inside
    sign = 1.0 if side == "low" else -1.0
    optimizer = torch.optim.SGD(module.parameters(), lr=10.0)
    for _ in range(30):
        optimizer.zero_grad()
        (sign * module.w.sum()).backward()
        optimizer.step()
    value = module.w.detach()
    assert bool((value >= fill).all()) if side == "low" else bool((value <= fill).all())


def test_learnable_bounds_on_a_float64_tensor_are_the_numbers_given() -> None:
    # They were float32's roundings converted up: low = 0.10000000149011612, so a float64 value of
    # exactly 0.1 was refused.
    module = holder(ps.Box(0.1, 0.2, learnable=True), (3,), dtype=torch.float64)
    transform = module.parametrizations.w[0]
    assert float(transform.low.detach()) == 0.1
    assert float(transform.high.detach()) == pytest.approx(0.2, rel=4 * torch.finfo(torch.float64).eps)
    module.w = torch.full((3,), 0.1, dtype=torch.float64)
    module.float()
    module.double()  # untrained bounds: rebuilt from the numbers, not from float32's rounding
    assert float(transform.low.detach()) == 0.1
    with torch.no_grad():
        transform.centre.add_(0.01)  # trained: a move keeps the trained bounds, rounded
    low = float(transform.low.detach())
    module.float()
    module.double()
    assert float(transform.low.detach()) == pytest.approx(low, rel=1e-6)


def test_a_float64_projection_lands_on_the_number_itself() -> None:
    module = holder(ps.GreaterThan(1e-4), (3,), dtype=torch.float64, method="project")
    with torch.no_grad():
        module.w.fill_(-1.0)
    ps.project_(module)
    assert bool((module.w == 1e-4).all())


# ------------------------------------------------------------------------- 4. all or nothing
def constrained_pair() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    ps.constrain(model, {"0.weight": "box(-5, 5)", "2.weight": "box(-5, 5)"})
    ps.constrain(model, "1.bias", "box(-5, 5)", method="project")
    return model


@pytest.mark.parametrize("fail_at", [1, 2])
@pytest.mark.parametrize("name", [None, "*.weight", "*"])
@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_unconstrain_is_all_or_nothing(name, fail_at: int, failure) -> None:  # type: ignore[no-untyped-def]
    model = constrained_pair()
    before = take(model)
    real = parametrize.remove_parametrizations
    calls = []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == fail_at:
            raise failure("interrupted")
        return real(*args, **kwargs)

    with mock.patch.object(parametrize, "remove_parametrizations", flaky), pytest.raises(failure):
        ps.unconstrain(model, name)
    assert_same(before, take(model))
    assert set(ps.constraints(model)) == {"0.weight", "2.weight", "1.bias"}
    ps.unconstrain(model, name)  # and it still works afterwards
    assert type(model[0]) is nn.Linear or name == "*.weight"


def test_unconstrain_of_a_missing_name_in_a_pattern_changes_nothing() -> None:
    model = constrained_pair()
    refused(model, lambda: ps.unconstrain(model, "3.weight"), ps.TensorNotFoundError, "3")


class _BrokenInverse(ps.Box):
    def right_inverse(self, value):  # type: ignore[no-untyped-def]
        raise RuntimeError("broken inverse")


@pytest.mark.parametrize("kwargs", [{}, {"fold": True}, {"init": "project"}])
def test_a_broken_user_transform_later_in_a_dict_changes_nothing(kwargs) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    before = take(model)
    with pytest.raises(RuntimeError, match="broken inverse"):
        ps.constrain(model, {"0.weight": "box(-5, 5)", "2.weight": _BrokenInverse(-5, 5)}, **kwargs)
    assert_same(before, take(model))


# ------------------------------------------------------------------------------ 5. checkpoints
@pytest.mark.parametrize(("strict", "assign"), [(True, False), (False, False), (True, True)])
def test_a_checkpoint_with_both_key_formats_for_one_tensor_is_refused(strict: bool, assign: bool) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    ps.constrain(model, "0.weight", "box(-1, 1)", init="project")
    checkpoint = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint["0.weight"] = torch.full((3, 3), 0.9)
    refused(
        model,
        lambda: model.load_state_dict(checkpoint, strict=strict, assign=assign),
        ps.ConstraintConflictError,
        r"'0.weight' of Sequential \(shape \(3, 3\), float32\).*both",
    )


def test_plain_keys_load_into_a_submodule_constrained_from_its_parent() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    ps.constrain(model, {"0.weight": "box(-1, 1)", "1.weight": "box(-1, 1)"}, init="project")
    checkpoint = dict(ps.plain_state_dict(model[1]))
    checkpoint["weight"] = torch.full((2, 3), 0.5)
    model[1].load_state_dict(checkpoint)
    torch.testing.assert_close(model[1].weight.detach(), torch.full((2, 3), 0.5))
    checkpoint["weight"] = torch.full((2, 3), 7.0)
    refused(
        model, lambda: model[1].load_state_dict(checkpoint), ps.InfeasibleValueError, "Nothing was loaded"
    )


# ---------------------------------------------------------------------- 6. optimizer resume
def test_an_optimizer_built_before_learnable_bounds_warns_that_it_does_not_train_them() -> None:
    layer = nn.Linear(3, 3)
    early = torch.optim.SGD(layer.parameters(), lr=0.1)
    ps.constrain(layer, "weight", ps.Box(-1, 1, learnable=True))
    late = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 3)).sum().backward()
    with pytest.warns(
        ps.ParamshapeWarning, match=r"holds 'weight' but not its learnable bounds \(weight.0.centre"
    ):
        early.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        early.step()  # once per optimizer
        late.step()  # holds them: silent


def test_frozen_learnable_bounds_are_not_reported() -> None:
    layer = nn.Linear(3, 3)
    early = torch.optim.SGD(layer.parameters(), lr=0.1)
    ps.constrain(layer, "weight", ps.Box(-1, 1, learnable=True))
    for bound in layer.parametrizations.weight[0].parameters():
        bound.requires_grad_(False)
    layer(torch.randn(2, 3)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        early.step()


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.AdamW(p, lr=0.1),
        lambda p: torch.optim.Adam([{"params": list(p)[:2]}, {"params": list(p)[2:], "lr": 0.01}], lr=0.1),
    ],
    ids=["sgd-momentum", "adamw", "adam-two-groups"],
)
def test_resuming_in_another_order_raises_for_other_optimizers(optimizer) -> None:  # type: ignore[no-untyped-def]
    def run(before: bool):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
        opt = optimizer(model.parameters()) if before else None
        ps.constrain(model, {"1.weight": "positive", "0.weight": "box(-1, 1)"})
        return model, opt if before else optimizer(model.parameters())

    model, opt = run(True)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed, resumed_opt = run(False)
    resumed.load_state_dict(model.state_dict())
    resumed_opt.load_state_dict(saved)
    resumed(torch.randn(4, 3)).pow(2).sum().backward()
    before = take(resumed)
    with pytest.raises(ps.ConstraintConflictError, match="was saved for"):
        resumed_opt.step()
    assert_same(before, take(resumed))


# ----------------------------------------------------- 7. other parametrizations, deferred init
META_SPECS = [
    "orthogonal",
    "positive_definite",
    "special_linear",
    "grassmannian",
    "low_rank(rank=2)",
    "corr_matrix",
    "doubly_stochastic",
    "simplex",
    "unit_norm",
    "box(-0.5, 0.5, learnable=True)",
]


@pytest.mark.parametrize("spec", META_SPECS)
def test_meta_models_of_every_family_constrain_materialise_and_initialise(spec: str) -> None:
    with torch.device("meta"):
        layer = nn.Linear(4, 4)
    ps.constrain(layer, "weight", spec)
    layer.to_empty(device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)  # kaiming values moved into the set
        layer.reset_parameters()
    transform = ps.constraints(layer)["weight"]
    assert bool(torch.isfinite(layer.weight).all())
    assert bool(transform.contains(layer.weight).all())
    if getattr(transform, "learnable", False):  # the bounds came back, not uninitialised memory
        torch.testing.assert_close(transform.low.detach(), torch.tensor(-0.5))
        torch.testing.assert_close(transform.high.detach(), torch.tensor(0.5))


def test_a_meta_project_constraint_projects_after_materialisation() -> None:
    with torch.device("meta"):
        layer = nn.Linear(4, 4)
    ps.constrain(layer, "weight", "box(-0.01, 0.01)", method="project")
    layer.to_empty(device="cpu")
    with pytest.warns(ps.ParamshapeWarning, match="projected onto it"):
        layer.reset_parameters()
    assert bool((layer.weight.abs() <= 0.01).all())


@pytest.mark.parametrize("spec", ["box(-0.01, 0.01)", "box(-0.01, 0.01, learnable=True)"])
def test_to_empty_of_a_materialised_model_keeps_the_bounds(spec: str) -> None:
    layer = holder(spec, (3, 3))
    bounds = {k: v.clone() for k, v in layer.parametrizations.w[0].state_dict().items()}
    layer.to_empty(device="cpu")
    for key, value in layer.parametrizations.w[0].state_dict().items():
        torch.testing.assert_close(value, bounds[key])


@pytest.mark.parametrize("how", ["pickle", "torch.save", "deepcopy"])
@pytest.mark.parametrize("spec", ["positive", "box(-1, 1)"])
def test_a_non_persistent_constrained_buffer_stays_out_of_state_dict_after_copies(
    how: str, spec: str
) -> None:
    module = nn.Module()
    module.register_buffer("s", torch.ones(3) * 0.5, persistent=False)
    ps.constrain(module, "s", spec)
    if how == "pickle":
        copied = pickle.loads(pickle.dumps(module))
    elif how == "deepcopy":
        copied = copy.deepcopy(module)
    else:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    assert list(copied.state_dict()) == []
    torch.testing.assert_close(copied.s, module.s)


def test_a_pickled_fold_model_keeps_folding_and_training() -> None:
    layer = ps.constrain(nn.Linear(3, 3), "weight", "box(-1, 1)", fold=True)
    copied = pickle.loads(pickle.dumps(layer))
    assert hasattr(copied.parametrizations.weight, "_paramshape_folded")
    torch.testing.assert_close(copied.weight, layer.weight)
    optimizer = torch.optim.SGD(copied.parameters(), lr=1.0)
    before = copied.weight.detach().clone()
    copied(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, copied.weight.detach())


@pytest.mark.parametrize("method", ["reparam", "project"])
def test_a_shared_submodule_named_twice_with_two_sets_is_refused(method: str) -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    refused(
        model,
        lambda: ps.constrain(
            model, {"0.weight": "box(-1, 1)", "2.weight": "positive"}, method=method, init="project"
        ),
        ps.SpecError,
        "'0.weight' and '2.weight' name the same tensor",
    )


# ------------------------------------------------------------------------- 8. initialisation
def project_layer(spec: str = "box(-0.01, 0.01)") -> nn.Linear:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        return ps.constrain(nn.Linear(4, 4), "weight", spec, method="project", init="project")


def test_reset_parameters_keeps_a_project_tensor_in_its_set() -> None:
    layer = project_layer()
    with pytest.warns(ps.ParamshapeWarning, match=r"reset_parameters\(\) wrote \d+ of 16 values outside"):
        layer.reset_parameters()
    assert bool((layer.weight.abs() <= 0.01).all())
    assert float(layer.weight.detach().abs().max()) == pytest.approx(0.01)  # projected onto the box


def test_apply_keeps_project_tensors_in_their_sets_and_leaves_penalty_ones() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Embedding(3, 4))
    ps.constrain(model, "0.weight", "box(-1, 1)", method="penalty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        ps.constrain(model, "1.weight", "simplex", method="project", init="project")
    with pytest.warns(ps.ParamshapeWarning, match="outside Simplex"):
        model.apply(lambda m: [nn.init.uniform_(p, 2.0, 3.0) for p in m.parameters(recurse=False)])
    assert bool(ps.constraints(model)["1.weight"].contains(model[1].weight).all())
    assert bool((model[0].weight >= 2.0).all())  # a penalty does not force the set


def test_project_init_support_survives_copies_and_is_dropped_by_unconstrain() -> None:
    layer = project_layer()
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with pytest.warns(ps.ParamshapeWarning):
            copied.reset_parameters()
        assert bool((copied.weight.abs() <= 0.01).all())
    ps.unconstrain(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        layer.reset_parameters()  # a plain layer again: torch's init, unprojected
    assert float(layer.weight.detach().abs().max()) > 0.01


@pytest.mark.parametrize("spec", ["box(-0.05, 0.05)", "simplex"])
def test_reset_parameters_under_inference_mode_reinitialises(spec: str) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        layer = ps.constrain(nn.Linear(3, 3), "weight", spec, init="project")
    before = layer.weight.detach().clone()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        layer.reset_parameters()
    assert not torch.equal(before, layer.weight.detach())
    assert not layer.parametrizations.weight.original.is_inference()


def _nan_everything(module: nn.Module) -> None:
    with torch.no_grad():
        for tensor in module.parameters(recurse=False):
            tensor.fill_(math.nan)


@pytest.mark.parametrize("spec", ["box(-1, 1)", "box(-1, 1, learnable=True)", "positive"])
def test_a_blanket_apply_writing_nan_into_stored_tensors_or_learnable_bounds_is_caught(spec: str) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        layer = ps.constrain(nn.Linear(3, 3, bias=False), "weight", spec, init="project")
    before = take(layer)
    with pytest.raises((ps.SpecError, ps.InfeasibleValueError), match="'weight' of Linear"):
        layer.apply(_nan_everything)
    assert_same(before, take(layer))
    assert bool(torch.isfinite(layer.weight).all())


def test_a_module_with_reparam_and_project_tensors_projects_after_reset_and_pickles() -> None:
    torch.manual_seed(0)
    layer = ps.constrain(nn.Linear(4, 4), "weight", "box(-1, 1)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        ps.constrain(layer, "bias", "box(-0.001, 0.001)", method="project", init="project")
    for copied in (layer, copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with pytest.warns(ps.ParamshapeWarning, match="'bias' of Linear: reset_parameters"):
            copied.reset_parameters()
        assert bool((copied.bias.detach().abs() <= 0.001).all())


# ---------------------------------------------- found by the fuzz: a dtype move keeps SL(n) (class 12)
def test_special_linear_stays_in_its_set_after_moves_both_ways() -> None:
    # .double() of a value assigned in float32 read its float32 determinant (1 + 5e-8) against
    # float64's tolerance (1e-13): its own contains() refused it; a float16 round trip kept the
    # float16-rounded base bit for bit (determinant 0.9987).
    module = holder(ps.SpecialLinear(), (3, 3))
    transform = ps.constraints(module)["w"]
    before = module.w.detach().clone()
    module.double()
    assert bool(transform.contains(module.w.detach()).all())
    module.load_state_dict(ps.plain_state_dict(module))  # its own plain checkpoint loads back
    module.float()
    module.half()
    module.float()
    value = module.w.detach()
    assert bool(transform.contains(value).all())
    torch.testing.assert_close(value, before, atol=4e-3, rtol=0)  # float16's rounding, not another map


@pytest.mark.parametrize("hook_based", [torch.nn.utils.spectral_norm, torch.nn.utils.weight_norm])
def test_torchs_hook_based_norms_on_a_constrained_tensor_fail_before_changing_anything(hook_based) -> None:  # type: ignore[no-untyped-def]
    # A limit of torch (docs/pitfalls.md): they delete module._parameters[name], which a
    # parametrized tensor lacks. The KeyError is torch's, raised before anything changes.
    layer = holder("box(-1, 1)")
    before = take(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm's deprecation
        with pytest.raises(KeyError):
            hook_based(layer, "w")
    assert_same(before, take(layer))
