"""The Riemannian interface of the transforms (``manifold``, ``riemannian_grad``, ``retract``,
``transport``), checked against independent references: the tangent spaces and metrics written out
here from their definitions, not taken from the transforms."""

from __future__ import annotations

import pytest
import torch

import paramshape as ps
from tests.transform_cases import CASES

MANIFOLD_CASES = [case for case in CASES if case.build().manifold]


def _tangent_reference(transform: ps.Transform, point: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A random tangent vector at ``point``, built from the definition of each tangent space."""
    if isinstance(transform, ps.UnitNorm):
        # {v : <v, p> = 0} along dim: remove the component along p with an explicit projector.
        p = point.movedim(transform.dim, -1).unsqueeze(-1)
        eye = torch.eye(p.shape[-2], dtype=p.dtype)
        v = (eye - p @ p.mT) @ noise.movedim(transform.dim, -1).unsqueeze(-1)
        return v.squeeze(-1).movedim(-1, transform.dim)
    if isinstance(transform, ps.Orthogonal):
        # {Q A + Q_perp B : A skew}: built from a complete QR basis of the tall matrix.
        wide = point.shape[-2] < point.shape[-1]
        q = point.mT if wide else point
        n, k = q.shape[-2:]
        full = torch.cat([q, torch.linalg.qr(q, mode="complete").Q[..., k:]], -1)
        a = noise.reshape(-1)[: k * k].reshape(k, k)
        b = torch.randn(*q.shape[:-2], n - k, k, dtype=q.dtype)
        v = full @ torch.cat([(a - a.mT).expand(*q.shape[:-2], k, k), b], -2)
        return v.mT if wide else v
    if isinstance(transform, ps.PositiveDefinite):
        return noise + noise.mT  # every symmetric matrix
    pytest.skip(f"no independent tangent space written for {type(transform).__name__}")


def _metric(transform: ps.Transform, point: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if isinstance(transform, ps.PositiveDefinite):
        # Affine-invariant: tr(P^-1 U P^-1 V), summed over the batch.
        inverse = torch.linalg.inv(point)
        return torch.einsum("...ij,...ji->", inverse @ u, inverse @ v)
    return (u * v).sum()


def _in_tangent_space(transform: ps.Transform, point: torch.Tensor, v: torch.Tensor) -> float:
    """How far ``v`` is from the tangent space at ``point`` (0 for a tangent vector)."""
    if isinstance(transform, ps.UnitNorm):
        return float((v * point).sum(transform.dim).abs().max())
    if isinstance(transform, ps.Orthogonal):
        q, w = (point.mT, v.mT) if point.shape[-2] < point.shape[-1] else (point, v)
        return float((q.mT @ w + w.mT @ q).abs().max())
    if isinstance(transform, ps.PositiveDefinite):
        return float((v - v.mT).abs().max())
    pytest.skip(f"no independent tangent space written for {type(transform).__name__}")


def _point(case, dtype=torch.float64):
    transform = case.build().to(dtype)
    point = transform.sample(case.shape, dtype=dtype)
    if isinstance(transform, ps.PositiveDefinite):
        # Samples can be nearly singular; the checks below want a condition number of a few hundred.
        point = point + torch.eye(case.shape[-1], dtype=dtype)
    return transform, point


@pytest.mark.parametrize("case", MANIFOLD_CASES, ids=lambda c: c.id)
def test_riemannian_gradient_is_tangent_and_represents_the_euclidean_one(case):
    # The Riemannian gradient is the unique tangent vector r with <r, v>_p = <g, v> for every
    # tangent v: checked on random tangents from the reference tangent spaces.
    transform, point = _point(case)
    egrad = torch.randn_like(point)
    rgrad = transform.riemannian_grad(point, egrad)
    assert rgrad.shape == point.shape
    assert rgrad.dtype == point.dtype
    assert _in_tangent_space(transform, point, rgrad) < 1e-10
    for _ in range(3):
        v = _tangent_reference(transform, point, torch.randn_like(point))
        lhs, rhs = _metric(transform, point, rgrad, v), (egrad * v).sum()
        # The affine-invariant metric inverts P, losing digits to its condition number.
        assert torch.allclose(lhs, rhs, rtol=1e-6, atol=1e-8), (float(lhs), float(rhs))


@pytest.mark.parametrize("case", MANIFOLD_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_retraction_lands_on_the_set_for_large_steps(case, dtype):
    transform, point = _point(case, dtype)
    for scale in (1e-3, 1.0, 1e3):
        tangent = transform.riemannian_grad(point, scale * torch.randn_like(point))
        new = transform.retract(point, tangent)
        assert new.dtype == dtype
        assert new.shape == point.shape
        assert bool(transform.contains(new).all()), scale
        assert bool(torch.isfinite(new).all())


@pytest.mark.parametrize("case", MANIFOLD_CASES, ids=lambda c: c.id)
def test_retraction_is_first_order(case):
    # R_p(0) = p and (R_p(t v) - p) / t -> v: a first-order error O(t).
    transform, point = _point(case)
    v = _tangent_reference(transform, point, torch.randn_like(point))
    assert torch.allclose(transform.retract(point, torch.zeros_like(point)), point, atol=1e-12)
    t = 1e-6
    slope = (transform.retract(point, t * v) - point) / t
    assert torch.allclose(slope, v, atol=1e-4 * (1 + float(v.abs().max())))


@pytest.mark.parametrize("case", MANIFOLD_CASES, ids=lambda c: c.id)
def test_transport_lands_in_the_new_tangent_space_and_keeps_tangents_at_the_same_point(case):
    transform, point = _point(case)
    v = _tangent_reference(transform, point, torch.randn_like(point))
    assert torch.allclose(transform.transport(point, point, v), v, atol=1e-10)
    new = transform.retract(point, 0.3 * v / float(v.norm()))
    moved = transform.transport(point, new, v)
    assert _in_tangent_space(transform, new, moved) < 1e-10


def test_sphere_gradient_matches_the_projector_formula():
    # I - p p^T applied to g: the textbook formula (Absil et al., 2008, ex. 3.6.1).
    p = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected = g - (0.6 * 1.0 + 0.8 * 2.0) * p
    assert torch.allclose(ps.UnitNorm().riemannian_grad(p, g), expected)


def test_positive_definite_step_is_scale_free():
    # Affine invariance: the retraction of the Riemannian gradient step commutes with scaling the
    # matrix by c when the loss's gradient scales as 1/c (log det, for example).
    pd = ps.PositiveDefinite().double()
    p = pd.sample((3, 3), dtype=torch.float64)
    g = torch.linalg.inv(p)  # gradient of log det P
    small = pd.retract(p, -0.1 * pd.riemannian_grad(p, g))
    big = pd.retract(1000 * p, -0.1 * pd.riemannian_grad(1000 * p, g / 1000))
    assert torch.allclose(big, 1000 * small, rtol=1e-10)


def test_transforms_without_manifold_raise_naming_the_other_strategies():
    box = ps.Box(-1, 1)
    assert not box.manifold
    with pytest.raises(
        ps.ManifoldUnavailableError, match=r"method='riemannian' is not available for Box.*'lagrangian'"
    ):
        box.riemannian_grad(torch.zeros(2), torch.ones(2))
    with pytest.raises(ps.ManifoldUnavailableError, match="not available for Box"):
        box.retract(torch.zeros(2), torch.ones(2))
    with pytest.raises(ps.ManifoldUnavailableError, match="not available for Box"):
        box.transport(torch.zeros(2), torch.zeros(2), torch.ones(2))
    assert issubclass(ps.ManifoldUnavailableError, NotImplementedError)


def test_the_manifold_transforms_are_the_documented_ones():
    names = {case.name for case in MANIFOLD_CASES}
    assert {"unit_norm", "orthogonal", "positive_definite"} <= names
