"""Issue 10, second round: the gaps the first round left, and a fresh round of hostile use.

Sections: dtype moves round the value but never change the map (class 12, every registered
transform); an ``nn.Parameter`` assigned to a constrained name (class 2); bounds written behind the
transform's back (class 8); writes into a freshly computed value that would be lost (class 8).
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps

from .module_snapshot import assert_same, take
from .transform_cases import CASES

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _ulps(after: torch.Tensor, before: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest difference in units of ``dtype``'s epsilon, relative to the tensor's largest entry
    (normwise: a map that cancels towards 0 is as sensitive to rounding as its largest entry)."""
    scale = before.double().abs().amax().clamp_min(torch.finfo(torch.float64).tiny)
    return float((after.double() - before.double()).abs().amax() / scale) / torch.finfo(dtype).eps


def _constrained(case) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(case.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        return ps.constrain(module, "w", case.build(), init="project")


# ------------------------------------------------- 12. a dtype move rounds, never changes the map
def _reference(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The float32 map, before any move, of the stored tensor rounded to ``dtype``: what a move that
    rounds (the stored tensor, then the value) but keeps the map must give, up to the value's own
    rounding. Taken on a copy, so the module is untouched."""
    chain = copy.deepcopy(module).parametrizations.w
    with torch.no_grad():
        return chain[0](chain.original.to(dtype).to(torch.float32))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_a_move_to_low_precision_rounds_the_value_and_back_keeps_it(case, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    module = _constrained(case)
    reference = _reference(module, dtype)
    module.to(dtype)
    # A changed map (PositiveDefinite's jitter resized for float16: 2 sqrt(n) of its epsilons on the
    # diagonal) is several ulps away; rounding the value and computing in dtype are about two.
    assert _ulps(module.w.detach(), reference, dtype) <= 4
    module.to(torch.float32)
    assert _ulps(module.w.detach(), reference, dtype) <= 4


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.build().event_dim > 0])
def test_a_move_to_float64_keeps_the_float32_value(case) -> None:  # type: ignore[no-untyped-def]
    module = _constrained(case)
    before = module.w.detach().clone()
    module.double()
    # The same stored tensor, now mapped in float64: only float32's rounding of the old value differs
    # (a jitter resized for float64 would differ by 2 n float32 epsilons on the diagonal). Vector and
    # matrix maps only: an elementwise map has no dtype-dependent constant, and its float32 value
    # carries the cancellation of wide bounds (SoftClip(-1e3, 1e3) near 0), which float64 removes.
    assert _ulps(module.w.detach(), before, torch.float32) <= 8


@pytest.mark.parametrize("spec", ["positive_definite", "corr_matrix"])
def test_the_jitter_is_the_one_of_the_dtype_constrained_in(spec: str) -> None:
    # The map of a tensor constrained in float32 keeps float32's jitter after .half() and .double();
    # a transform used on its own sizes it for each input's dtype, as before.
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(6, 6))
    ps.constrain(module, "w", spec, init="sample")
    transform = module.parametrizations.w[0]
    assert transform.map_dtype(torch.float16) == torch.float32
    module.half()
    assert transform.map_dtype(torch.float16) == torch.float32
    standalone = ps.resolve(spec)
    assert standalone.map_dtype(torch.float16) == torch.float16


# ------------------------------------------------ 2. an nn.Parameter assigned to a constrained name
def _box_layer() -> nn.Linear:
    torch.manual_seed(0)
    return ps.constrain(nn.Linear(3, 2), "weight", "box(-1, 1)", init="project")


@pytest.mark.parametrize("how", ["setattr", "register_parameter"])
def test_a_parameter_assigned_to_a_constrained_name_is_stored_as_its_value(how: str) -> None:
    layer = _box_layer()
    stored = layer.parametrizations.weight.original
    value = torch.linspace(-0.9, 0.9, 6).reshape(2, 3)
    if how == "setattr":
        layer.weight = nn.Parameter(value.clone())
    else:
        layer.register_parameter("weight", nn.Parameter(value.clone()))
    # The reference is the plain tensor assigned; the stored tensor (what an optimizer holds) stays.
    torch.testing.assert_close(layer.weight.detach(), value, rtol=0, atol=1e-6)
    assert layer.parametrizations.weight.original is stored
    assert [name for name, _ in layer.named_parameters()] == ["bias", "parametrizations.weight.original"]


@pytest.mark.parametrize(
    ("param", "error", "match"),
    [
        (nn.Parameter(torch.full((2, 3), 3.0)), ps.InfeasibleValueError, r"'weight' of Linear .*value 3\.0"),
        (nn.Parameter(torch.zeros(3, 3)), ps.ShapeMismatchError, r"'weight' of Linear .*shape \(3, 3\)"),
        (None, ps.ConstraintConflictError, r"'weight' of Linear is constrained.*ps\.unconstrain"),
    ],
)
def test_a_refused_parameter_changes_nothing(param, error, match: str) -> None:  # type: ignore[no-untyped-def]
    layer = _box_layer()
    before = take(layer)
    with pytest.raises(error, match=match):
        layer.register_parameter("weight", param)
    assert_same(before, take(layer))


def test_register_parameter_of_other_names_is_torchs() -> None:
    layer = _box_layer()
    layer.register_parameter("extra", nn.Parameter(torch.ones(1)))
    assert layer.extra.item() == 1.0
    layer.bias = nn.Parameter(torch.zeros(2))
    assert torch.equal(layer.bias.detach(), torch.zeros(2))


# ---------------------------------------------- 8. bounds written behind the transform's back
@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda t: t.low.fill_(float("nan")), r"low=nan"),
        (lambda t: t.high.copy_(torch.tensor(-3.0)), r"low=-1\.0, high=-3\.0"),
        (lambda t: t.low.fill_(5.0), r"low=5\.0, high=1\.0"),
    ],
)
@pytest.mark.parametrize("method", ["reparam", "project"])
def test_a_bound_written_in_place_is_caught_before_any_value_uses_it(write, match: str, method: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    layer = ps.constrain(nn.Linear(3, 2), "weight", "box(-1, 1)", init="project", method=method)
    transform = ps.constraints(layer)["weight"]
    before = layer.weight.detach().clone()
    write(transform)
    pattern = r"'weight' of Linear \(shape \(2, 3\), float32\): a bound of Box.*written in place.*" + match
    if method == "reparam":
        with pytest.raises(ps.SpecError, match=pattern):
            layer.weight  # noqa: B018  # the read that would use the bound
    else:
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        layer(torch.ones(1, 3)).sum().backward()
        with pytest.raises(ps.SpecError, match=pattern):
            optimizer.step()  # the projection after the step would use the bound
    with pytest.raises(ps.SpecError, match=pattern):
        transform.contains(before)


def test_a_valid_bound_written_in_place_takes_effect() -> None:
    torch.manual_seed(0)
    layer = ps.constrain(nn.Linear(3, 2), "weight", "box(-1, 1)", init="project")
    transform = layer.parametrizations.weight[0]
    transform.low.fill_(-float("inf"))  # now only an upper bound: the map follows the new bounds
    value = layer.weight.detach()
    assert transform._layout == "upper"
    assert bool((value <= 1).all())
    assert bool(torch.isfinite(value).all())
    reference = ps.LessThan(1.0)  # the same set, built directly
    assert bool(reference.contains(value).all())


def test_a_bound_assigned_is_checked_and_a_refused_one_changes_nothing() -> None:
    layer = _box_layer()
    transform = layer.parametrizations.weight[0]
    before = take(layer)
    with pytest.raises(
        ps.SpecError, match=r"'weight' of Linear \(shape \(2, 3\), float32\): assigning 'low'.*low=2\.0"
    ):
        transform.low = 2.0
    with pytest.raises(ps.ShapeMismatchError):
        transform.low = torch.zeros(5)  # does not broadcast to the weight's (2, 3)
    assert_same(before, take(layer))
    transform.low = 0.25
    assert float(layer.weight.detach().min()) > 0.25
    # The number means itself at the tensor's precision after a move, as a constructed bound does.
    assert transform.double().low.item() == 0.25


# --------------------------------------------- 8. writes into a freshly computed value are lost
def _write_init(layer: nn.Linear) -> None:
    nn.init.uniform_(layer.weight, -0.5, 0.5)


def _write_no_grad(layer: nn.Linear) -> None:
    with torch.no_grad():
        layer.weight.mul_(2)


def _write_kept_value(layer: nn.Linear) -> None:
    value = layer.weight
    nn.init.zeros_(value)
    layer.kept = value  # held by the caller: seen whatever its size


@pytest.mark.parametrize("write", [_write_init, _write_no_grad, _write_kept_value])
def test_a_write_that_would_be_lost_warns_at_the_next_read(write) -> None:  # type: ignore[no-untyped-def]
    layer = _box_layer()
    stored = layer.parametrizations.weight.original.detach().clone()
    write(layer)
    with pytest.warns(
        ps.ParamshapeWarning,
        match=r"'weight' of Linear \(shape \(2, 3\), float32\).*lost.*module\.weight = value",
    ):
        layer(torch.ones(1, 3))
    # Reference: the stored tensor, which the write did not reach; the warning comes once per write.
    assert torch.equal(layer.parametrizations.weight.original.detach(), stored)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        layer(torch.ones(1, 3))


def test_reads_training_and_reinit_do_not_warn() -> None:
    layer = _box_layer()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        for _ in range(3):
            optimizer.zero_grad()
            out = layer(torch.ones(4, 3)) * layer.weight.sum()  # two reads in one step
            out.sum().backward()
            optimizer.step()
        layer.weight.mul(2)  # out of place
        layer.reset_parameters()  # writes through the inverse (issue 10, first round)
        layer.weight = torch.zeros(2, 3)
        with torch.inference_mode():
            layer(torch.ones(1, 3))
        layer(torch.ones(1, 3))


# ------------------------------------------------------------------- a fresh hostile round
def test_copies_and_pickles_of_a_read_model_do_not_warn_and_still_watch_writes() -> None:
    layer = _box_layer()
    layer(torch.ones(1, 3))  # the getter now holds a value
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.ParamshapeWarning)
        clones = [copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))]
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        clones.append(torch.load(buffer, weights_only=False))
        for clone in clones:
            torch.testing.assert_close(clone.weight, layer.weight)  # reference: the original's value
    for clone in clones:
        nn.init.zeros_(clone.weight)
        with pytest.warns(ps.ParamshapeWarning, match="lost"):
            clone.weight  # noqa: B018


def test_an_inference_tensor_is_refused_by_constrain_and_changes_nothing() -> None:
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(3, 2))
    before = take(model)
    with pytest.raises(
        ps.UnsupportedTensorError,
        match=r"'0\.weight' of Sequential \(shape \(2, 3\), float32\) is an inference tensor",
    ):
        ps.constrain(model, "*.weight", "box(-1, 1)", init="project")
    assert_same(before, take(model))


def test_a_checkpoint_loads_under_inference_mode() -> None:
    layer = _box_layer()
    state = {key: value.clone() for key, value in layer.state_dict().items()}
    expected = layer.weight.detach().clone()
    layer.weight = torch.zeros(2, 3)
    with torch.inference_mode():
        layer.load_state_dict(state)
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_a_move_to_a_complex_dtype_is_refused_before_any_constrained_module_converts() -> None:
    layer = _box_layer()
    before = take(layer)
    with warnings.catch_warnings():  # torch: "Complex modules are a new feature ..."
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(
            ps.UnsupportedTensorError, match=r"'weight' of Linear: the move would make .*complex64"
        ):
            layer.to(torch.complex64)
    assert_same(before, take(layer))


def test_a_refused_move_names_the_plain_modules_torch_already_converted() -> None:
    # Constrained alone inside a parent that already held it: the one case torch's hooks cannot
    # reach (a parent built after constraining is checked first: tests/test_trust_gaps.py).
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), nn.Linear(2, 2))
    constrained = ps.constrain(model[2], "weight", ps.Box(0.0, 1e5), init="sample")
    with pytest.raises(
        ps.SpecError, match=r"No constrained module was converted\. .*'0' \(Linear\), '1\.1' \(Linear\)"
    ):
        model.half()
    # What the message says, checked against the tensors themselves.
    assert model[0].weight.dtype == torch.float16
    assert model[1][1].weight.dtype == torch.float16
    assert constrained.parametrizations.weight.original.dtype == torch.float32


def test_a_refused_load_names_the_plain_modules_torch_already_loaded() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model[1], "weight", "box(-1, 1)", init="sample")  # layer by layer: not from the root
    state = ps.plain_state_dict(model)
    state["0.weight"] = torch.full((2, 2), 7.0)
    state["1.weight"] = torch.full((2, 2), 5.0)
    with pytest.raises(
        ps.InfeasibleValueError,
        match=r"No constrained tensor was loaded\. .*: '0' \(Linear\); constrain from the root",
    ):
        model.load_state_dict(state)
    assert bool((model[1].weight.abs() <= 1).all())
    assert torch.equal(model[0].weight.detach(), torch.full((2, 2), 7.0))  # what the message says


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (torch.full((3, 2), 0.5).t(), 0.5),  # non-contiguous
        (torch.tensor(0.25).expand(2, 3), 0.25),  # expanded (stride 0)
        (torch.full((2, 3), 0.75, dtype=torch.float64), 0.75),  # another dtype: converted
        (nn.Parameter(torch.full((2, 3), -0.5), requires_grad=False), -0.5),  # a frozen Parameter
    ],
)
def test_odd_layouts_assign_like_a_contiguous_tensor(value: torch.Tensor, expected: float) -> None:
    layer = _box_layer()
    layer.weight = value
    torch.testing.assert_close(layer.weight.detach(), torch.full((2, 3), expected), rtol=0, atol=1e-6)
    assert layer.weight.dtype == torch.float32


def test_channels_last_conv_weight_reads_and_assigns() -> None:
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    ps.constrain(conv, "weight", "box(-1, 1)", init="project")
    value = torch.full((4, 3, 3, 3), 0.5).to(memory_format=torch.channels_last)
    conv.weight = value
    reference = nn.functional.conv2d(torch.ones(1, 3, 5, 5), torch.full((4, 3, 3, 3), 0.5), conv.bias)
    torch.testing.assert_close(conv(torch.ones(1, 3, 5, 5)), reference)


def test_zero_size_tensors_constrain_assign_and_move() -> None:
    with warnings.catch_warnings():  # torch: "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore", UserWarning)
        layer = ps.constrain(nn.Linear(0, 2), "weight", "box(-1, 1)")
    layer.weight = torch.zeros(2, 0)
    layer.half()
    assert layer.weight.shape == (2, 0)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.zeros(0, 3))
    ps.constrain(holder, "w", "simplex", init="sample")
    assert holder.w.shape == (0, 3)


def test_functional_call_with_a_plain_value_outside_the_set_is_refused() -> None:
    layer = _box_layer()
    before = take(layer)
    with pytest.raises(ps.InfeasibleValueError, match=r"'weight' of Linear .*value 5\.0"):
        torch.func.functional_call(layer, {"weight": torch.full((2, 3), 5.0)}, (torch.ones(3),))
    assert_same(before, take(layer))


# -------------------------------------------- 14. vector sets are checked a block of rows at a time
VECTOR_BLOCKED = [
    lambda: ps.Simplex(),
    lambda: ps.Simplex(method="ilr"),
    lambda: ps.UnitNorm(),
    lambda: ps.Ordered(),
    lambda: ps.SumToZero(),
    lambda: ps.Simplex(dim=1),
]


@pytest.mark.parametrize("build", VECTOR_BLOCKED)
def test_vector_checks_and_inverse_in_blocks_equal_the_whole_tensor_ones(build, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from paramshape.transforms import base

    monkeypatch.setattr(base, "_BLOCK_ELEMENTS", 16)  # small tensors take the path of large ones
    transform = build()
    torch.manual_seed(0)
    inside = transform.to_interior(torch.randn(37, 5, dtype=torch.float64))
    y = inside.clone()
    y[4, 2] = float("nan")
    y[30] = torch.linspace(3.0, -2.0, 5)  # outside every one of these sets
    # The reference: the transform's own per-slice excess of the whole tensor, in one go.
    reference = (transform._finite_excess(y) == 0).reshape(37)
    assert len(list(transform._row_blocks(y))) > 1
    assert torch.equal(transform.contains(y).reshape(37, -1).all(-1), reference)
    assert reference.nonzero().flatten().tolist() == [i for i in range(37) if i not in (4, 30)]
    with pytest.raises(ps.InfeasibleValueError, match=r"2 of 37 slices lie outside.*\[4, :\]"):
        transform.validate(y)
    assert torch.equal(transform.inverse_in_blocks(inside), transform.inverse(inside))


# --- Found by the review of round 2: settings, bound overflow and complex moves --------------------


@pytest.mark.parametrize(
    ("spec", "setting", "value"),
    [
        (ps.Box(-1, 1), "slope", 5.0),
        (ps.GreaterThan(0.0), "softness", 2.0),
        (ps.Simplex(), "method", "softmax"),
    ],
)
def test_a_constrained_transforms_settings_are_fixed(spec, setting, value):
    """Rewriting a plain setting of a constrained transform would change every value read (and
    leave a fold=True cache stale): refused, the values unchanged."""
    layer = ps.constrain(nn.Linear(3, 3), "weight", spec, init="sample")
    before = layer.weight.detach().clone()
    transform = layer.parametrizations.weight[0]
    with pytest.raises(
        ps.SpecError, match=f"the setting '{setting}' .* is fixed once the transform is constrained"
    ):
        setattr(transform, setting, value)
    assert torch.equal(layer.weight.detach(), before)
    layer.eval()  # nn.Module's own attributes (training) are not settings
    assert not transform.training


def test_assigning_a_bound_that_overflows_its_dtype_is_refused():
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), init="project")
    transform = layer.parametrizations.weight[0]
    snapshot = take(layer)
    with pytest.raises(ps.SpecError, match=r"high overflows float32.*The bound is unchanged"):
        transform.high = 1e39  # would become inf in float32 and make the box one-sided
    assert_same(snapshot, take(layer))
    assert float(transform.high) == 1.0


def test_a_move_of_a_complex_constrained_tensor_to_a_real_dtype_is_refused():
    """torch's Module.to(float64) casts complex parameters to real (dropping the imaginary part)
    while the transform keeps its complex buffers: refused before anything converts."""
    layer = nn.Linear(3, 3, dtype=torch.complex64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)  # init='project' says it moved values
        ps.constrain(layer, "weight", ps.Hermitian(), init="project")
    snapshot = take(layer)
    with pytest.raises(
        ps.UnsupportedTensorError, match=r"dropping its imaginary part.*No constrained module"
    ):
        layer.to(torch.float64)
    assert_same(snapshot, take(layer))


def test_a_complex_checkpoint_entry_for_a_real_constrained_tensor_loads_nothing():
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), init="project")
    state = ps.plain_state_dict(layer)
    state["weight"] = state["weight"].to(torch.complex64) * (0.5 + 0.5j)
    snapshot = take(layer)
    with pytest.raises(ps.UnsupportedTensorError, match=r"holds a complex value.*Nothing was loaded"):
        layer.load_state_dict(state)
    assert_same(snapshot, take(layer))
