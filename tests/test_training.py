"""Constraints in real training loops, including the static-wrapping bug paramshape exists to fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.demo import main as run_demo


class StaticallyWrapped(nn.Module):
    """The common mistake: the constrained value is computed once, in __init__."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))
        self.value = torch.sigmoid(self.raw)  # a graph built once, never rebuilt


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(0.5))


def test_static_wrapping_fails_on_the_second_backward():
    model = StaticallyWrapped()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = (model.value - 0.9) ** 2
    loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        ((model.value - 0.9) ** 2).backward()


def test_constrained_scalar_trained_toward_0_9_converges():
    model = ps.constrain(Scalar(), "value", ps.UnitInterval())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = (model.value - 0.9) ** 2
        loss.backward()  # a fresh graph every iteration
        optimizer.step()
        assert 0 < model.value.item() < 1
    assert model.value.item() == pytest.approx(0.9, abs=1e-3)


def test_a_target_outside_the_set_pins_the_value_near_the_bound_not_past_it():
    model = ps.constrain(Scalar(), "value", ps.UnitInterval())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    # The optimum is on the bound: the map saturates, and the warning points to method="project".
    with pytest.warns(ps.SaturationWarning, match="method='project'"):
        _fit(model, optimizer, target=2.0, steps=200)
    assert 0.99 < model.value.item() <= 1.0


def _fit(model: nn.Module, optimizer: torch.optim.Optimizer, target: float, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        ((model.value - target) ** 2).backward()
        optimizer.step()


def test_demo_fits_and_keeps_constraints(capsys):
    model = run_demo(steps=150, report_every=50)
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.strip() and line.split()[0].isdigit()]
    losses = [float(row[1]) for row in rows]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < losses[0] - 0.3
    assert all(row[-1] == "yes" for row in rows)
    for name, transform in ps.constraints(model).items():
        assert transform.contains(getattr(model, name)).all()
