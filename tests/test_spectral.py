"""SpectralBound beyond the shared contract: the map against a plain float64 reference, the
convolution's operator norm measured on the convolution itself, the projection against an
independent SVD, and settings refused with paramshape errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramshape as ps


def reference_map(x: torch.Tensor, bound: float) -> torch.Tensor:
    """X c tanh(sigma / c) / sigma, in float64, sigma from numpy-free power of the Gram matrix."""
    x = x.double()
    sigma = torch.linalg.eigvalsh(x.mT @ x)[..., -1].sqrt()[..., None, None]
    return x * bound * torch.tanh(sigma / bound) / sigma


def conv_operator_norm(weight: torch.Tensor, size: int, steps: int = 300, **conv: int) -> float:
    """The largest singular value of ``x -> conv2d(x, weight)`` on ``size x size`` inputs, by power
    iteration on the convolution and its adjoint (conv_transpose2d), in float64."""
    weight = weight.double()
    x = torch.randn(1, weight.shape[1], size, size, dtype=torch.float64)
    for _ in range(steps):
        x = (x / x.norm()).detach().requires_grad_(True)
        y = F.conv2d(x, weight, **conv)
        x = torch.autograd.grad((y * y).sum() / 2, x)[0]  # A^T A x
    x = x.detach() / x.norm()
    return float(F.conv2d(x, weight, **conv).norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_map_matches_the_plain_reference(dtype):
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    got = ps.SpectralBound(1.5).to(dtype)(x.to(dtype)).double()
    assert (got - reference_map(x, 1.5)).abs().max() <= 16 * torch.finfo(dtype).eps * 1.5


def test_the_value_is_a_rescaled_input_below_the_bound():
    x = 100 * torch.randn(4, 6, dtype=torch.float64)
    y = ps.SpectralBound(0.5).double()(x)
    assert torch.linalg.matrix_norm(y, ord=2) <= 0.5 * (1 + 1e-12)  # tanh(200) rounds to 1
    assert torch.allclose(y / y.norm(), x / x.norm(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_mode_bounds_the_operator_norm_of_the_convolution(stride, padding, dilation):
    torch.manual_seed(0)
    transform = ps.SpectralBound(1.0, conv=True).double()
    # A kernel pushed to the boundary, so the guarantee is tested where it binds.
    kernel = transform(50 * torch.randn(6, 3, 3, 3, dtype=torch.float64))
    reshaped = torch.linalg.matrix_norm(kernel.flatten(1), ord=2)
    assert math.isclose(float(reshaped), 1 / 3, rel_tol=1e-6)
    norm = conv_operator_norm(kernel, 12, stride=stride, padding=padding, dilation=dilation)
    assert norm <= 1.0 + 1e-9
    # Bounding only the reshaped kernel (what torch's spectral_norm does) does not bound the conv:
    # an all-ones 1-channel kernel divided by 3 has reshaped norm 1 but operator norm near 3.
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    assert conv_operator_norm(ones / 3, 24, padding=1) > 2.5


@pytest.mark.parametrize("conv", [False, True])
def test_projection_clips_the_singular_values(conv):
    shape = (5, 2, 3, 3) if conv else (3, 5, 7)
    y = 3 * torch.randn(shape, dtype=torch.float64)
    matrices = y.flatten(1) if conv else y
    limit = 1.0 / 3 if conv else 1.0
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    expected = (u @ torch.diag_embed(s.clamp_max(limit)) @ vh).reshape(shape)
    got = ps.SpectralBound(1.0, conv=conv).project(y)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_log_abs_det_jacobian_in_closed_form_matches_the_autograd_jacobian():
    transform = ps.SpectralBound(2.0).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(transform, x).reshape(12, 12)
    expected = torch.linalg.slogdet(jacobian).logabsdet
    assert math.isclose(
        float(transform.log_abs_det_jacobian(x, transform(x))), float(expected), rel_tol=1e-10
    )


def test_training_keeps_the_layer_lipschitz():
    torch.manual_seed(0)
    layer = ps.constrain(nn.Linear(6, 6), "weight", ps.SpectralBound(1.0), init="sample")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(32, 6)
    for _ in range(30):
        optimizer.zero_grad()
        (-layer(x).pow(2).mean()).backward()  # rewards a large norm
        optimizer.step()
    sigma = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
    assert 0.99 < sigma <= 1.0 + 1e-5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ps.SpectralBound(0.0), "bound must be a finite positive number"),
        (lambda: ps.SpectralBound(math.inf), "bound must be a finite positive number"),
        (lambda: ps.SpectralBound(1.0, conv=1), "conv must be True or False"),
    ],
)
def test_bad_settings_raise_spec_errors(build, message):
    with pytest.raises(ps.SpecError, match=message):
        build()


def test_conv_mode_needs_a_kernel():
    with pytest.raises(ps.ShapeMismatchError, match=r"takes a conv kernel \(out, in, \*kernel\)"):
        ps.constrain(nn.Linear(3, 3), "weight", ps.SpectralBound(1.0, conv=True))


def test_assigning_a_matrix_with_a_large_singular_value_names_it():
    layer = ps.constrain(nn.Linear(2, 2), "weight", "spectral_bound(1)", init="sample")
    with pytest.raises(
        ps.InfeasibleValueError, match=r"the matrix has largest singular value 2\.0 \(at most 1\.0\)"
    ):
        layer.weight = torch.diag(torch.tensor([2.0, 0.5]))
