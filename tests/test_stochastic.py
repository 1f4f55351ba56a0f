"""DoublyStochastic beyond the shared contract: the value is the Sinkhorn scaling D1 exp(X) D2 (its
log differs from X by a row plus a column constant), permutation matrices round-trip, extreme
inputs stay finite, and the refusals (projection, settings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps


def test_value_is_a_diagonal_scaling_of_exp_x_with_unit_margins():
    x = 2 * torch.randn(3, 5, 5, dtype=torch.float64)
    p = ps.DoublyStochastic(max_iterations=1000).double()(x)  # converged: stopped by the tolerance
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(-2), torch.ones(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    # Sinkhorn's theorem: P = D1 exp(X) D2, so log P - X = a 1^T + 1 b^T: its double-centred part is 0.
    r = torch.log(p) - x
    centred = r - r.mean(-1, keepdim=True) - r.mean(-2, keepdim=True) + r.mean((-2, -1), keepdim=True)
    # Weighted by P: balance's last correction is absolute, so the log of a tiny entry may move more.
    assert float((centred.abs() * p).max()) < 1e-12


def test_a_permutation_matrix_round_trips():
    t = ps.DoublyStochastic()
    perm = torch.eye(4)[[2, 0, 3, 1]]
    back = t(t.right_inverse(perm))
    torch.testing.assert_close(back, perm, rtol=0, atol=1e-6)


def test_extreme_inputs_give_finite_members_and_gradients_even_unconverged():
    t = ps.DoublyStochastic(max_iterations=3)
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 30.0, 1e4], [0.0, 1e4, -30.0]], requires_grad=True)
    p = t(x)
    assert bool(t.contains(p.detach()))
    (p * torch.arange(9.0).reshape(3, 3)).sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_rows_off_by_more_than_the_tolerance_are_refused():
    t = ps.DoublyStochastic().double()
    bad = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    bad[0, 0] += 1e-3
    bad[0, 1] -= 1e-3
    bad[1, 0] -= 1e-3  # column 0 balanced again; row 1 sums to 1 - 1e-3
    with pytest.raises(ps.InfeasibleValueError, match=r"row 1 summing to 0\.998999"):
        t.right_inverse(bad)
    with pytest.raises(ps.InfeasibleValueError, match="has a negative entry"):
        t.right_inverse(torch.tensor([[1.5, -0.5], [-0.5, 1.5]], dtype=torch.float64))


def test_method_project_is_refused_because_the_projection_is_not_closed_form():
    layer = nn.Linear(3, 3)
    with pytest.raises(ps.ProjectionUnavailableError, match="not available for DoublyStochastic"):
        ps.constrain(layer, "weight", ps.DoublyStochastic(), method="project", init="sample")
    assert not hasattr(layer, "parametrizations")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_iteration_counts_raise_spec_errors(bad):
    with pytest.raises(ps.SpecError, match="max_iterations must be a positive integer"):
        ps.DoublyStochastic(max_iterations=bad)


def test_spec_string():
    assert repr(ps.resolve("doubly_stochastic")) == "DoublyStochastic()"
    assert repr(ps.resolve("doubly_stochastic(max_iterations=20)")) == "DoublyStochastic(max_iterations=20)"
