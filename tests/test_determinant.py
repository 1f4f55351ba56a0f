"""PositiveDeterminant beyond the shared contract: the map against a plain float64 reference, values
kept exactly on assignment, the sign of the determinant under long training, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import paramshape as ps


def reference_exp(a: torch.Tensor, terms: int = 60) -> torch.Tensor:
    """e^A by its Taylor series with scaling and squaring, in float64 (not torch.matrix_exp)."""
    squarings = max(0, int(torch.linalg.matrix_norm(a).max().log2().ceil()) + 1)
    scaled = a / 2**squarings
    result = torch.eye(a.shape[-1], dtype=torch.float64).expand_as(a).clone()
    term = result.clone()
    for k in range(1, terms):
        term = term @ scaled / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


def test_map_is_the_base_times_the_exponential():
    t = ps.PositiveDeterminant().double()
    base = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    t.right_inverse(base)  # sets the base
    x = 0.7 * torch.randn(2, 2, dtype=torch.float64)
    torch.testing.assert_close(t(x), base @ reference_exp(x), rtol=1e-12, atol=1e-12)


def test_large_exponents_are_capped_at_a_quarter_of_log_one_over_eps():
    t = ps.PositiveDeterminant()
    x = 100 * torch.randn(3, 3)
    limit = 0.25 * torch.log(torch.tensor(1 / torch.finfo(torch.float32).eps)).item()
    expected = reference_exp((x / torch.linalg.matrix_norm(x) * limit).double())
    torch.testing.assert_close(t(x).double(), expected, rtol=1e-4, atol=1e-4)


def test_assignment_keeps_the_value_exactly_and_training_keeps_the_sign():
    torch.manual_seed(0)
    layer = nn.Linear(3, 3, bias=False)
    value = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # det 2, no LU
    with torch.no_grad():
        layer.weight.copy_(value)
    ps.constrain(layer, "weight", ps.PositiveDeterminant())
    assert torch.equal(layer.weight.detach(), value)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(64, 3)
    target = x @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))  # a reflection: outside the set
    for _ in range(200):
        optimizer.zero_grad()
        (layer(x) - target).pow(2).mean().backward()
        optimizer.step()
        assert torch.linalg.det(layer.weight.detach()) > 0


def test_a_negative_determinant_is_refused_with_its_value():
    layer = ps.constrain(nn.Linear(2, 2), "weight", "positive_determinant", init="sample")
    with pytest.raises(ps.InfeasibleValueError, match=r"the matrix has determinant -6\.0"):
        layer.weight = torch.tensor([[2.0, 0.0], [0.0, -3.0]])


def test_singular_values_are_members_and_stored_as_a_nearby_well_conditioned_base():
    t = ps.PositiveDeterminant().double()
    singular = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    assert bool(t.contains(singular))
    t.right_inverse(singular)
    assert torch.linalg.det(t.base) > 0
    assert torch.linalg.matrix_norm(t.base - singular) < 0.01


def test_raw_init_is_refused():
    with pytest.raises(ps.SpecError, match="init='raw' is not available for PositiveDeterminant"):
        ps.constrain(nn.Linear(2, 2), "weight", ps.PositiveDeterminant(), init="raw")


def test_non_square_matrices_are_refused():
    with pytest.raises(ps.ShapeMismatchError, match="needs square matrices"):
        ps.constrain(nn.Linear(3, 2), "weight", ps.PositiveDeterminant())


# ------------------------------------------------------------------------------ SpecialLinear
def _ill_conditioned_sl(size: int, condition: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator)).Q
    singular = torch.logspace(0, math.log10(condition), size, dtype=torch.float64)
    value = u @ torch.diag(singular) @ v.T
    value = value * torch.sign(torch.linalg.det(value))  # a positive determinant (odd sizes)
    return value / torch.linalg.det(value).abs() ** (1 / size)


def test_special_linear_map_is_the_normalised_product_with_a_traceless_exponent():
    t = ps.SpecialLinear().double()
    base = _ill_conditioned_sl(4, 10.0)
    t.right_inverse(base)
    x = 0.3 * torch.randn(4, 4, dtype=torch.float64)
    a = x - torch.trace(x) / 4 * torch.eye(4, dtype=torch.float64)
    y = base @ reference_exp(a)
    expected = y / torch.linalg.det(y) ** 0.25
    torch.testing.assert_close(t(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_linear_determinant_is_one_where_the_plain_product_drifts(dtype):
    # The abandoned draft, B e^A with a traceless A, moves det by cond(B) cond(e^A) epsilons; the
    # normalised map keeps it within the documented tolerance of the value's own condition number.
    t = ps.SpecialLinear().to(dtype)
    base = _ill_conditioned_sl(6, 1e3).to(dtype)
    t.right_inverse(base)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, 6, dtype=dtype, generator=generator)
    with torch.no_grad():
        value = t(x)
        a = (
            x - torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)[..., None, None] / 6 * torch.eye(6, dtype=dtype)
        ).double()
        scale = (torch.linalg.matrix_norm(a) / (0.25 * math.log(1 / torch.finfo(dtype).eps))).clamp_min(1.0)
        plain = base @ torch.matrix_exp((a / scale[..., None, None]).to(dtype))  # in the dtype, as the draft
    from paramshape.transforms.matrix.determinant import special_linear_tolerance

    ours = torch.linalg.slogdet(value.double()).logabsdet.abs() / special_linear_tolerance(value)[..., 0, 0]
    drift = torch.linalg.slogdet(plain.double()).logabsdet.abs() / special_linear_tolerance(plain)[..., 0, 0]
    assert bool((ours <= 1).all())
    assert bool(t.contains(value).all())
    # Measured (docs/transforms.md, Accuracy): 0.002 against 0.007 of the tolerance in float32.
    assert float(ours.max()) < float(drift.max())


def test_special_linear_keeps_an_assigned_value_exactly():
    layer = nn.Linear(3, 3, bias=False)
    value = _ill_conditioned_sl(3, 100.0).float()
    with torch.no_grad():
        layer.weight.copy_(value)
    ps.constrain(layer, "weight", ps.SpecialLinear())  # init="keep"
    assert torch.equal(layer.weight.detach(), value)


def test_special_linear_stays_in_sl_under_a_long_outward_push():
    layer = ps.constrain(nn.Linear(4, 4, bias=False), "weight", ps.SpecialLinear(), init="sample")
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5)
    target = torch.randn(4, 4)
    for _ in range(200):
        optimizer.zero_grad()
        (layer.weight - 10 * target).square().sum().backward()  # det(10 target) is far from 1
        optimizer.step()
    assert bool(ps.SpecialLinear().contains(layer.weight.detach()))


def test_special_linear_refuses_a_determinant_off_by_more_than_rounding_and_projection():
    t = ps.SpecialLinear().double()
    with pytest.raises(ps.InfeasibleValueError, match=r"has determinant 1\.001 \(\|log det\| at most"):
        t.right_inverse(torch.diag(torch.tensor([1.001, 1.0, 1.0], dtype=torch.float64)))
    with pytest.raises(ps.InfeasibleValueError, match="has determinant -1"):
        t.right_inverse(torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)))
    with pytest.raises(ps.ProjectionUnavailableError):
        t.project(torch.eye(3, dtype=torch.float64))
    assert repr(ps.resolve("special_linear")) == "SpecialLinear()"
