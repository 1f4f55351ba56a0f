"""The Riemannian interface of the transforms (``manifold``, ``riemannian_grad``, ``retract``,
``transport``), checked against independent references: the tangent spaces and metrics written out
here from their definitions, not taken from the transforms."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps
from tests.transform_cases import CASES

from .test_constrain import assert_unchanged, snapshot

MANIFOLD_CASES = [case for case in CASES if case.build().manifold]


def _tangent_reference(transform: ps.Transform, point: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A random tangent vector at ``point``, built from the definition of each tangent space."""
    if isinstance(transform, ps.UnitNorm):
        # {v : <v, p> = 0} along dim: remove the component along p with an explicit projector.
        p = point.movedim(transform.dim, -1).unsqueeze(-1)
        eye = torch.eye(p.shape[-2], dtype=p.dtype)
        v = (eye - p @ p.mT) @ noise.movedim(transform.dim, -1).unsqueeze(-1)
        return v.squeeze(-1).movedim(-1, transform.dim)
    if isinstance(transform, ps.Grassmannian):
        # Horizontal vectors {Q_perp B}: from the complement columns of a complete QR basis.
        wide = point.shape[-2] < point.shape[-1]
        q = point.mT if wide else point
        n, k = q.shape[-2:]
        complement = torch.linalg.qr(q, mode="complete").Q[..., k:]
        v = complement @ torch.randn(*q.shape[:-2], n - k, k, dtype=q.dtype)
        return v.mT if wide else v
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
    if isinstance(transform, ps.Grassmannian):
        q, w = (point.mT, v.mT) if point.shape[-2] < point.shape[-1] else (point, v)
        return float((q.mT @ w).abs().max())
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
    assert {"unit_norm", "orthogonal", "positive_definite", "grassmannian"} <= names


# ---------------------------------------------------------------------------- method="riemannian"
def _module(name, value):
    module = nn.Module()
    module.register_parameter(name, nn.Parameter(value.clone()))
    return module


def _minimise(module, loss_fn, optimizer, steps, check=None):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        if check is not None:
            check()
    return float(loss_fn().detach())


@pytest.mark.parametrize(
    "make", [lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9), lambda p: torch.optim.Adam(p, lr=0.05)]
)
def test_top_eigenvector_on_the_sphere_stays_on_it_every_step(make):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(8, 8, generator=generator)
    a = a @ a.T / 8
    module = _module("v", torch.nn.functional.normalize(torch.randn(8, generator=generator), dim=0))
    ps.constrain(module, "v", ps.UnitNorm(), method="riemannian")
    sphere = ps.UnitNorm()

    def on_sphere():
        assert bool(sphere.contains(module.v.detach()))

    value = _minimise(module, lambda: -(module.v @ a @ module.v), make(module.parameters()), 400, on_sphere)
    assert -value == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]), rel=1e-4)


def test_momentum_is_transported_to_the_new_tangent_space():
    module = _module("v", torch.tensor([1.0, 0.0, 0.0]))
    ps.constrain(module, "v", ps.UnitNorm(), method="riemannian")
    target = torch.tensor([0.0, 1.0, 1.0])
    sgd = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    adam = None
    for optimizer in (sgd, torch.optim.Adam(module.parameters(), lr=0.1)):
        adam = optimizer
        for _ in range(5):
            optimizer.zero_grad()
            (-(module.v @ target)).backward()
            optimizer.step()
            moment = optimizer.state[module.v].get(
                "momentum_buffer", optimizer.state[module.v].get("exp_avg")
            )
            assert abs(float(moment @ module.v.detach())) < 1e-6
    assert adam is not None


def test_orthogonal_procrustes_reaches_the_polar_solution():
    # min ||Q A - B||_F over orthogonal Q: Q* = U V^T for the SVD B A^T = U S V^T (Schoenemann, 1966).
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 20, generator=generator), torch.randn(4, 20, generator=generator)
    u, _, vh = torch.linalg.svd(b @ a.T)
    module = _module("q", torch.eye(4))
    ps.constrain(module, "q", ps.Orthogonal(), method="riemannian")
    optimizer = torch.optim.Adam(module.parameters(), lr=0.02)
    _minimise(module, lambda: (module.q @ a - b).square().sum(), optimizer, 600)
    assert torch.allclose(module.q.detach(), u @ vh, atol=1e-3)
    assert bool(ps.Orthogonal().contains(module.q.detach()))


def test_positive_definite_covariance_fit_reaches_the_sample_covariance():
    # The Gaussian negative log-likelihood log det P + tr(P^-1 S) is minimised at P = S.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, generator=generator) @ torch.tensor(
        [[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.2]]
    )
    s = x.T @ x / 200
    module = _module("p", torch.eye(3))
    ps.constrain(module, "p", ps.PositiveDefinite(), method="riemannian")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.2)

    def nll():
        return torch.logdet(module.p) + torch.trace(torch.linalg.solve(module.p, s))

    _minimise(module, nll, optimizer, 200)
    assert torch.allclose(module.p.detach(), s, rtol=1e-3, atol=1e-4)


def test_only_the_parameters_of_the_stepped_optimizer_are_touched():
    module = _module("v", torch.tensor([1.0, 0.0]))
    ps.constrain(module, "v", ps.UnitNorm(), method="riemannian")
    module.v.grad = torch.tensor([1.0, 1.0])
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    other.step()
    assert torch.equal(module.v.grad, torch.tensor([1.0, 1.0]))


def test_refused_without_manifold_structure_and_the_module_is_unchanged():
    layer = nn.Linear(3, 3)
    before = snapshot(layer)
    with pytest.raises(
        ps.ManifoldUnavailableError,
        match=r"'weight' of Linear: method='riemannian' is not available for Box.*'lagrangian'",
    ):
        ps.constrain(layer, "weight", ps.Box(-1, 1), method="riemannian")
    assert_unchanged(layer, before)
    assert ps.constraints(layer) == {}


def test_init_project_starts_strictly_inside_for_positive_definite():
    module = _module("p", -torch.eye(3))
    with pytest.warns(ps.ParamshapeWarning, match="moved 1 of 1 matrices inside"):
        ps.constrain(module, "p", ps.PositiveDefinite(), method="riemannian", init="project")
    assert float(torch.linalg.eigvalsh(module.p.detach())[0]) > 0


def test_a_singular_start_is_refused_before_anything_changes():
    module = _module("p", torch.zeros(3, 3))
    before = snapshot(module)
    with pytest.raises(
        ps.InfeasibleValueError,
        match=r"'p' of Module \(shape \(3, 3\), float32\): method='riemannian' cannot step from this value",
    ):
        ps.constrain(module, "p", ps.PositiveDefinite(), method="riemannian")
    assert_unchanged(module, before)


def test_state_dict_keys_checkpoint_unconstrain_and_patterns():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    with pytest.warns(ps.ParamshapeWarning):
        ps.constrain(model, {"*.weight": ps.Orthogonal()}, method="riemannian", init="project")
    assert set(model.state_dict()) == {"0.weight", "1.weight"}
    info = ps.constraint_info(model)
    assert [i.method for i in info.values()] == ["riemannian", "riemannian"]
    clone = copy.deepcopy(model)
    optimizer = torch.optim.SGD(clone.parameters(), lr=0.5)
    clone(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    assert bool(ps.Orthogonal().contains(clone[0].weight.detach()))
    fresh = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    fresh.load_state_dict(clone.state_dict())
    ps.unconstrain(clone)
    assert ps.constraints(clone) == {}
    before = clone[0].weight.detach().clone()
    clone[0].weight.grad = torch.ones(3, 3)
    torch.optim.SGD(clone.parameters(), lr=1.0).step()
    assert torch.allclose(clone[0].weight.detach(), before - 1.0)  # a plain step: no retraction


def test_a_checkpoint_off_the_manifold_is_refused_before_anything_is_loaded():
    module = _module("v", torch.tensor([0.6, 0.8]))
    ps.constrain(module, "v", ps.UnitNorm(), method="riemannian")
    before = snapshot(module)
    with pytest.raises(ps.InfeasibleValueError, match=r"'v' of Module.*1 of 1 slices lie outside UnitNorm"):
        module.load_state_dict({"v": torch.tensor([3.0, 4.0])})
    assert_unchanged(module, before)
    module.load_state_dict({"v": torch.tensor([0.0, 1.0])})
    assert torch.equal(module.v.detach(), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("init", ["keep", "project", "raw", "sample"])
@pytest.mark.parametrize(
    ("spec", "shape"),
    [(ps.UnitNorm(), (3, 5)), (ps.Orthogonal(), (5, 3)), (ps.PositiveDefinite(), (2, 3, 3))],
    ids=["sphere", "stiefel", "pd"],
)
def test_any_start_either_steps_on_the_set_or_fails_cleanly(spec, shape, init, dtype):
    generator = torch.Generator().manual_seed(7)
    module = _module("x", torch.randn(shape, generator=generator).to(dtype))
    before = snapshot(module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.ParamshapeWarning)
            ps.constrain(module, "x", spec, method="riemannian", init=init)
    except ps.ParamshapeError:
        assert_unchanged(module, before)
        return
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        module.x.grad = torch.randn(shape, generator=generator).to(dtype)
        optimizer.step()
        assert module.x.dtype == dtype
        assert bool(torch.isfinite(module.x).all())
        assert bool(spec.to(dtype).contains(module.x.detach()).all())


@pytest.mark.parametrize(
    "duplicate", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
def test_copies_keep_their_riemannian_and_lagrangian_steps(duplicate):
    model = nn.Module()
    model.v = nn.Parameter(torch.tensor([1.0, 0.0]))
    model.w = nn.Parameter(torch.zeros(2))
    ps.constrain(model, "v", ps.UnitNorm(), method="riemannian")
    ps.constrain(model, "w", "box(-1, 1)", method="lagrangian")
    clone = duplicate(model)
    optimizer = torch.optim.SGD(clone.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        ((clone.v - 3).square().sum() + (clone.w - 3).square().sum() + ps.penalty(clone)).backward()
        optimizer.step()
    assert float(clone.v.detach().norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(ps.constraint_info(clone)["w"].multiplier.abs().max()) > 0
    assert float(ps.constraint_info(model)["w"].multiplier.abs().max()) == 0  # the original is untouched
    assert torch.equal(model.v.detach(), torch.tensor([1.0, 0.0]))
