"""Property-based tests (hypothesis): random bounds, values, dtypes and spec strings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import paramshape as ps

DTYPES = st.sampled_from([torch.float32, torch.float64])
UNCONSTRAINED = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
BOUND = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def boxes(draw):
    low, high = sorted(draw(st.lists(BOUND, min_size=2, max_size=2, unique=True)))
    assume(high - low > 1e-3 * max(abs(low), abs(high), 1.0))
    return low, high


@given(bounds=boxes(), xs=st.lists(UNCONSTRAINED, min_size=1, max_size=20), dtype=DTYPES)
def test_box_forward_lands_in_the_box(bounds, xs, dtype):
    box = ps.Box(*bounds).to(dtype)
    y = box(torch.tensor(xs, dtype=dtype))
    assert torch.isfinite(y).all()
    assert ((y >= box.low) & (y <= box.high)).all()


@given(bounds=boxes(), fractions=st.lists(st.floats(1e-6, 1 - 1e-6), min_size=1, max_size=20), dtype=DTYPES)
def test_box_round_trip(bounds, fractions, dtype):
    low, high = bounds
    box = ps.Box(low, high).to(dtype)
    y = (box.low + (box.high - box.low) * torch.tensor(fractions, dtype=dtype)).clamp(box.low, box.high)
    u = box.right_inverse(y)
    assert torch.isfinite(u).all()
    eps = torch.finfo(dtype).eps
    scale = max(abs(low), abs(high))
    # A few ulps of the bounds, plus what one ulp of the stored u moves the value by (slope <= w/4).
    tolerance = 8 * eps * scale + eps * u.abs() * (high - low) / 4
    assert ((box(u) - y).abs() <= tolerance).all()


@given(
    low=BOUND,
    xs=st.lists(UNCONSTRAINED, min_size=1, max_size=20),
    method=st.sampled_from(["softplus", "exp"]),
)
def test_greater_than_forward_and_inverse(low, xs, method):
    transform = ps.GreaterThan(low, method=method).double()
    y = transform(torch.tensor(xs, dtype=torch.float64))
    assert torch.isfinite(y).all()
    assert (y >= low).all()
    u = transform.right_inverse(y)
    assert torch.isfinite(u).all()
    assert transform.contains(transform(u)).all()


@given(ys=st.lists(st.floats(min_value=1e-30, max_value=1e30), min_size=1, max_size=20))
def test_positive_round_trip_over_sixty_orders_of_magnitude(ys):
    positive = ps.Positive().double()
    y = torch.tensor(ys, dtype=torch.float64)
    u = positive.right_inverse(y)
    # Storing u costs one ulp of u, which the map turns into |u| ulps of y where y ~ exp(u).
    tolerance = 4 * torch.finfo(torch.float64).eps * y * (1 + u.abs())
    assert ((positive(u) - y).abs() <= tolerance).all()


@given(rows=st.lists(st.lists(st.floats(0, 1), min_size=2, max_size=8), min_size=1, max_size=4))
def test_simplex_inverse_of_normalised_rows(rows):
    width = min(len(row) for row in rows)
    values = torch.tensor([row[:width] for row in rows], dtype=torch.float64)
    assume(bool((values.sum(-1) > 1e-3).all()))
    y = values / values.sum(-1, keepdim=True)
    simplex = ps.Simplex()
    u = simplex.right_inverse(y)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(simplex(u), y, atol=1e-12, rtol=1e-9)


@given(bounds=boxes())
def test_spec_strings_carry_the_bounds(bounds):
    low, high = bounds
    box = ps.resolve(f"box({low!r}, {high!r})")
    assert box.low.item() == pytest.approx(low, rel=1e-6)
    assert box.high.item() == pytest.approx(high, rel=1e-6)


@given(values=st.lists(st.one_of(st.floats(-3, 3), st.just(math.nan)), min_size=6, max_size=6))
def test_assignment_stores_or_refuses_and_never_half_changes(values):
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    before = layer.parametrizations.weight.original.detach().clone()
    new = torch.tensor(values).reshape(2, 3)
    feasible = bool(((new >= -1) & (new <= 1)).all()) and not any(math.isnan(v) for v in values)
    if feasible:
        layer.weight = new
        assert ((layer.weight - new).abs() <= 4 * torch.finfo(torch.float32).eps).all()
    else:
        with pytest.raises(ps.InfeasibleValueError):
            layer.weight = new
        assert torch.equal(layer.parametrizations.weight.original, before)
