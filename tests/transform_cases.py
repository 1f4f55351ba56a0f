"""Example constructions of every registered transform, for the contract suite.

Each registered name needs at least one entry (a meta-test enforces it), so a newly registered
transform is tested as soon as it is registered and given an example here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import transforms as T

import paramshape as ps

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


@dataclass(frozen=True)
class Case:
    """One transform under test, with the shape of the (constrained) tensor it applies to.

    ``registered=False`` marks a transform that has no registry name (a wrapper built from Python
    objects); it goes through the same contract, under a descriptive ``name``. ``dtypes``: those the
    per-dtype properties run in (the real ones by default; complex ones for sets of complex tensors).
    """

    name: str
    build: Callable[[], ps.Transform]
    shape: tuple[int, ...] = (4, 5)
    registered: bool = True
    dtypes: tuple[torch.dtype, ...] = REAL_DTYPES

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
    # Learnable bounds (parameters inside the transform): the same contract as fixed ones.
    Case("box", lambda: ps.Box(-1.0, 1.0, learnable=True)),
    Case(
        "box", lambda: ps.Box(torch.linspace(-3.0, 0.0, 4).reshape(4, 1), torch.tensor(2.5), learnable=True)
    ),
    Case("unit_interval", lambda: ps.UnitInterval()),
    Case("positive", lambda: ps.Positive()),
    Case("positive", lambda: ps.Positive(method="exp")),
    Case("greater_than", lambda: ps.GreaterThan(0.5)),
    Case("greater_than", lambda: ps.GreaterThan(torch.tensor([-2.0, 0.0, 1.0, 5.0, 10.0]), method="exp")),
    Case("less_than", lambda: ps.LessThan(-1.0)),
    Case("greater_than", lambda: ps.GreaterThan(0.5, learnable=True)),
    Case("less_than", lambda: ps.LessThan(torch.full((4, 1), 3.0), learnable=True)),
    Case("less_than", lambda: ps.LessThan(torch.full((4, 1), 3.0), method="exp")),
    Case("simplex", lambda: ps.Simplex()),
    Case("simplex", lambda: ps.Simplex(dim=0)),
    Case("simplex", lambda: ps.Simplex(dim=-1), shape=(2, 3, 50)),
    Case("simplex", lambda: ps.Simplex(method="ilr")),
    Case("simplex", lambda: ps.Simplex(method="stick_breaking")),
    Case("simplex", lambda: ps.Simplex(dim=0, method="stick_breaking"), shape=(30, 2)),
    Case("simplex", lambda: ps.Simplex(dim=0, method="ilr")),
    Case("simplex", lambda: ps.Simplex(dim=1, method="ilr"), shape=(2, 50, 3)),
    Case("soft_clip", lambda: ps.SoftClip(-1.0, 1.0)),
    Case("soft_clip", lambda: ps.SoftClip(-3.0, 2.0, softness=0.1)),
    Case(
        "soft_clip",
        lambda: ps.SoftClip(
            torch.tensor([-2.0, -3.0, -10.0, -2.5, -1e3]), torch.tensor([2.0, 5.0, 4.0, 2.5, 1e3])
        ),
    ),
    Case("ordered", lambda: ps.Ordered()),
    Case("ordered", lambda: ps.Ordered(dim=0)),
    Case("ordered", lambda: ps.Ordered(), shape=(2, 40)),
    Case("positive_ordered", lambda: ps.PositiveOrdered()),
    Case("positive_ordered", lambda: ps.PositiveOrdered(dim=0)),
    Case("unit_norm", lambda: ps.UnitNorm()),
    Case("unit_norm", lambda: ps.UnitNorm(dim=0)),
    Case("unit_norm", lambda: ps.UnitNorm(), shape=(2, 3, 50)),
    Case("max_norm", lambda: ps.MaxNorm(1.0)),
    Case("max_norm", lambda: ps.MaxNorm(0.5, dim=0)),
    Case("max_norm", lambda: ps.MaxNorm(3.0, dim=(1, 2, 3)), shape=(4, 2, 3, 3)),
    Case("max_norm", lambda: ps.MaxNorm(2.0), shape=(2, 50)),
    Case("min_max_norm", lambda: ps.MinMaxNorm(0.5, 2.0)),
    Case("min_max_norm", lambda: ps.MinMaxNorm(1.0, 1.5, dim=(0, 2)), shape=(3, 4, 5)),
    Case("min_max_norm", lambda: ps.MinMaxNorm(0.0, 1.0, dim=0)),
    Case("sum_to_zero", lambda: ps.SumToZero()),
    Case("sum_to_zero", lambda: ps.SumToZero(dim=0)),
    Case("sum_to_zero", lambda: ps.SumToZero(), shape=(2, 50)),
    Case("compose", lambda: ps.Compose(ps.Box(-1.0, 1.0), ps.Affine(0.0, 3.0))),
    Case("compose", lambda: ps.Compose(ps.Positive(), ps.Affine(1.0, -2.0))),
    Case("compose", lambda: ps.resolve("compose('box(0, 1)', 'affine(1, 2)')")),
    Case("compose", lambda: ps.Compose(ps.Affine(0.5, 2.0), ps.Simplex(method="ilr"))),
    Case("compose", lambda: ps.Compose(ps.Simplex(dim=0, method="ilr"), ps.Affine(0.0, 2.0))),
    Case("compose", lambda: ps.Compose(ps.Affine(0.0, 2.0), ps.SumToZero())),
    Case("torch_transform", lambda: ps.TorchTransform(T.SigmoidTransform()), registered=False),
    Case("torch_transform", lambda: ps.TorchTransform(T.AffineTransform(1.0, 2.0)), registered=False),
    Case(
        "torch_transform",
        lambda: ps.TorchTransform(T.ComposeTransform([T.AffineTransform(0.0, 0.5), T.SigmoidTransform()])),
        registered=False,
    ),
    Case("function_transform", lambda: ps.FunctionTransform(torch.asinh, torch.sinh), registered=False),
    Case("affine", lambda: ps.Affine(1.0, 2.0)),
    Case(
        "affine",
        lambda: ps.Affine(
            torch.tensor([-1.0, 0.0, 3.0, 100.0, -5.0]), torch.tensor([-3.0, 0.5, 1.0, 10.0, 1e-3])
        ),
    ),
    # Matrix transforms act on the last two dimensions; leading ones are a batch.
    Case("lower_cholesky", lambda: ps.LowerCholesky(), shape=(3, 4, 4)),
    Case("lower_cholesky", lambda: ps.LowerCholesky(), shape=(6, 6)),
    Case("positive_definite", lambda: ps.PositiveDefinite(), shape=(3, 4, 4)),
    Case("positive_definite", lambda: ps.PositiveDefinite(), shape=(6, 6)),
    Case("corr_cholesky", lambda: ps.CorrCholesky(), shape=(3, 4, 4)),
    Case("corr_cholesky", lambda: ps.CorrCholesky(), shape=(6, 6)),
    Case("corr_matrix", lambda: ps.CorrMatrix(), shape=(3, 4, 4)),
    Case("corr_matrix", lambda: ps.CorrMatrix(), shape=(6, 6)),
    Case("symmetric", lambda: ps.Symmetric(), shape=(3, 4, 4)),
    Case("symmetric", lambda: ps.Symmetric(), shape=(6, 6)),
    Case("skew_symmetric", lambda: ps.SkewSymmetric(), shape=(3, 4, 4)),
    Case("skew_symmetric", lambda: ps.SkewSymmetric(), shape=(6, 6)),
    Case("positive_semidefinite", lambda: ps.PositiveSemidefinite(), shape=(3, 4, 4)),
    Case("positive_semidefinite", lambda: ps.PositiveSemidefinite(), shape=(6, 6)),
    Case("positive_semidefinite", lambda: ps.PositiveSemidefinite(rank=2), shape=(3, 4, 4)),
    Case("positive_semidefinite", lambda: ps.PositiveSemidefinite(rank=1), shape=(6, 6)),
    Case("low_rank", lambda: ps.LowRank(rank=2), shape=(3, 4, 5)),
    Case("low_rank", lambda: ps.LowRank(rank=1), shape=(7, 3)),
    Case("spectral_bound", lambda: ps.SpectralBound(1.0), shape=(3, 4, 5)),
    Case("spectral_bound", lambda: ps.SpectralBound(2.0), shape=(6, 3)),
    Case("spectral_bound", lambda: ps.SpectralBound(1.0, conv=True), shape=(4, 2, 3, 3)),
    Case("positive_determinant", lambda: ps.PositiveDeterminant(), shape=(3, 4, 4)),
    Case("positive_determinant", lambda: ps.PositiveDeterminant(), shape=(6, 6)),
    Case("grassmannian", lambda: ps.Grassmannian(), shape=(6, 3)),
    Case("grassmannian", lambda: ps.Grassmannian(method="cayley"), shape=(2, 3, 5)),
    Case("grassmannian", lambda: ps.Grassmannian(method="thin"), shape=(9, 2)),
    Case("special_linear", lambda: ps.SpecialLinear(), shape=(3, 4, 4)),
    Case("special_linear", lambda: ps.SpecialLinear(), shape=(6, 6)),
    # Few iterations, so the 2000-step stress test and the compiled (unrolled) graph stay fast; the
    # balance step must then do more of the work, which is the harder case for the contract.
    Case("doubly_stochastic", lambda: ps.DoublyStochastic(max_iterations=10), shape=(3, 4, 4)),
    Case("doubly_stochastic", lambda: ps.DoublyStochastic(max_iterations=5), shape=(6, 6)),
    Case("orthogonal", lambda: ps.Orthogonal(), shape=(3, 4, 4)),
    Case("orthogonal", lambda: ps.Orthogonal(method="cayley"), shape=(6, 6)),
    Case("orthogonal", lambda: ps.Orthogonal(), shape=(6, 3)),
    Case("orthogonal", lambda: ps.Orthogonal(method="cayley"), shape=(2, 3, 5)),
    Case("orthogonal", lambda: ps.Orthogonal(method="thin"), shape=(9, 2)),
    Case("orthogonal", lambda: ps.Orthogonal(), shape=(2, 3, 12)),  # "auto": thin, wide, batched
    Case("hermitian", lambda: ps.Hermitian(), shape=(3, 4, 4)),  # on real tensors: symmetric
]

#: Sets of complex tensors, on complex tensors: the contract's per-dtype properties run in complex64
#: and complex128. Kept apart from :data:`CASES`, whose users (projection, membership, references)
#: test in the real dtypes; ``tests/test_complex.py`` checks these against their references.
COMPLEX_CASES: list[Case] = [
    Case("unitary", lambda: ps.Unitary(), shape=(3, 4, 4), dtypes=COMPLEX_DTYPES),
    Case("unitary", lambda: ps.Unitary(method="cayley"), shape=(6, 3), dtypes=COMPLEX_DTYPES),
    Case("unitary", lambda: ps.Unitary(), shape=(2, 3, 12), dtypes=COMPLEX_DTYPES),  # thin, wide
    Case("unitary", lambda: ps.Unitary(method="thin"), shape=(9, 2), dtypes=COMPLEX_DTYPES),
    Case("hermitian", lambda: ps.Hermitian(), shape=(3, 4, 4), dtypes=COMPLEX_DTYPES),
    Case("hermitian", lambda: ps.Hermitian(), shape=(6, 6), dtypes=COMPLEX_DTYPES),
    Case("unit_norm", lambda: ps.UnitNorm(), dtypes=COMPLEX_DTYPES),
    Case("unit_norm", lambda: ps.UnitNorm(dim=0), shape=(3, 40), dtypes=COMPLEX_DTYPES),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def case_params() -> list:
    import pytest

    return [pytest.param(case, id=case.id) for case in CASES + COMPLEX_CASES]


def case_dtype_params() -> list:
    """``(case, dtype)`` for every case and each of its dtypes, with ids ``dtype-case``."""
    import pytest

    return [
        pytest.param(case, dtype, id=f"{str(dtype).removeprefix('torch.')}-{case.id}")
        for case in CASES + COMPLEX_CASES
        for dtype in case.dtypes
    ]
