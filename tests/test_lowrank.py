"""LowRank beyond the shared contract: the stored factors' shape, the map against a plain product,
the projection against an independent SVD (Eckart-Young), rank-deficient values kept on assignment,
the messages for values outside the set, and a state dict of the factors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps


def test_stored_tensor_is_the_two_factors_and_the_value_their_product():
    layer = ps.constrain(nn.Linear(7, 4, bias=False), "weight", ps.LowRank(rank=2), init="sample")
    stored = layer.parametrizations.weight.original
    assert stored.shape == (4 + 7, 2)
    expected = stored[:4].double() @ stored[4:].double().T  # A (4 x 2) times B (7 x 2) transposed
    torch.testing.assert_close(layer.weight.double(), expected, rtol=1e-6, atol=1e-6)
    assert int(torch.linalg.matrix_rank(layer.weight.detach())) == 2


def test_a_value_of_lower_rank_round_trips_and_a_gradient_reaches_both_factors():
    layer = ps.constrain(nn.Linear(6, 5, bias=False).double(), "weight", ps.LowRank(rank=3), init="sample")
    value = torch.randn(5, 2, dtype=torch.float64) @ torch.randn(2, 6, dtype=torch.float64)  # rank 2 <= 3
    layer.weight = value
    torch.testing.assert_close(layer.weight.detach(), value, rtol=1e-12, atol=1e-12)
    layer(torch.randn(3, 6, dtype=torch.float64)).square().sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad[:5].abs().sum() > 0
    assert grad[5:].abs().sum() > 0


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_projection_is_the_truncated_svd(rank):
    y = torch.randn(3, 6, 4, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(y, full_matrices=False)
    expected = u[..., :rank] @ torch.diag_embed(s[..., :rank]) @ vh[..., :rank, :]
    torch.testing.assert_close(ps.LowRank(rank=rank).project(y), expected, rtol=1e-12, atol=1e-12)
    # Eckart-Young: no random rank-r matrix is closer than the projection.
    others = torch.randn(200, 6, rank, dtype=torch.float64) @ torch.randn(200, rank, 4, dtype=torch.float64)
    best = torch.linalg.matrix_norm(y[0] - expected[0])
    assert (torch.linalg.matrix_norm(y[0] - others) >= best).all()


def test_too_high_a_rank_is_refused_with_the_singular_value():
    value = torch.diag(torch.tensor([3.0, 2.0, 0.5], dtype=torch.float64))
    with pytest.raises(ps.InfeasibleValueError, match=r"rank above 2: its singular value number 3 is 0\.5"):
        ps.LowRank(rank=2).double().right_inverse(value)


def test_rounding_below_the_tolerance_is_a_member_and_above_it_is_not():
    t = ps.LowRank(rank=1)
    base = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 4.0))
    bump = torch.zeros(4, 3)
    bump[3, 0] = 1.0
    eps = torch.finfo(torch.float32).eps
    assert bool(t.contains(base + eps * bump).all())
    assert not bool(t.contains(base + 1e-3 * bump).all())


@pytest.mark.parametrize("rank", [0, -1, 1.5, True, None])
def test_bad_ranks_raise_spec_errors(rank):
    with pytest.raises(ps.SpecError, match="rank must be a positive integer"):
        ps.LowRank(rank=rank)


def test_a_rank_above_the_shorter_side_is_a_shape_error_and_leaves_the_module_alone():
    layer = nn.Linear(3, 8)
    with pytest.raises(ps.ShapeMismatchError, match="use a rank of at most 3"):
        ps.constrain(layer, "weight", ps.LowRank(rank=4))
    assert not hasattr(layer, "parametrizations")


def test_a_stored_shape_is_refused_before_the_value_shape_is_known():
    with pytest.raises(ps.ShapeMismatchError, match="the value's shape is not known yet"):
        ps.LowRank(rank=2)(torch.randn(9, 2))


def test_state_dict_of_the_factors_loads_into_a_fresh_model():
    source = ps.constrain(nn.Linear(6, 5), "weight", ps.LowRank(rank=2), init="sample")
    target = ps.constrain(nn.Linear(6, 5), "weight", ps.LowRank(rank=2), init="sample")
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.weight, source.weight)


def test_spec_string():
    assert repr(ps.resolve("low_rank(rank=3)")) == "LowRank(rank=3)"


def test_a_zero_weight_is_not_a_saddle():
    """A weight of rank below r (zero here) keeps a unit left column for each missing direction,
    so its gradient is not zero and training can grow its rank."""
    layer = nn.Linear(4, 5, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    ps.constrain(layer, "weight", ps.LowRank(rank=2))
    assert torch.equal(layer.weight.detach(), torch.zeros(5, 4))
    target = torch.randn(5, 4)
    ((layer.weight - target) ** 2).sum().backward()
    assert layer.parametrizations.weight.original.grad.abs().max() > 0.1
