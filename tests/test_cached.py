"""Repeated reads: a constrained weight read several times in one forward (an RNN cell unrolled over
time, tied uses) is computed once under ``torch.nn.utils.parametrize.cached()``, and the recipe in
docs/performance.md -- the cache around the forward only -- never serves a stale value."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps


class Cell(nn.Module):
    """An RNN cell whose recurrent weight is constrained; ``unroll`` reads it once per time step."""

    def __init__(self) -> None:
        super().__init__()
        self.recurrent = ps.constrain(nn.Linear(6, 6), "weight", ps.Box(-0.5, 0.5), init="project")
        self.reads = 0
        box = ps.constraints(self.recurrent)["weight"]
        box.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.reads += 1

    def unroll(self, h: torch.Tensor, steps: int = 5) -> torch.Tensor:
        for _ in range(steps):
            h = torch.tanh(self.recurrent(h))
        return h


@pytest.fixture
def cell():
    torch.manual_seed(0)
    return Cell()


def test_without_the_cache_each_read_recomputes_the_weight(cell):
    cell.unroll(torch.randn(3, 6))
    assert cell.reads == 5


def test_the_cache_computes_the_weight_once_per_forward_with_the_same_gradient(cell):
    h = torch.randn(3, 6)
    original = cell.recurrent.parametrizations.weight.original
    cell.unroll(h).sum().backward()
    expected = original.grad.clone()
    original.grad = None
    cell.reads = 0
    with parametrize.cached():
        out = cell.unroll(h)
    out.sum().backward()
    assert cell.reads == 1
    torch.testing.assert_close(original.grad, expected)


def test_a_cache_spanning_the_optimizer_step_serves_the_stale_value(cell):
    """The trap the docs warn about: inside one cached() block, a read after step() is the old value."""
    optimizer = torch.optim.SGD(cell.parameters(), lr=1.0)
    h = torch.randn(3, 6)
    with parametrize.cached():
        before = cell.recurrent.weight.detach().clone()
        cell.unroll(h).sum().backward()
        optimizer.step()
        stale = cell.recurrent.weight.detach().clone()
    fresh = cell.recurrent.weight.detach()
    assert torch.equal(stale, before)
    assert not torch.equal(fresh, before)


def test_the_cache_around_the_forward_only_is_fresh_every_step(cell):
    """The recipe: cache the forward, then backward and step outside the block."""
    optimizer = torch.optim.SGD(cell.parameters(), lr=1.0)
    h = torch.randn(3, 6)
    seen = []
    for _ in range(3):
        optimizer.zero_grad()
        with parametrize.cached():
            loss = cell.unroll(h).square().sum()
            seen.append(cell.recurrent.weight.detach().clone())
        loss.backward()
        optimizer.step()
    assert not torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[1], seen[2])
    assert cell.reads == 3
    assert bool((cell.recurrent.weight.abs() <= 0.5).all())
