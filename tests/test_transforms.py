"""Numerics and settings of the individual transforms, beyond the shared contract."""

from __future__ import annotations

import math
import re

import pytest
import torch

import paramshape as ps
from paramshape.numerics.precision import softplus_inverse

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


# ------------------------------------------------------------------------------------- Box
def test_two_sided_inverse_keeps_precision_near_the_upper_bound():
    """The naive logit((y - low) / (high - low)) is off by about 0.3 at y = 1 - 2e-7 in float32."""
    box = ps.Box(-1.0, 1.0)
    y = torch.tensor([1 - 2e-7, -1 + 2e-7, 0.5], dtype=torch.float32)
    exact = box.to(torch.float64).inverse(y.double())
    error = (box.to(torch.float32).inverse(y).double() - exact).abs()
    assert error.max() < 1e-5
    naive = torch.logit((y - box.low) / (box.high - box.low)).double()
    assert (naive - exact).abs().max() > 0.1  # the failure this formulation avoids


def test_forward_keeps_relative_precision_next_to_a_bound_at_zero():
    """Near high = 0 the value is tiny; computing it from the nearer bound keeps its digits, where
    low + width * sigmoid(x) subtracts two numbers close to 1 and keeps almost none."""
    box = ps.Box(-1.0, 0.0)
    x = torch.tensor([12.0, 15.0], dtype=torch.float32)
    reference = box.double()(x.double())
    relative = ((box.float()(x).double() - reference) / reference).abs()
    assert relative.max() < 1e-6
    naive = (-1.0 + torch.sigmoid(x)).double()
    assert ((naive - reference) / reference).abs().max() > 1e-2


def test_gradient_at_the_midpoint_is_the_largest_slope():
    """-|x| written as a where: abs's zero subgradient at 0 would freeze a value at the midpoint."""
    x = torch.zeros(1, requires_grad=True)
    ps.Box(-1.0, 3.0)(x).sum().backward()
    assert x.grad.item() == pytest.approx(1.0)


def test_infinite_bounds_degrade_to_one_sided_maps():
    x = torch.linspace(-30, 30, 61, dtype=torch.float64)
    torch.testing.assert_close(ps.Box(2.0, math.inf).double()(x), ps.GreaterThan(2.0).double()(x))
    torch.testing.assert_close(ps.Box(-math.inf, 2.0).double()(x), ps.LessThan(2.0).double()(x))
    torch.testing.assert_close(ps.Box(-math.inf, math.inf).double()(x), x)
    mixed = ps.Box(torch.tensor([0.0, -math.inf]), torch.tensor([1.0, math.inf])).double()
    pair = torch.stack([x, x], dim=1)
    out = mixed(pair)
    torch.testing.assert_close(out[:, 0], ps.UnitInterval().double()(x))
    torch.testing.assert_close(out[:, 1], x)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (
            1.0,
            1.0,
            "Box needs low < high everywhere; 1 of 1 elements break it, e.g. at []: low=1.0, high=1.0.",
        ),
        (torch.tensor([0.0, 2.0, 0.0]), 1.0, "1 of 3 elements break it, e.g. at [1]: low=2.0, high=1.0."),
        (math.nan, 1.0, "Box: 'low' is NaN at []; bounds must be numbers."),
        (True, 1.0, "Box: 'low' must be a real number or tensor, not a boolean."),
        ("a", 1.0, "Box: 'low' must be a real number or tensor; got str."),
        (torch.zeros(2), torch.ones(3), "do not broadcast against each other"),
        (-3e38, 3e38, "high - low overflows torch.float32"),
        (math.inf, math.inf, "low < high"),
    ],
)
def test_bad_bounds(low, high, message):
    with pytest.raises(ps.SpecError, match=re.escape(message)):
        ps.Box(low, high)


def test_bounds_are_buffers_that_follow_dtype_and_state_dict():
    box = ps.Box(torch.zeros(3, 1), 2.0)
    assert dict(box.named_buffers()).keys() == {"low", "high"}
    assert box.half().low.dtype == torch.float16
    fresh = ps.Box(torch.ones(3, 1), 5.0)
    fresh.load_state_dict(ps.Box(torch.zeros(3, 1), 2.0).state_dict())
    assert fresh.high.item() == 2.0
    assert fresh.low.sum().item() == 0.0


def test_converting_bounds_past_the_dtype_range_is_an_error():
    with pytest.raises(
        ps.SpecError,
        match=re.escape("converting 'low' to torch.float16 would turn a finite bound into infinity"),
    ):
        ps.Box(-1e5, 1e5).half()
    with pytest.raises(ps.SpecError, match="low < high"):
        ps.Box(1000.0, 1001.0).to(torch.bfloat16)  # both round to 1000


def test_loading_invalid_bounds_is_refused_before_copying():
    box = ps.Box(-1.0, 1.0)
    with pytest.raises(ps.SpecError, match="low < high"):
        box.load_state_dict({"low": torch.tensor(2.0), "high": torch.tensor(1.0)})
    assert box.low.item() == -1.0


def test_loading_infinite_bounds_switches_the_map():
    box = ps.Box(-1.0, 1.0)
    box.load_state_dict({"low": torch.tensor(-1.0), "high": torch.tensor(math.inf)})
    assert box(torch.tensor([100.0])).item() == pytest.approx(99.0, rel=1e-6)


def test_one_sided_bounds_must_be_finite():
    with pytest.raises(ps.SpecError, match="'low' is inf at \\[\\]; one-sided bounds must be finite"):
        ps.GreaterThan(math.inf)
    with pytest.raises(ps.SpecError, match=r"'high' is -inf at \[1\]"):
        ps.LessThan(torch.tensor([0.0, -math.inf]))


def test_less_than_increases_with_the_unconstrained_value():
    # float64: at x = 5 the unit-slope map is 5e-10 below the bound, which float32 rounds onto it.
    values = ps.LessThan(1.0)(torch.linspace(-5, 5, 11, dtype=torch.float64))
    assert (values.diff() > 0).all()
    assert (values < 1).all()


# ---------------------------------------------------------------------------------- Positive
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_inverse_is_accurate_from_tiny_to_huge(dtype):
    finfo = torch.finfo(dtype)
    exponents = torch.linspace(
        math.log10(finfo.tiny), math.log10(finfo.max) - 0.01, 2000, dtype=torch.float64
    )
    y = (10.0**exponents).to(dtype)
    got = softplus_inverse(y).double()
    y64 = y.double()
    # log(expm1(y)) in float64 is exact enough below 700; above, softplus^-1(y) = y to double precision.
    reference = torch.where(y64 < 700, torch.log(torch.expm1(y64.clamp(max=700))), y64)
    assert torch.isfinite(got).all()
    # Near y = log 2 the result crosses 0, so measure against |u| + |y| (the inverse's condition).
    assert ((got - reference).abs() <= 8 * finfo.eps * (reference.abs() + y64)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_inverse_has_finite_gradients_at_its_thresholds(dtype):
    eps = torch.finfo(dtype).eps
    threshold = math.log(eps) + 2
    points = torch.tensor([math.exp(threshold), -threshold, torch.finfo(dtype).tiny, 1.0, 1e30], dtype=dtype)
    y = points.clone().requires_grad_(True)
    softplus_inverse(y).sum().backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_positive_is_strictly_positive_in_every_dtype(dtype):
    for method in ("softplus", "exp"):
        values = ps.Positive(method=method)(torch.tensor([-1e4, -100.0, 0.0, 1e4]).to(dtype))
        assert (values > 0).all()
        assert torch.isfinite(values).all()
        assert values[0] == torch.finfo(dtype).tiny


def test_positive_accepts_zero_and_stores_a_finite_value():
    u = ps.Positive().right_inverse(torch.zeros(3))
    assert torch.isfinite(u).all()


def test_positive_exp_method():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(ps.Positive(method="exp").double()(x), torch.exp(x))


# ----------------------------------------------------------------------------------- Simplex
def test_simplex_round_trips_one_hot_rows():
    y = torch.eye(4)
    u = ps.Simplex().right_inverse(y)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(ps.Simplex()(u), y, atol=1e-30, rtol=0)


def test_simplex_inverse_is_centred():
    u = ps.Simplex(dim=0).right_inverse(torch.tensor([[0.2, 0.5], [0.8, 0.5]]))
    torch.testing.assert_close(u.sum(0), torch.zeros(2))


def test_simplex_sum_tolerance_scales_with_length_and_dtype():
    simplex = ps.Simplex()
    long_row = torch.softmax(torch.randn(10_000), 0)
    assert simplex.contains(long_row).all()  # torch's fixed 1e-6 rejects about a third of these
    assert not simplex.contains(torch.tensor([0.5, 0.6])).all()
    assert simplex.contains(torch.tensor([0.5, 0.5 + 1e-4], dtype=torch.float16)).all()


def test_simplex_messages_name_the_slice():
    with pytest.raises(ps.InfeasibleValueError, match=re.escape("worst: the slice [1, :] sums to 1.5")):
        ps.Simplex().right_inverse(torch.tensor([[0.5, 0.5], [1.0, 0.5]]))
    with pytest.raises(
        ps.InfeasibleValueError, match=re.escape("the slice [:, 0] has entry -0.5 at position 1")
    ):
        ps.Simplex(dim=0).right_inverse(torch.tensor([[1.5, 0.5], [-0.5, 0.5]]))


def test_simplex_to_interior_is_the_projection_pulled_inside():
    projected = ps.Simplex().to_interior(
        torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, -1.0]], dtype=torch.float64)
    )
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64) * (1 - 1e-3) + 1e-3 / 3
    torch.testing.assert_close(projected, expected)


def test_simplex_needs_a_dimension():
    with pytest.raises(ps.ShapeMismatchError, match="at least one dimension"):
        ps.Simplex().check_shape(torch.Size([]))


# --------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    # From -2: below, Positive's 0.25 softplus(4x) underflows float16 (floored at its smallest normal).
    x = torch.linspace(-2, 8, 101)
    for transform in (ps.Box(-1.0, 1.0), ps.Positive(), ps.Simplex()):
        expected = transform(x.to(dtype).float()).to(dtype)
        torch.testing.assert_close(transform.to(dtype)(x.to(dtype)), expected, atol=0, rtol=0)
