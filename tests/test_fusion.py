"""The fusion switch (``ps.set_fusion`` / ``ps.fusion``), the dispatch of ``Transform.__call__`` to a
compiled or hand-fused kernel, and the agreement of every path with the plain ``forward``.

Dispatch tests compile with a counting ``aot_eager`` backend (no C++ builds, and every graph is
counted); the agreement tests use the real compiler (inductor) and are marked slow.
"""

from __future__ import annotations

import copy
import importlib
import math
import threading
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.fusion import handfused
from paramshape.fusion.compiled import _backend, _reset

# The module itself: ``paramshape.fusion`` is also the name of the context manager.
fusion_module = importlib.import_module("paramshape.fusion.compiled")

#: One of each kernel and layout (each compiles its own graphs, a few seconds each with inductor).
FUSABLE = [
    ps.Box(100.0, 101.0),
    ps.Box(0.0, math.inf),
    ps.Box(
        torch.tensor([-1.0, -math.inf, 0.0, -math.inf, 3.0]),
        torch.tensor([1.0, 2.0, math.inf, math.inf, 4.0]),
    ),
    ps.Positive(method="exp"),
    ps.GreaterThan(0.5),
    ps.LessThan(torch.full((4, 1), 3.0)),
    ps.SoftClip(-3.0, 2.0, softness=0.1),
    ps.Simplex(dim=0),
    ps.Simplex(method="ilr"),
]
SHAPE = (4, 5)


@pytest.fixture(autouse=True)
def _fresh_fusion_state():
    """Every test starts with mode "auto", no compiled kernels, no timings, the real backend."""
    _reset()
    previous = ps.set_fusion("auto")
    yield
    ps.set_fusion(previous)
    _backend[0] = "inductor"
    _reset()


@pytest.fixture
def counter():
    """Compile with a counting aot_eager backend: fast, and every graph compiled is counted."""
    torch.compiler.reset()
    count = CompileCounterWithBackend("aot_eager")
    _backend[0] = count
    return count


def _stored_input(
    transform: ps.Transform, dtype=torch.float32, scale: float = 5.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    shape = transform.inverse_shape(torch.Size(SHAPE))
    return (scale * torch.randn(shape, dtype=dtype)).to(device).requires_grad_(True)


def _value_and_grad(fn, x: torch.Tensor, weights: torch.Tensor):
    x.grad = None
    y = fn(x)
    (y * weights).sum().backward()
    return y.detach(), x.grad.detach().clone()


# ------------------------------------------------------------------------------------ the switch
def test_default_mode_is_auto():
    assert ps.get_fusion() == "auto"


def test_set_fusion_returns_the_previous_mode_and_rejects_unknown_modes():
    assert ps.set_fusion("off") == "auto"
    assert ps.set_fusion("on") == "off"
    assert ps.get_fusion() == "on"
    with pytest.raises(ps.SpecError, match="fusion mode must be one of"):
        ps.set_fusion("fast")
    assert ps.get_fusion() == "on"


def test_context_manager_restores_the_mode_even_after_an_error():
    with ps.fusion("off"):
        assert ps.get_fusion() == "off"
        with ps.fusion("on"):
            assert ps.get_fusion() == "on"
        assert ps.get_fusion() == "off"
    assert ps.get_fusion() == "auto"
    with pytest.raises(RuntimeError, match="boom"), ps.fusion("on"):
        raise RuntimeError("boom")
    assert ps.get_fusion() == "auto"
    with pytest.raises(ps.SpecError), ps.fusion("sometimes"):
        pass  # pragma: no cover


def test_the_mode_is_per_thread():
    seen = []
    ps.set_fusion("off")
    thread = threading.Thread(target=lambda: seen.append(ps.get_fusion()))
    thread.start()
    thread.join()
    assert seen == ["auto"]
    assert ps.get_fusion() == "off"


def test_every_elementwise_family_and_the_simplex_opt_in():
    for cls in (ps.Box, ps.UnitInterval, ps.Positive, ps.GreaterThan, ps.LessThan, ps.SoftClip, ps.Simplex):
        assert isinstance(cls.fusable, ps.Fusable), cls
    assert ps.Affine.fusable is None


def test_a_subclass_with_its_own_forward_is_not_fused(counter):
    class Halved(ps.Box):
        def forward(self, x):
            return super().forward(x) / 2

    assert Halved.fusable is None
    with ps.fusion("on"):
        y = Halved(-1.0, 1.0)(torch.full((3,), 50.0))
    torch.testing.assert_close(y, torch.full((3,), 0.5))
    assert counter.frame_count == 0


# ------------------------------------------------------------------------------------ dispatch
def test_on_compiles_and_off_does_not(counter, device):
    box = ps.Box(-1.0, 1.0).to(device)
    x = _stored_input(box, device=device)
    with ps.fusion("off"):
        assert type(box(x).grad_fn).__name__ != "CompiledFunctionBackward"
    assert counter.frame_count == 0
    with ps.fusion("on"):
        y = box(x)
    assert type(y.grad_fn).__name__ == "CompiledFunctionBackward"
    assert counter.frame_count == 1


def test_auto_leaves_small_tensors_and_cold_kernels_eager(counter, monkeypatch):
    box = ps.Box(-1.0, 1.0)
    small = torch.randn(8, requires_grad=True)
    large = torch.randn(64, requires_grad=True)
    monkeypatch.setattr(fusion_module, "AUTO_MIN_ELEMENTS", 32)
    box(small)
    box(large)  # above the size threshold, but the kernel has not yet earned its compile
    assert counter.frame_count == 0
    monkeypatch.setattr(fusion_module, "AUTO_COMPILE_BUDGET_S", 0.0)
    assert type(box(large).grad_fn).__name__ == "CompiledFunctionBackward"
    assert type(box(small).grad_fn).__name__ != "CompiledFunctionBackward"
    assert counter.frame_count == 1


def test_auto_never_compiles_a_family_whose_eager_path_is_as_fast(counter, monkeypatch):
    monkeypatch.setattr(fusion_module, "AUTO_COMPILE_BUDGET_S", 0.0)
    assert ps.Simplex.fusable.auto_min_elements is None
    simplex = ps.Simplex()
    x = torch.randn(1024, 512, requires_grad=True)
    simplex(x)
    simplex(x)
    assert counter.frame_count == 0
    with ps.fusion("on"):
        assert type(simplex(x).grad_fn).__name__ == "CompiledFunctionBackward"


def test_auto_counts_eager_time_toward_the_compile_budget(counter, monkeypatch):
    monkeypatch.setattr(fusion_module, "AUTO_MIN_ELEMENTS", 32)
    monkeypatch.setattr(fusion_module, "AUTO_COMPILE_BUDGET_S", 1e-9)
    box = ps.Box(-1.0, 1.0)
    large = torch.randn(64, requires_grad=True)
    box(large)  # eager, and its time crosses the (tiny) budget
    assert counter.frame_count == 0
    box(large)
    assert counter.frame_count == 1


def test_constrain_never_compiles(counter):
    """register_parametrization runs the transform as a check; compiling there would put seconds
    into constrain(). The first read outside it compiles."""
    with ps.fusion("on"):
        layer = ps.constrain(nn.Linear(16, 8), "weight", ps.Box(-1.0, 1.0), init="project")
        ps.constrain(layer, "bias", "positive", init="raw")
        ps.constrain(layer, "weight", ps.Box(-2.0, 2.0))  # replacing a constraint
        plain = nn.Linear(4, 4)
        parametrize.register_parametrization(plain, "weight", ps.Box(-1.0, 1.0))  # torch's own API
        assert counter.frame_count == 0
        layer(torch.randn(2, 16)).sum().backward()
        assert counter.frame_count >= 1


def test_shapes_dtypes_and_grad_modes_never_exhaust_the_recompile_limit(counter):
    """dynamo's shared limit is 8 graphs per code object; 3 ranks x 3 dtypes x 2 grad modes need 18.
    Each kernel has its own, raised limit, so none of them falls back to eager."""
    box = ps.Box(-1.0, 1.0)
    shapes = [(70,), (9, 7), (3, 4, 5)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    with ps.fusion("on"):
        for dtype in dtypes:
            converted = copy.deepcopy(box).to(dtype)
            for shape in shapes:
                x = torch.randn(shape, dtype=dtype, requires_grad=True)
                assert type(converted(x).grad_fn).__name__ == "CompiledFunctionBackward"
                with torch.no_grad():
                    converted(x)
        compiled_graphs = counter.frame_count
        assert compiled_graphs > torch._dynamo.config.recompile_limit
        # Other sizes of the same ranks reuse the dynamic graphs.
        for shape in [(71,), (10, 7), (3, 4, 6)]:
            box(torch.randn(shape, requires_grad=True))
    assert counter.frame_count == compiled_graphs


def test_a_new_bound_value_does_not_recompile(counter):
    box = ps.Box(-1.0, 1.0)
    x = torch.linspace(-5.0, 5.0, 11)
    with ps.fusion("on"):
        box(x)
        with torch.no_grad():
            box.high.fill_(3.0)
        y = box(x)
    assert counter.frame_count == 1
    torch.testing.assert_close(y, box.forward(x))
    assert y.max() > 2.0


def test_module_hooks_still_run():
    box = ps.Box(-1.0, 1.0)
    calls = []
    box.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    box(torch.zeros(3))
    assert calls == [torch.Size([3])]


def test_a_bound_that_requires_grad_gets_its_gradient():
    box = ps.Box(-1.0, 1.0)
    box.high.requires_grad_(True)
    box(torch.zeros(3)).sum().backward()
    torch.testing.assert_close(box.high.grad, torch.tensor(1.5))


def test_vmap_runs_the_plain_forward():
    box = ps.Box(-1.0, 1.0)
    x = torch.randn(3, 5)
    with ps.fusion("on"):
        torch.testing.assert_close(torch.vmap(box)(x), box.forward(x))


# ------------------------------------------------------------------------------------ failures
def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_broken_compiler_warns_once_and_auto_stays_eager(monkeypatch):
    torch.compiler.reset()
    _backend[0] = _broken_backend
    monkeypatch.setattr(fusion_module, "AUTO_MIN_ELEMENTS", 1)
    monkeypatch.setattr(fusion_module, "AUTO_COMPILE_BUDGET_S", 0.0)
    box, positive = ps.Box(-1.0, 1.0), ps.Positive()
    x = torch.linspace(-5.0, 5.0, 11)
    with pytest.warns(ps.ParamshapeWarning, match="torch.compile failed") as record:
        y = box(x)
    assert len(record) == 1
    assert "no C++ compiler here" in str(record[0].message)
    torch.testing.assert_close(y, box.forward(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(box(x), box.forward(x))
        torch.testing.assert_close(positive(x), positive.forward(x))


def test_a_broken_compiler_raises_under_on():
    torch.compiler.reset()
    _backend[0] = _broken_backend
    with ps.fusion("on"):
        with pytest.raises(ps.FusionUnavailableError, match="no C\\+\\+ compiler here"):
            ps.Box(-1.0, 1.0)(torch.zeros(3))
        with pytest.raises(ps.FusionUnavailableError):
            ps.Box(-1.0, 1.0)(torch.zeros(3))


def test_an_error_of_the_input_is_the_input_s_not_the_compiler_s(counter):
    box = ps.Box(torch.zeros(4, 1), torch.ones(4, 1))
    with (
        ps.fusion("on"),
        pytest.raises(ps.ShapeMismatchError, match="does not broadcast to the tensor's shape"),
    ):
        box(torch.zeros(3, 5))
    with ps.fusion("on"), warnings.catch_warnings():
        warnings.simplefilter("error")
        box(torch.zeros(4, 5))


# ------------------------------------------------------------------------------------ hand-fused box
@pytest.fixture
def hand_fused_everywhere(monkeypatch):
    """The hand-fused box leaves tensors below 4096 elements to the plain map; these tests want it."""
    monkeypatch.setattr(handfused, "MIN_ELEMENTS", 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (100.0, 101.0), (-1.0, 1e-3), (-1e-30, 1e-30)])
def test_hand_fused_box_matches_the_plain_map(bounds, dtype, hand_fused_everywhere, device):
    if abs(bounds[0]) < torch.finfo(dtype).tiny:
        pytest.skip("the bounds underflow to 0 in this dtype")
    box = ps.Box(*bounds).to(device=device, dtype=dtype)
    x = torch.cat([torch.randn(200) * 30, torch.tensor([0.0, -1e4, 1e4, 1e-30, -1e-30, 80.0, -80.0])])
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    weights = torch.randn(x.shape).to(device=device, dtype=dtype)
    with ps.fusion("off"):
        y, grad = _value_and_grad(box, x, weights)
    y_plain, grad_plain = _value_and_grad(box.forward, x, weights)
    # One rounding (a fused multiply-add) where the plain map has two: within an ulp of the value or
    # of the nearer bound, whichever is larger (the terms the map adds).
    nearer_bound = torch.where(x.detach() < 0, abs(bounds[0]), abs(bounds[1])).float()
    ulp = torch.finfo(dtype).eps * torch.maximum(y_plain.abs().float(), nearer_bound)
    assert bool(((y.float() - y_plain.float()).abs() <= ulp).all())
    assert torch.equal(grad, grad_plain)


def test_eager_box_runs_hand_fused_at_every_size_but_empty(device):
    """From FUNCTION_MIN_ELEMENTS the autograd.Function, below it the same arithmetic in native
    autograd ops (no where, unlike the plain map), an empty tensor the plain map."""
    box = ps.Box(-1.0, 1.0).to(device)
    with ps.fusion("off"):
        large = box(torch.randn(handfused.FUNCTION_MIN_ELEMENTS, device=device, requires_grad=True))
        small = box(torch.randn(2, device=device, requires_grad=True))
        single = box(torch.randn(1, device=device, requires_grad=True))
        empty = box(torch.randn(0, device=device, requires_grad=True))
        off_centre = ps.Box(-1.0, 2.0).to(device)(torch.randn(2, device=device, requires_grad=True))
    assert type(large.grad_fn).__name__ == "_SigmoidBoxBackward"
    # The native ops end in the sign's product (a box centred on 0) or the bound's fused
    # multiply-add (the width a number on CPU: add with alpha; a tensor elsewhere: addcmul).
    native_ends = {"MulBackward0", "AddBackward0", "AddcmulBackward0"}
    assert type(small.grad_fn).__name__ == "MulBackward0"
    assert type(single.grad_fn).__name__ == "MulBackward0"  # one value is hand-fused too
    assert type(off_centre.grad_fn).__name__ == (
        "AddBackward0" if torch.device(device).type == "cpu" else "AddcmulBackward0"
    )
    assert type(empty.grad_fn).__name__ not in native_ends


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_native_and_function_box_agree_bit_for_bit(dtype, monkeypatch):
    """The small tensors' native ops and the large tensors' Function: the same values, the same
    gradients, the same second derivatives, on values that reach both tails, the centre and -0.0."""
    box = ps.Box(-2.0, 3.0).to(dtype)
    x = torch.cat([torch.randn(300) * 30, torch.tensor([0.0, -0.0, 1e4, -1e4, 1e-30, -1e-30])]).to(dtype)
    weights = torch.randn(x.shape).to(dtype)
    results = []
    for threshold in (0, 10**9):  # the Function everywhere, then the native ops everywhere
        monkeypatch.setattr(handfused, "FUNCTION_MIN_ELEMENTS", threshold)
        leaf = x.clone().requires_grad_(True)
        with ps.fusion("off"):
            y = box(leaf)
        (grad,) = torch.autograd.grad((y * weights).sum(), leaf, create_graph=True)
        (second,) = torch.autograd.grad((grad * weights).sum(), leaf)
        results.append((y.detach(), grad.detach(), second))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert bool((results[0][1][306 - 6 : 306 - 4] != 0).all())  # +-0: the centre's slope, not 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("path", ["function", "native", "value_and_slope"])
@pytest.mark.parametrize("bounds", [(-0.37, 0.37), (-0.2, 0.55)], ids=["centred", "off-centre"])
def test_every_arithmetic_of_a_box_agrees_bit_for_bit(dtype, path, bounds):
    """The shortcuts: a box centred on 0 (low = -high) computes the sign times high - w s, and on
    CPU the width enters as a number (``add`` with ``alpha``) rather than a tensor (``addcmul``).
    Every combination gives the values, gradients and second derivatives (the slope, for
    value_and_slope) of the general two-bound arithmetic with tensors, bit for bit, up to the sign
    of a zero value at x = -0.0."""
    x = torch.cat([torch.randn(3000) * s for s in (1e-3, 1.0, 40.0)] + [torch.tensor([0.0, -0.0, 1e4, -1e4])])
    x = x.to(dtype)
    weights = torch.randn(x.shape, dtype=dtype)
    low, high = torch.tensor(bounds[0], dtype=dtype), torch.tensor(bounds[1], dtype=dtype)
    gain = handfused.box_gain(low, high, 1.0)
    centred = bounds[0] == -bounds[1]
    results = []
    for options in ({}, {"numbers": True}, {"centred": centred}, {"centred": centred, "numbers": True}):
        constants = handfused.sigmoid_box_constants(low, high, gain, **options)
        assert (constants.neg_width is not None) is options.get("numbers", False)
        if path == "value_and_slope":
            results.append(handfused.sigmoid_box_value_and_slope(x, constants))
            continue
        leaf = x.clone().requires_grad_(True)
        if path == "native":
            y = handfused._sigmoid_box_native(leaf, constants)
        else:
            y = handfused._SigmoidBox.apply(leaf, constants)[0]
        (grad,) = torch.autograd.grad((y * weights).sum(), leaf, create_graph=True)
        (second,) = torch.autograd.grad((grad * weights).sum(), leaf)
        results.append((y.detach(), grad.detach(), second))
    for other in results[1:]:
        for general, shortcut in zip(results[0], other, strict=True):
            assert torch.equal(general, shortcut)  # -0.0 == 0.0


def test_only_a_box_centred_on_cpu_takes_the_centred_arithmetic():
    """Whether the bounds are centred is read once per change of them, on CPU only (elsewhere it
    would wait for the device): the kept constants say it, and a bound written off-centre is seen."""
    box = ps.Box(-2.0, 2.0)
    x = torch.randn(64)
    kept = handfused.constants_for(x, box.low, box.high, 1.0)
    assert kept.centred
    assert handfused.constants_for(x, box.low, box.high, 1.0) is kept  # derived once, while unchanged
    off_centre = ps.Box(-2.0, 3.0)
    assert not handfused.constants_for(x, off_centre.low, off_centre.high, 1.0).centred
    with torch.no_grad():
        box.high.fill_(3.0)
    constants = handfused.constants_for(x, box.low, box.high, 1.0)
    assert not constants.centred
    assert constants.neg_width == -(3.0 - -2.0)
    torch.testing.assert_close(box(x), box.forward(x), rtol=0, atol=4 * torch.finfo(x.dtype).eps)
    meta_low, meta_high = torch.tensor(-2.0, device="meta"), torch.tensor(2.0, device="meta")
    on_meta = handfused.kept_constants(meta_low, meta_high, torch.float32, 1.0)
    assert not on_meta.centred
    assert on_meta.neg_width is None


def test_hand_fused_box_sees_bound_changes(hand_fused_everywhere):
    """The bounds' constants are kept between reads: a bound written in place, through .data, or
    replaced is seen at the next read."""
    box = ps.Box(-1.0, 1.0)
    x = torch.tensor([-30.0, 0.5, 30.0])
    assert box(x)[2].item() == pytest.approx(1.0)
    with torch.no_grad():
        box.high.fill_(2.0)
    assert box(x)[2].item() == pytest.approx(2.0)
    box.high.data = torch.tensor(3.0)
    assert box(x)[2].item() == pytest.approx(3.0)
    box.low = -5.0
    assert box(x)[0].item() == pytest.approx(-5.0)
    box64 = box.double()
    assert box64(x.double()).dtype == torch.float64
    torch.testing.assert_close(box64(x.double()), box.forward(x).double(), rtol=0, atol=1e-6)


def test_hand_fused_box_at_negative_zero_is_the_midpoint(hand_fused_everywhere):
    box = ps.Box(-1.0, 3.0)
    assert box(torch.tensor([-0.0])).item() == 1.0


def test_hand_fused_box_has_second_derivatives(hand_fused_everywhere, device):
    box = ps.Box(-2.0, 3.0).to(device=device, dtype=torch.float64)
    x = torch.randn(7, dtype=torch.float64, device=device, requires_grad=True)
    with ps.fusion("off"):
        assert torch.autograd.gradgradcheck(box, (x,))
        (slope,) = torch.autograd.grad(box(x).sum(), x, create_graph=True)
    (plain_slope,) = torch.autograd.grad(box.forward(x).sum(), x, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), x)
    (plain_curvature,) = torch.autograd.grad(plain_slope.sum(), x)
    torch.testing.assert_close(curvature, plain_curvature)


def test_bounds_that_would_broadcast_the_input_are_refused_before_any_kernel():
    box = ps.Box(torch.zeros(4, 1), torch.ones(4, 1))
    with pytest.raises(ps.ShapeMismatchError, match="does not broadcast to the tensor's shape"):
        box(torch.zeros(5))
    x = torch.linspace(-3, 3, 20).reshape(4, 5)
    torch.testing.assert_close(box(x), box.forward(x))


# ------------------------------------------------------------------------------------ agreement
def _gradient_scale(transform: ps.Transform, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What "2 ulps" of a gradient entry is measured against. Elementwise: the entry itself,
    |f'(x)| |w| (float64). Slices (the simplex): the largest incoming gradient |w| of the slice --
    the softmax gradient y (w - <y, w>) cancels to 0 where one entry takes all the mass, and there
    each path's rounding is a few ulps of w, not of the (near-zero) result."""
    if not transform.event_dim:
        x64 = x.detach().double().requires_grad_(True)
        (slope,) = torch.autograd.grad(transform.double().forward(x64).sum(), x64)
        return (slope * weights.double()).abs()
    dims = transform.event_dims(weights.dim())
    return weights.double().abs().amax(dims, keepdim=True).expand(x.shape)


def _assert_within_ulps(
    got: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor, ulps: float, what: str
):
    eps = torch.finfo(expected.dtype).eps
    error = (got.double() - expected.double()).abs()
    allowed = ulps * eps * scale.double() + torch.finfo(expected.dtype).tiny
    worst = int(torch.argmax(error / allowed))
    assert bool((error <= allowed).all()), (
        f"{what}: {error.flatten()[worst].item():.3g} apart, {ulps} ulps allow {allowed.flatten()[worst].item():.3g}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fused_kernels_agree_with_eager_within_two_ulps(dtype, device):
    """The real compiler (inductor; Triton on a GPU): values within 2 ulps of the plain forward, and
    gradients within 2 ulps of the terms they sum; extreme inputs included."""
    torch.compiler.reset()
    for template in FUSABLE:
        transform = copy.deepcopy(template).to(device=device, dtype=dtype)
        x = _stored_input(transform, dtype, device=device)
        with torch.no_grad():
            x[0, 0], x[1, 1], x[-1, -1] = 1e4, -1e4, 0.0
        weights = torch.randn(transform.forward_shape(x.shape), dtype=dtype).to(device)
        with ps.fusion("on"):
            assert type(transform(x).grad_fn).__name__ == "CompiledFunctionBackward"
            y, grad = _value_and_grad(transform, x, weights)
        y_plain, grad_plain = _value_and_grad(transform.forward, x, weights)
        if transform.event_dim:
            value_scale = y_plain.abs().amax(transform.event_dims(y.dim()), keepdim=True).expand_as(y_plain)
        else:
            value_scale = y_plain.abs()
        _assert_within_ulps(y, y_plain, value_scale, 2, f"{transform!r} {dtype} value")
        scale = _gradient_scale(copy.deepcopy(transform), x, weights)
        _assert_within_ulps(grad, grad_plain, scale, 2, f"{transform!r} {dtype} gradient")
    box = ps.Box(-1.0, 1.0).to(device=device, dtype=dtype)
    x = 30 * torch.randn(100, dtype=dtype).to(device)
    with ps.fusion("on"), torch.no_grad():
        _assert_within_ulps(box(x), box.forward(x), box.forward(x).abs(), 2, f"{box!r} {dtype} no-grad value")


@pytest.mark.slow
def test_fused_half_precision_is_computed_in_float32(device):
    torch.compiler.reset()
    for dtype in (torch.float16, torch.bfloat16):
        box = ps.Box(-1.0, 1.0).to(device=device, dtype=dtype)
        x = (5 * torch.randn(64)).to(device=device, dtype=dtype)
        with ps.fusion("on"):
            fused = box(x)
        assert fused.dtype == dtype
        assert torch.equal(fused, box.forward(x))


def test_hand_fused_box_keeps_no_bound_alive(hand_fused_everywhere):
    """The constants kept between reads hold copies of the bounds, and their entry leaves with
    the box: nothing of a deleted box stays in memory."""
    import gc
    import weakref

    box = ps.Box(-1.0, 1.0)
    box(torch.randn(3))
    low = weakref.ref(box.low)
    key = (id(box.low), id(box.high))
    assert key in handfused._KEPT
    del box
    gc.collect()
    assert low() is None
    assert key not in handfused._KEPT  # (other tests' boxes may leave at this collection too)


def test_box_built_under_inference_mode_maps_inside_and_outside_it():
    """Bounds made under torch.inference_mode are inference tensors, without the version counter
    the kept constants are checked against: they are derived at each call instead."""
    with torch.inference_mode():
        box = ps.Box(-1.0, 1.0)
        inside = box(torch.tensor([-30.0, 0.0, 30.0]))
    outside = box(torch.tensor([-30.0, 0.0, 30.0]))
    torch.testing.assert_close(inside, torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(outside, torch.tensor([-1.0, 0.0, 1.0]))
