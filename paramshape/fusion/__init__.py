"""Fusion of the hot elementwise transforms: the ``torch.compile`` switch and the hand-fused kernels.

Modules: :mod:`~paramshape.fusion.compiled` (:func:`set_fusion`, :func:`fusion`, :class:`Fusable`
and :func:`~paramshape.fusion.compiled.dispatch`, which :meth:`paramshape.Transform.__call__` hands
every call of an opted-in family to) and :mod:`~paramshape.fusion.handfused` (eager
``autograd.Function`` kernels used below the compile threshold).

It sits below the transforms because the ``Transform`` base dispatches to it; it knows no transform
family (a family opts in by naming its kernel in a :class:`Fusable`).

May import: torch, :mod:`paramshape.errors` and :mod:`paramshape.numerics`.
"""

from paramshape.fusion.compiled import (
    AUTO_COMPILE_BUDGET_S,
    AUTO_MIN_ELEMENTS,
    Fusable,
    FusionMode,
    dispatch,
    fusion,
    get_fusion,
    set_fusion,
)

__all__ = [
    "AUTO_COMPILE_BUDGET_S",
    "AUTO_MIN_ELEMENTS",
    "Fusable",
    "FusionMode",
    "dispatch",
    "fusion",
    "get_fusion",
    "set_fusion",
]
