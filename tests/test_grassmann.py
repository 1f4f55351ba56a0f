"""Grassmannian beyond the shared contract: the horizontal gradient and QR retraction against their
textbook formulas, uniform samples, a projection that keeps the span, and PCA by method="riemannian"
reaching the top eigenspace (checked against an eigendecomposition)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps


def _basis(n: int, k: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=generator)).Q


def test_gradient_is_the_euclidean_one_with_the_span_component_removed():
    q = _basis(6, 2)
    g = torch.randn(6, 2, dtype=torch.float64)
    expected = (torch.eye(6, dtype=torch.float64) - q @ q.T) @ g  # (I - Q Q^T) G (Absil et al. 2004)
    torch.testing.assert_close(ps.Grassmannian().riemannian_grad(q, g), expected, rtol=1e-12, atol=1e-12)
    # Wide: rows span the subspace.
    torch.testing.assert_close(
        ps.Grassmannian().riemannian_grad(q.T, g.T), expected.T, rtol=1e-12, atol=1e-12
    )


def test_retraction_is_the_q_factor_with_a_positive_diagonal():
    q = _basis(5, 2)
    v = ps.Grassmannian().riemannian_grad(q, torch.randn(5, 2, dtype=torch.float64))
    moved = ps.Grassmannian().retract(q, v)
    # An independent Gram-Schmidt of the two columns of Q + V.
    a = q + v
    first = a[:, 0] / a[:, 0].norm()
    second = a[:, 1] - (first @ a[:, 1]) * first
    expected = torch.stack([first, second / second.norm()], 1)
    torch.testing.assert_close(moved, expected, rtol=1e-12, atol=1e-12)


def test_projection_spans_the_same_subspace():
    y = torch.randn(3, 7, 3, dtype=torch.float64)
    projected = ps.Grassmannian().project(y)
    torch.testing.assert_close(projected.mT @ projected, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    # The same span: projecting y's columns onto span(Q) changes nothing.
    torch.testing.assert_close(projected @ (projected.mT @ y), y, rtol=1e-10, atol=1e-10)


def test_samples_are_uniform_subspaces():
    # For a uniform k-dimensional subspace of R^n, E[Q Q^T] = (k / n) I.
    samples = ps.Grassmannian().sample(
        (4000, 5, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    mean = (samples @ samples.mT).mean(0)
    torch.testing.assert_close(mean, 0.4 * torch.eye(5, dtype=torch.float64), rtol=0, atol=0.03)
    assert bool(ps.Grassmannian().double().contains(samples).all())


@pytest.mark.parametrize(
    "make", [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda p: torch.optim.Adam(p, lr=0.05)]
)
def test_pca_by_riemannian_steps_finds_the_top_eigenspace(make):
    generator = torch.Generator().manual_seed(3)
    spectrum = torch.tensor([5.0, 4.0, 1.0, 0.5, 0.2, 0.1])
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=generator)).Q
    a = rotation @ torch.diag(spectrum) @ rotation.T
    module = nn.Module()
    module.basis = nn.Parameter(torch.linalg.qr(torch.randn(6, 2, generator=generator)).Q)
    ps.constrain(module, "basis", ps.Grassmannian(), method="riemannian")
    optimizer = make(module.parameters())
    checker = ps.Grassmannian()
    for _ in range(300):
        optimizer.zero_grad()
        (-torch.trace(module.basis.T @ a @ module.basis)).backward()
        optimizer.step()
        assert bool(checker.contains(module.basis.detach()))
    top = rotation[:, :2]
    # The same subspace: the projectors agree (the basis itself may be any rotation of top's).
    torch.testing.assert_close(
        module.basis.detach() @ module.basis.detach().T, top @ top.T, rtol=0, atol=1e-3
    )


def test_spec_string_and_methods():
    assert repr(ps.resolve("grassmannian")) == "Grassmannian()"
    assert repr(ps.resolve("grassmannian(method='cayley')")) == "Grassmannian(method='cayley')"
    with pytest.raises(ps.SpecError, match="Grassmannian: method must be one of"):
        ps.Grassmannian(method="householder")


def test_method_project_re_orthonormalises_a_plain_parameter_after_each_step():
    layer = nn.Linear(3, 8, bias=False)
    with pytest.warns(ps.ParamshapeWarning, match="moved 1 of 1 matrices onto Grassmannian"):
        ps.constrain(layer, "weight", ps.Grassmannian(), method="project", init="project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        weight = layer.weight.detach()
        torch.testing.assert_close(weight.T @ weight, torch.eye(3), rtol=0, atol=1e-5)
