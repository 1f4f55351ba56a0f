"""Numerical building blocks: dtype-aware tolerances and margins, safe inverses, maps and slopes.

Modules: :mod:`~paramshape.numerics.precision` (every epsilon, tolerance and interior margin, derived
from ``torch.finfo``), :mod:`~paramshape.numerics.maps` (the elementwise maps as pure functions),
:mod:`~paramshape.numerics.slopes` (softplus/sigmoid helpers with gradients that stay alive),
:mod:`~paramshape.numerics.host` (whether a forward may read a value back to the host) and
:mod:`~paramshape.numerics.torch_typed` (typed entry points to torch functions that carry no
annotations, so strict mypy checks their callers).

May import: torch and :mod:`paramshape.errors` only. Everything else in paramshape sits above it.
"""
