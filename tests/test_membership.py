"""Membership precision, per dtype, against the tolerances the documentation states.

The tolerances below are written from ``docs/transforms.md`` (a test checks that the page still
states them), not read from the code: loosen the code's tolerance (``Box(-1, 1).contains(1.00005)``,
a float64 tolerance of 1e-7, a simplex that accepts rows summing to 1.0009) and a value pushed
outside by twice the documented tolerance gets in. Such a value must be refused alike by
``contains``, by an assignment and by loading a checkpoint (which then leaves the module as it was);
a value inside by half the tolerance must be accepted, so the tolerance is not tighter than stated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import paramshape as ps

from .transform_cases import DTYPES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "transforms.md"

#: Documented tolerances (docs/transforms.md). Elementwise: "4 ulps of the bound, in y's dtype".
ELEMENTWISE_ULPS = 4
#: Simplex: "a sum off by 4·eps of the dtype plus 2·K·eps of the compute dtype"; SumToZero and
#: UnitNorm: "4 ulps plus 2·K compute-dtype epsilons" (times Σ|yᵢ| for SumToZero).
SLICE_ULPS, SLICE_PER_ENTRY = 4, 2
#: Matrices: "10·n·eps of the compute dtype plus 4·√n·eps of the tensor's dtype".
MATRIX_PER_ROW, MATRIX_CAST = 10, 4

HALF = (torch.float16, torch.bfloat16)


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def compute_eps(dtype: torch.dtype) -> float:
    return eps(torch.float32 if dtype in HALF else dtype)


def elementwise_tolerance(dtype: torch.dtype, bound: float) -> float:
    return ELEMENTWISE_ULPS * eps(dtype) * max(abs(bound), torch.finfo(dtype).tiny)


def slice_tolerance(dtype: torch.dtype, size: int) -> float:
    return SLICE_ULPS * eps(dtype) + SLICE_PER_ENTRY * size * compute_eps(dtype)


def matrix_tolerance(dtype: torch.dtype, size: int) -> float:
    return MATRIX_PER_ROW * size * compute_eps(dtype) + MATRIX_CAST * math.sqrt(size) * eps(dtype)


def test_the_documentation_states_these_tolerances():
    text = re.sub(r"\s+", " ", DOCS.read_text())
    assert "4 ulps of the bound, in `y`'s dtype" in text
    assert "4·eps of the dtype plus 2·K·eps of the compute dtype" in text
    assert "4 ulps plus 2·K compute-dtype epsilons" in text
    assert "10·n·eps of the compute dtype plus 4·√n·eps of the tensor's dtype" in text


@dataclass(frozen=True)
class Probe:
    """A transform and a value that lies ``m`` documented tolerances outside (``m > 0``) or inside
    (``m < 0``) its set, with the plain measurement of how far outside the rounded value really is."""

    name: str
    build: Callable[[], ps.Transform]
    value: Callable[[float, torch.dtype], Tensor]  # (m, dtype) -> float64 value before rounding
    outside: Callable[[Tensor, torch.dtype], float]  # rounded value -> multiples of the tolerance


def _elementwise(
    name: str, build: Callable[[], ps.Transform], bound: float, side: int, inside: float
) -> Probe:
    """Values ``[inside, inside, bound + side * m * tol]``; ``side`` +1 above a high bound, -1 below a low."""

    def value(m: float, dtype: torch.dtype) -> Tensor:
        return torch.tensor(
            [inside, inside, bound + side * m * elementwise_tolerance(dtype, bound)], dtype=torch.float64
        )

    def outside(y: Tensor, dtype: torch.dtype) -> float:
        return side * (float(y[-1]) - bound) / elementwise_tolerance(dtype, bound)

    return Probe(name, build, value, outside)


def _simplex_value(m: float, dtype: torch.dtype) -> Tensor:
    y = torch.full((2, 4), 0.25, dtype=torch.float64)
    y[1, 0] += m * slice_tolerance(dtype, 4)
    return y


def _simplex_outside(y: Tensor, dtype: torch.dtype) -> float:
    return float((y.sum(-1) - 1).abs().max()) / slice_tolerance(dtype, 4)


def _sphere_value(m: float, dtype: torch.dtype) -> Tensor:
    y = torch.full((2, 4), 0.5, dtype=torch.float64)
    y[1] *= 1 + m * slice_tolerance(dtype, 4)
    return y


def _sphere_outside(y: Tensor, dtype: torch.dtype) -> float:
    return float((torch.linalg.vector_norm(y, dim=-1) - 1).abs().max()) / slice_tolerance(dtype, 4)


def _sum_to_zero_value(m: float, dtype: torch.dtype) -> Tensor:
    y = torch.tensor([[1.0, -1.0, 0.5, -0.5], [1.0, -1.0, 0.5, -0.5]], dtype=torch.float64)
    y[1, 0] += m * slice_tolerance(dtype, 4) * 3.0  # sum of magnitudes: 3
    return y


def _sum_to_zero_outside(y: Tensor, dtype: torch.dtype) -> float:
    return float((y.sum(-1).abs() / y.abs().sum(-1)).max()) / slice_tolerance(dtype, 4)


def _ordered_value(m: float, dtype: torch.dtype) -> Tensor:
    y = torch.tensor([[-1.0, 0.0, 1.0, 2.0], [-1.0, 2.0, 2.0, 3.0]], dtype=torch.float64)
    y[1, 2] -= m * elementwise_tolerance(dtype, 2.0)  # a drop after the entry 2
    return y


def _ordered_outside(y: Tensor, dtype: torch.dtype) -> float:
    return float((y[1, 1] - y[1, 2]) / elementwise_tolerance(dtype, 2.0))


def _corr_cholesky_value(m: float, dtype: torch.dtype) -> Tensor:
    y = torch.eye(4, dtype=torch.float64)
    y[3, :] = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64) * (1 + m * matrix_tolerance(dtype, 4))
    return y


def _corr_cholesky_outside(y: Tensor, dtype: torch.dtype) -> float:
    return float((torch.linalg.vector_norm(y, dim=-1) - 1).abs().max()) / matrix_tolerance(dtype, 4)


def _orthogonal_value(m: float, dtype: torch.dtype) -> Tensor:
    # |Q^T Q - I| = (1 + d)^2 - 1 for Q = diag(1 + d, 1, 1): d chosen so that it is m tolerances.
    d = math.sqrt(1 + m * matrix_tolerance(dtype, 3)) - 1
    return torch.diag(torch.tensor([1.0 + d, 1.0, 1.0], dtype=torch.float64))


def _orthogonal_outside(y: Tensor, dtype: torch.dtype) -> float:
    gram = y.mT @ y - torch.eye(3, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(gram, ord=2)) / matrix_tolerance(dtype, 3)


PROBES = [
    _elementwise("box-high", lambda: ps.Box(-1.0, 1.0), 1.0, +1, 0.0),
    _elementwise("box-low", lambda: ps.Box(-1.0, 1.0), -1.0, -1, 0.0),
    _elementwise("box-far-high", lambda: ps.Box(100.0, 101.0), 101.0, +1, 100.5),
    _elementwise("unit_interval", lambda: ps.UnitInterval(), 0.0, -1, 0.5),
    _elementwise("positive", lambda: ps.Positive(), 0.0, -1, 1.0),
    _elementwise("greater_than", lambda: ps.GreaterThan(0.5), 0.5, -1, 2.0),
    _elementwise("less_than", lambda: ps.LessThan(-1.0), -1.0, +1, -2.0),
    _elementwise("soft_clip", lambda: ps.SoftClip(-1.0, 1.0), 1.0, +1, 0.0),
    Probe("simplex", lambda: ps.Simplex(), _simplex_value, _simplex_outside),
    Probe("unit_norm", lambda: ps.UnitNorm(), _sphere_value, _sphere_outside),
    Probe("sum_to_zero", lambda: ps.SumToZero(), _sum_to_zero_value, _sum_to_zero_outside),
    Probe("ordered", lambda: ps.Ordered(), _ordered_value, _ordered_outside),
    Probe("corr_cholesky", lambda: ps.CorrCholesky(), _corr_cholesky_value, _corr_cholesky_outside),
    Probe("orthogonal", lambda: ps.Orthogonal(), _orthogonal_value, _orthogonal_outside),
]


class Holder(nn.Module):
    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


def _rounded(probe: Probe, m: float, dtype: torch.dtype) -> Tensor:
    """The probe's value in ``dtype``, checked to lie where intended after rounding: at least
    ``0.75 m`` tolerances outside for ``m >= 1``, at most 0.75 of one otherwise."""
    y = probe.value(m, dtype).to(dtype)
    measured = probe.outside(y.double(), dtype)
    if m >= 1:
        assert measured >= 0.75 * m, f"rounding to {dtype} moved the probe to {measured:.3g} tolerances"
    else:
        assert measured <= 0.75, f"rounding to {dtype} moved the probe to {measured:.3g} tolerances"
    return y


def _feasible(probe: Probe, dtype: torch.dtype) -> Holder:
    inside = _rounded(probe, 0.0, dtype)
    module = Holder(inside)
    ps.constrain(module, "value", probe.build(), init="keep")
    return module


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_half_a_tolerance_outside_is_accepted(probe, dtype):
    y = _rounded(probe, 0.5, dtype)
    transform = probe.build().to(dtype)
    assert bool(transform.contains(y).all()), "contains refused a value within the documented tolerance"
    module = _feasible(probe, dtype)
    module.value = y  # accepted: no InfeasibleValueError


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_two_tolerances_outside_are_rejected_everywhere(probe, dtype):
    y = _rounded(probe, 2.0, dtype)
    transform = probe.build().to(dtype)
    assert not bool(transform.contains(y).all()), "contains accepted it"

    module = _feasible(probe, dtype)
    before = {key: value.clone() for key, value in module.state_dict().items()}
    with pytest.raises(ps.InfeasibleValueError, match="outside"):
        module.value = y
    with pytest.raises(ps.InfeasibleValueError, match="outside"):
        module.load_state_dict({"value": y})
    after = module.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed by a refused load"
