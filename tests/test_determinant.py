"""PositiveDeterminant beyond the shared contract: the map against a plain float64 reference, values
kept exactly on assignment, the sign of the determinant under long training, and refusals."""

from __future__ import annotations

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
