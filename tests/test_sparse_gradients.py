"""Modules that make sparse gradients (``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``):
the default mode refuses them at ``constrain`` (torch's backward of the maps is dense only, so the
first ``backward()`` would fail inside torch), ``fold=True`` passes the sparse gradient on as one,
equal to the chain rule computed densely, and ``method="project"`` trains them with
``SparseAdam``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramshape as ps
from tests import module_snapshot

BOX = ps.Box(-0.5, 0.5)
ROWS = torch.tensor([1, 2, 2, 7])


def _embedding(kind: type[nn.Module] = nn.Embedding) -> nn.Module:
    torch.manual_seed(0)
    module = kind(10, 3, sparse=True)
    with torch.no_grad():
        module.weight.mul_(0.4 / module.weight.abs().max())
    return module


def _dense_lookup(kind: type[nn.Module], weight: torch.Tensor) -> torch.Tensor:
    if kind is nn.EmbeddingBag:
        return F.embedding_bag(ROWS, weight, torch.tensor([0, 2]))
    return F.embedding(ROWS, weight)


def _lookup(module: nn.Module) -> torch.Tensor:
    if isinstance(module, nn.EmbeddingBag):
        return module(ROWS, torch.tensor([0, 2]))
    return module(ROWS)


@pytest.mark.parametrize("kind", [nn.Embedding, nn.EmbeddingBag])
@pytest.mark.parametrize("spec", ["box(-0.5, 0.5)", "unit_norm", "positive"])
def test_the_default_mode_refuses_a_sparse_module_and_changes_nothing(
    kind: type[nn.Module], spec: str
) -> None:
    model = nn.Sequential(_embedding(kind), nn.Linear(3, 3))
    before = module_snapshot.take(model)
    with pytest.raises(
        ps.UnsupportedTensorError,
        match=rf"'0\.weight' of Sequential \(shape \(10, 3\), float32\): {kind.__name__}\(sparse=True\) "
        r"makes sparse gradients.*fold=True.*method='project'",
    ):
        ps.constrain(model, "*.weight", spec, init="sample")
    module_snapshot.assert_same(before, module_snapshot.take(model))


def test_a_dense_embedding_is_constrained_as_usual() -> None:
    module = _embedding()
    module.sparse = False
    ps.constrain(module, "weight", BOX)
    _lookup(module).sum().backward()
    assert module.parametrizations.weight.original.grad.layout == torch.strided


@pytest.mark.parametrize("kind", [nn.Embedding, nn.EmbeddingBag])
@pytest.mark.parametrize("held", ["none", "dense", "sparse"])
def test_fold_passes_the_chain_rule_on_as_a_sparse_gradient(kind: type[nn.Module], held: str) -> None:
    """Two backward calls into a gradient that is absent, dense or sparse beforehand: the result
    equals the chain rule through the map computed densely by autograd (the reference), and a
    sparse gradient stays sparse, as the unconstrained module's would."""
    module = _embedding(kind)
    ps.constrain(module, "weight", BOX, fold=True)
    stored = module.parametrizations.weight.original
    start = {"none": None, "dense": torch.ones(10, 3), "sparse": torch.ones(10, 3).to_sparse(1)}[held]
    stored.grad = start
    _lookup(module).sum().backward()
    (_lookup(module) ** 2).sum().backward()

    reference = stored.detach().clone().requires_grad_()
    value = BOX(reference)  # the map's value, differentiated densely by autograd
    (_dense_lookup(kind, value).sum() + (_dense_lookup(kind, value) ** 2).sum()).backward()
    expected = reference.grad + (0 if start is None else 1)
    grad = stored.grad
    if start is not None and held == "dense":
        assert grad is start  # summed in place, as autograd's accumulation does into a dense one
    assert grad.layout == (torch.strided if held == "dense" else torch.sparse_coo)
    torch.testing.assert_close(grad.to_dense(), expected, rtol=1e-5, atol=1e-7)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[ROWS] = False
    assert (grad.to_dense()[untouched] == (0 if start is None else 1)).all()  # rows not looked up


def test_fold_and_project_train_a_sparse_embedding_with_sparse_adam() -> None:
    for options in ({"fold": True}, {"method": "project"}):
        module = _embedding()
        ps.constrain(module, "weight", BOX, **options)  # type: ignore[arg-type]
        optimizer = torch.optim.SparseAdam(list(module.parameters()), lr=0.2)
        before = module.weight.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.SaturationWarning)
            for _ in range(20):
                optimizer.zero_grad()
                (_lookup(module) - 3.0).pow(2).sum().backward()
                optimizer.step()
        after = module.weight.detach()
        assert after.abs().max() <= 0.5, options
        assert (after[ROWS] > before[ROWS]).all(), options  # pushed towards 3, up to the bound
        rest = torch.ones(10, dtype=torch.bool)
        rest[ROWS] = False
        torch.testing.assert_close(after[rest], before[rest], rtol=0, atol=0)  # never looked up


def test_fold_sums_a_dense_gradient_into_a_sparse_one() -> None:
    """A sparse gradient from the lookup, then a dense one from a term on the whole weight (a
    penalty): the sum is dense, g f'(u) of both, as autograd's accumulation makes it."""
    module = _embedding()
    ps.constrain(module, "weight", BOX, fold=True)
    stored = module.parametrizations.weight.original
    _lookup(module).sum().backward()
    assert stored.grad.layout == torch.sparse_coo
    module.weight.square().sum().backward()  # the value read whole: a dense gradient
    reference = stored.detach().clone().requires_grad_()
    value = BOX(reference)
    (F.embedding(ROWS, value).sum() + value.square().sum()).backward()
    assert stored.grad.layout == torch.strided
    torch.testing.assert_close(stored.grad, reference.grad, rtol=1e-5, atol=1e-7)
