"""Transform.project: the Euclidean projection onto the closed set, for every transform that has one.

The projection is checked by its defining properties, not against its own output: the result lies
in the set, feasible values are fixed points, and for a convex set C the point P(y) is the projection
of y exactly when <y - P(y), z - P(y)> <= 0 for every z in C (the variational inequality).
"""

from __future__ import annotations

import math

import pytest
import torch

import paramshape as ps

from .transform_cases import CASES, DTYPES, Case


def has_projection(case: Case) -> bool:
    return type(case.build()).project is not ps.Transform.project


PROJECTING = [pytest.param(case, id=case.id) for case in CASES if has_projection(case)]
NOT_PROJECTING = [pytest.param(case, id=case.id) for case in CASES if not has_projection(case)]


def is_convex(transform: ps.Transform) -> bool:
    """False for the sets with a projection that are not convex: a shell of norms, a rank bound.
    Their projections are still checked against feasible points (never farther than any)."""
    if isinstance(transform, ps.MinMaxNorm):
        return transform.min_value == 0
    if isinstance(transform, ps.PositiveSemidefinite):
        return transform.rank is None
    # Orthonormal bases (a Stiefel manifold) and rank <= r (the sum of two rank-1 matrices has rank 2)
    # are not convex.
    return not isinstance(transform, (ps.Grassmannian, ps.LowRank))


def build(case: Case, dtype: torch.dtype) -> ps.Transform:
    transform = case.build().to(dtype)
    transform.check_shape(torch.Size(case.shape))
    return transform


def per_event(transform: ps.Transform, values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over each event (a slice for vector transforms, nothing for elementwise ones)."""
    dims = transform.event_dims(values.dim())
    return values.sum(dims) if dims else values


def wild_values(case: Case, dtype: torch.dtype) -> torch.Tensor:
    """Values inside and far outside the set, on both sides."""
    y = 20 * torch.randn(case.shape, dtype=torch.float64)  # contiguous, so view works below
    y.view(-1)[::4] = torch.rand(y.view(-1)[::4].shape, dtype=torch.float64)
    return y.to(dtype)


def feasible_points(case: Case, transform: ps.Transform, dtype: torch.dtype) -> list[torch.Tensor]:
    points = [transform.sample(case.shape, dtype=dtype) for _ in range(4)]
    with torch.no_grad():
        for extreme in (13.8, -13.8, 30.0, -30.0):
            stored = torch.full(tuple(transform.inverse_shape(torch.Size(case.shape))), extreme)
            points.append(transform(stored.to(dtype)))
    return points


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PROJECTING)
def test_projection_lands_in_the_set_and_keeps_shape_and_dtype(case, dtype):
    transform = build(case, dtype)
    y = wild_values(case, dtype)
    projected = transform.project(y)
    assert projected.shape == y.shape
    assert projected.dtype == dtype
    assert torch.isfinite(projected).all()
    assert transform.contains(projected).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PROJECTING)
def test_feasible_values_are_fixed_points(case, dtype):
    transform = build(case, dtype)
    eps = torch.finfo(dtype).eps
    for z in feasible_points(case, transform, dtype):
        moved = (transform.project(z).double() - z.double()).abs()
        size = math.prod(z.shape[d] for d in transform.event_dims(z.dim()))  # entries per event
        assert (moved <= 8 * size * eps * z.double().abs().clamp_min(1.0)).all()


@pytest.mark.parametrize("case", PROJECTING)
def test_variational_inequality_characterizes_the_projection(case):
    transform = build(case, torch.float64)
    if not is_convex(transform):
        pytest.skip("the variational inequality characterizes projections onto convex sets only")
    y = wild_values(case, torch.float64)
    projected = transform.project(y)
    residual = y - projected
    for z in feasible_points(case, transform, torch.float64):
        inner = per_event(transform, residual * (z - projected))
        scale = per_event(transform, residual.abs() * (z - projected).abs())
        assert (inner <= 1e-12 * (1 + scale)).all(), f"{transform!r}: not the nearest point"


@pytest.mark.parametrize("case", PROJECTING)
def test_projection_is_idempotent_and_never_farther_than_a_feasible_point(case):
    transform = build(case, torch.float64)
    y = wild_values(case, torch.float64)
    projected = transform.project(y)
    torch.testing.assert_close(transform.project(projected), projected, rtol=0, atol=1e-12)
    distance = per_event(transform, (y - projected).square())
    for z in feasible_points(case, transform, torch.float64):
        assert (distance <= per_event(transform, (y - z).square()) + 1e-9).all()


@pytest.mark.parametrize("case", PROJECTING)
def test_nan_stays_nan(case):
    transform = build(case, torch.float32)
    y = transform.sample(case.shape).contiguous()
    y.view(-1)[0] = float("nan")
    assert torch.isnan(transform.project(y)).any()


def test_box_projection_is_the_clamp_with_infinite_bounds_clamping_nothing():
    box = ps.Box(torch.tensor([-1.0, -float("inf"), 0.0]), torch.tensor([1.0, 2.0, float("inf")]))
    y = torch.tensor([[-5.0, 5.0, -5.0], [5.0, -1e30, 1e30]])
    expected = torch.tensor([[-1.0, 2.0, 0.0], [1.0, -1e30, 1e30]])
    assert torch.equal(box.project(y), expected)


def test_one_sided_projections():
    y = torch.tensor([-2.0, 0.5, 3.0])
    assert torch.equal(ps.Positive().project(y), torch.tensor([0.0, 0.5, 3.0]))
    assert torch.equal(ps.GreaterThan(1.0).project(y), torch.tensor([1.0, 1.0, 3.0]))
    assert torch.equal(ps.LessThan(1.0).project(y), torch.tensor([-2.0, 0.5, 1.0]))


def test_simplex_projection_of_a_known_point():
    # (2, -1, 0) minus tau = 1 gives (1, -2, -1); clipped: the vertex (1, 0, 0).
    # (0.5, 0.5, 0.5) minus tau = 1/6 gives the uniform distribution.
    y = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, 0.5]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(ps.Simplex().project(y), expected)
    torch.testing.assert_close(ps.Simplex(dim=0).project(y.T), expected.T)


@pytest.mark.parametrize("case", NOT_PROJECTING)
def test_transforms_without_a_projection_say_which_strategies_remain(case):
    transform = case.build()
    with pytest.raises(ps.ProjectionUnavailableError, match="method='reparam' or method='penalty'"):
        transform.project(transform.sample(case.shape))
    assert issubclass(ps.ProjectionUnavailableError, NotImplementedError)
