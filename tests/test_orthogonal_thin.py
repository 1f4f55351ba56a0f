"""``Orthogonal(method="thin")`` (and ``"auto"`` on tall or wide matrices): the exponential of a
rank-2k skew matrix without any n x n matrix, checked against the full n x n ``torch.matrix_exp``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.transforms.matrix.base import matrix_tolerance
from paramshape.transforms.matrix.orthogonal import _resolved

from .test_matrix import Holder, deviation, random_orthogonal


def full_reference(z: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """exp(Z B^T - B Z^T) B with the n x n exponential, in float64: the independent reference."""
    z, base = z.double(), base.double()
    return torch.linalg.matrix_exp(z @ base.mT - base @ z.mT) @ base


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 10.0])
def test_thin_is_the_exponential_of_the_skew_matrix_it_stands_for(scale):
    value = random_orthogonal(40, 3, dtype=torch.float64)
    transform = ps.Orthogonal(method="thin").double()
    transform.right_inverse(value)  # sets the base
    z = scale * torch.randn(40, 3, dtype=torch.float64) / 40**0.5
    torch.testing.assert_close(transform(z), full_reference(z, value), rtol=0, atol=1e-12)


def test_thin_before_any_assignment_rotates_the_first_identity_columns():
    z = torch.randn(12, 2, dtype=torch.float64) * 0.3
    torch.testing.assert_close(
        ps.Orthogonal(method="thin").double()(z), full_reference(z, torch.eye(12, 2, dtype=torch.float64))
    )


def test_thin_gradient_at_zero_is_the_canonical_riemannian_gradient():
    value = random_orthogonal(20, 4, dtype=torch.float64)
    transform = ps.Orthogonal(method="thin").double()
    stored = transform.right_inverse(value).requires_grad_(True)
    g = torch.randn(20, 4, dtype=torch.float64)
    (transform(stored) * g).sum().backward()
    torch.testing.assert_close(stored.grad, g - value @ g.mT @ value)


def test_auto_takes_thin_for_long_matrices_only():
    assert _resolved("auto", torch.Size([30000, 50])) == "thin"
    assert _resolved("auto", torch.Size([50, 30000])) == "thin"
    assert _resolved("auto", torch.Size([8, 2])) == "thin"
    assert _resolved("auto", torch.Size([7, 2])) == "matrix_exp"
    assert _resolved("auto", torch.Size([256, 256])) == "matrix_exp"
    assert _resolved("cayley", torch.Size([30000, 50])) == "cayley"
    assert repr(ps.Orthogonal()) == "Orthogonal()"
    assert repr(ps.Orthogonal(method="thin")) == "Orthogonal(method='thin')"


def test_a_long_weight_keeps_an_n_by_k_base_and_its_value_bit_for_bit():
    value = random_orthogonal(3000, 8, dtype=torch.float32)
    layer = nn.Linear(8, 3000)
    with torch.no_grad():
        layer.weight.copy_(value)
    ps.constrain(layer, "weight", ps.Orthogonal())  # "auto": thin
    assert ps.constraints(layer)["weight"].base.shape == (3000, 8)  # not 3000 x 3000
    assert torch.equal(layer.weight.detach(), value)


@pytest.mark.parametrize("shape", [(40, 3), (3, 40), (2, 24, 2)])
def test_thin_training_stays_on_the_manifold(shape):
    module = Holder(torch.zeros(shape))
    ps.constrain(module, "value", ps.Orthogonal(method="thin"), init="sample")
    target = torch.randn(shape)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    start = (module.value - target).square().sum().item()
    for _ in range(100):
        optimizer.zero_grad()
        (module.value - target).square().sum().backward()
        optimizer.step()
    q = module.value.detach()
    tall = q.mT if shape[-2] < shape[-1] else q
    assert (deviation(tall) <= matrix_tolerance(torch.float32, max(shape[-2:]))).all()
    assert (module.value - target).square().sum().item() < start


@pytest.mark.parametrize("method", ["matrix_exp", "cayley"])
def test_square_maps_differentiate_the_rotation_and_polish_outside_autograd(method):
    """The polish only removes rounding: value and gradient are those of the rotation itself, in
    float64 (where the rounding it removes is below the comparison's tolerance)."""
    x = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, 5, dtype=torch.float64)
    (ps.Orthogonal(method=method).double()(x) * weights).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    skew = 0.5 * (reference - reference.mT)
    eye = torch.eye(5, dtype=torch.float64)
    rotation = (
        torch.linalg.matrix_exp(skew)
        if method == "matrix_exp"
        else torch.linalg.solve(eye - skew, eye + skew)
    )
    (rotation * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_the_thin_cap_is_one_number_in_every_dtype():
    """Beyond the cap (Frobenius norm 53.8, float32's eps ** -1/4) the stored tensor is scaled down to
    it in every dtype: a float32 and a float64 copy of one stored tensor give one rotation (to
    float32's rounding), so a dtype move rounds the value and never changes the map. With a cap of
    float64's own eps ** -1/4 (8192) the two differ by O(1) at a norm of 200."""
    torch.manual_seed(0)
    stored = torch.randn(40, 4, dtype=torch.float64)
    stored *= 200 / torch.linalg.matrix_norm(stored)
    transform = ps.Orthogonal(method="thin")
    single = transform(stored.float()).double()
    double = transform.double()(stored)
    assert (single - double).abs().max() < 1e-4
    # 54 is just above the cap (53.8): scaled to the same tensor; 40 is below it: another rotation.
    assert (transform(stored * (54.0 / 200)) - double).abs().max() < 1e-12
    assert (transform(stored * (40.0 / 200)) - double).abs().max() > 0.1
