"""Example constructions of every registered transform, for the contract suite.

Each registered name needs at least one entry (a meta-test enforces it), so a newly registered
transform is tested as soon as it is registered and given an example here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import paramshape as ps


@dataclass(frozen=True)
class Case:
    """One transform under test, with the shape of the tensor it constrains."""

    name: str
    build: Callable[[], ps.Transform]
    shape: tuple[int, ...] = (4, 5)

    @property
    def id(self) -> str:
        return f"{self.name}:{self.build()!r}"


CASES: list[Case] = [
    Case("box", lambda: ps.Box(-1.0, 1.0)),
    Case("box", lambda: ps.Box(100.0, 101.0)),
    Case("box", lambda: ps.Box(torch.linspace(-3.0, 0.0, 4).reshape(4, 1), torch.tensor(2.5))),
    Case("box", lambda: ps.Box(0.0, math.inf)),
    Case("box", lambda: ps.Box(-math.inf, -2.0)),
    Case(
        "box",
        lambda: ps.Box(
            torch.tensor([-1.0, -math.inf, 0.0, -math.inf, 3.0]),
            torch.tensor([1.0, 2.0, math.inf, math.inf, 4.0]),
        ),
    ),
    Case("unit_interval", lambda: ps.UnitInterval()),
    Case("positive", lambda: ps.Positive()),
    Case("positive", lambda: ps.Positive(method="exp")),
    Case("greater_than", lambda: ps.GreaterThan(0.5)),
    Case("greater_than", lambda: ps.GreaterThan(torch.tensor([-2.0, 0.0, 1.0, 5.0, 10.0]), method="exp")),
    Case("less_than", lambda: ps.LessThan(-1.0)),
    Case("less_than", lambda: ps.LessThan(torch.full((4, 1), 3.0), method="exp")),
    Case("simplex", lambda: ps.Simplex()),
    Case("simplex", lambda: ps.Simplex(dim=0)),
    Case("simplex", lambda: ps.Simplex(dim=-1), shape=(2, 3, 50)),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def case_params() -> list:
    import pytest

    return [pytest.param(case, id=case.id) for case in CASES]
