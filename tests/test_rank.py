"""PositiveSemidefinite beyond the shared contract: the map against a plain float64 reference, the
stored factor's shape, rank-deficient values kept on assignment, the projection against an
independent eigendecomposition, and the messages for values outside the set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps


def test_full_rank_map_is_the_gram_matrix_of_the_lower_triangle():
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    lower = torch.zeros_like(x)
    for i in range(4):
        for j in range(i + 1):
            lower[:, i, j] = x[:, i, j]
    expected = torch.einsum("bik,bjk->bij", lower, lower)
    torch.testing.assert_close(ps.PositiveSemidefinite().double()(x), expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_map_is_the_gram_matrix_of_the_stored_factor(dtype):
    factor = torch.randn(2, 5, 2, dtype=torch.float64)
    expected = torch.einsum("bik,bjk->bij", factor, factor)
    got = ps.PositiveSemidefinite(rank=2).to(dtype)(factor.to(dtype)).double()
    assert (got - expected).abs().max() <= 32 * torch.finfo(dtype).eps * expected.abs().max()
    assert torch.equal(got, got.mT)


def test_the_stored_tensor_is_the_factor_and_rank_deficient_values_round_trip():
    layer = nn.Linear(6, 6, bias=False)
    ps.constrain(layer, "weight", ps.PositiveSemidefinite(rank=2), init="sample")
    assert layer.parametrizations.weight.original.shape == (6, 2)
    u = torch.randn(6, 1)
    value = u @ u.T  # rank 1 <= 2: a member
    layer.weight = value
    torch.testing.assert_close(layer.weight.detach(), value, rtol=1e-5, atol=1e-5)


def test_singular_values_are_members_and_round_trip_without_rank():
    t = ps.PositiveSemidefinite().double()
    u = torch.randn(5, 2, dtype=torch.float64)
    value = u @ u.T  # rank 2 of 5: on the boundary of the cone
    assert bool(t.contains(value).all())
    torch.testing.assert_close(t(t.right_inverse(value)), value, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [None, 1, 3])
def test_projection_matches_an_independent_eigendecomposition(rank):
    y = torch.randn(4, 5, 5, dtype=torch.float64)
    symmetric = (y + y.mT) / 2
    values, vectors = torch.linalg.eigh(symmetric)
    kept = values.clamp_min(0)
    if rank is not None:
        kept[..., : 5 - rank] = 0
    expected = vectors @ torch.diag_embed(kept) @ vectors.mT
    torch.testing.assert_close(
        ps.PositiveSemidefinite(rank=rank).project(y), expected, rtol=1e-12, atol=1e-12
    )


def test_too_high_a_rank_is_refused_with_the_value():
    u = torch.randn(4, 2, dtype=torch.float64)
    value = u @ u.T
    with pytest.raises(
        ps.InfeasibleValueError, match=r"has rank above 1: an eigenvalue beyond the 1 largest is"
    ):
        ps.PositiveSemidefinite(rank=1).double().right_inverse(value)


def test_negative_eigenvalues_are_refused():
    with pytest.raises(
        ps.InfeasibleValueError, match=r"not positive semi-definite: its smallest eigenvalue is -1\.0"
    ):
        ps.PositiveSemidefinite().right_inverse(torch.diag(torch.tensor([1.0, -1.0])))


@pytest.mark.parametrize(
    ("rank", "message"), [(0, "positive integer"), (1.5, "positive integer"), (True, "positive integer")]
)
def test_bad_ranks_raise_spec_errors(rank, message):
    with pytest.raises(ps.SpecError, match=message):
        ps.PositiveSemidefinite(rank=rank)


def test_a_rank_above_the_size_is_a_shape_error_and_leaves_the_module_alone():
    layer = nn.Linear(3, 3)
    with pytest.raises(ps.ShapeMismatchError, match="use a rank of at most 3"):
        ps.constrain(layer, "weight", ps.PositiveSemidefinite(rank=4))
    assert not hasattr(layer, "parametrizations")


def test_spec_string():
    assert repr(ps.resolve("positive_semidefinite(rank=2)")) == "PositiveSemidefinite(rank=2)"
    assert repr(ps.resolve("positive_semidefinite")) == "PositiveSemidefinite()"


def test_the_list_command_names_every_transform_in_aligned_columns(capsys):
    from paramshape.__main__ import main

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(ps.available())
    row = next(line for line in lines if line.startswith("positive_semidefinite "))
    assert row.split()[1] == "PositiveSemidefinite"
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(starts) == 1, "the class column is not aligned"
