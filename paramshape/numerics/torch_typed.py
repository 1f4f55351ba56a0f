"""Typed entry points to the torch functions paramshape calls whose own definitions carry no
annotations: shape broadcasting (``torch/functional.py``) and the constructors of
``torch.distributions.constraints``.

``mypy --strict`` refuses a call to an unannotated function from annotated code
(``no-untyped-call``) and reads its result as ``Any``. Rather than silencing those checks for every
module that broadcasts a shape or names a torch constraint, the calls go through these wrappers,
which state the types torch documents; the one ``type: ignore`` of each call sits here, with its
reason, and the callers stay fully checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = [
    "broadcast_shapes",
    "broadcast_tensors",
    "constraint_check",
    "greater_than",
    "independent",
    "interval",
    "less_than",
]


def broadcast_shapes(*shapes: Sequence[int] | torch.Size) -> torch.Size:
    """:func:`torch.broadcast_shapes`: the shape all of ``shapes`` broadcast to.

    >>> broadcast_shapes((3, 1), (1, 4))
    torch.Size([3, 4])
    """
    result: torch.Size = torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]  # unannotated in torch
    return result


def broadcast_tensors(*tensors: Tensor) -> tuple[Tensor, ...]:
    """:func:`torch.broadcast_tensors`: views of ``tensors`` broadcast to one shape."""
    result: tuple[Tensor, ...] = torch.broadcast_tensors(*tensors)  # type: ignore[no-untyped-call]  # unannotated in torch
    return result


def greater_than(lower_bound: Tensor | float) -> constraints.Constraint:
    """``torch.distributions.constraints.greater_than(lower_bound)``: the half-line above it."""
    return constraints.greater_than(lower_bound)  # type: ignore[no-untyped-call]  # unannotated __init__


def less_than(upper_bound: Tensor | float) -> constraints.Constraint:
    """``torch.distributions.constraints.less_than(upper_bound)``: the half-line below it."""
    return constraints.less_than(upper_bound)  # type: ignore[no-untyped-call]  # unannotated __init__


def interval(lower_bound: Tensor | float, upper_bound: Tensor | float) -> constraints.Constraint:
    """``torch.distributions.constraints.interval(lower_bound, upper_bound)``: the closed interval."""
    return constraints.interval(lower_bound, upper_bound)  # type: ignore[no-untyped-call]  # unannotated __init__


def independent(base: constraints.Constraint, reinterpreted_batch_ndims: int) -> constraints.Constraint:
    """``torch.distributions.constraints.independent``: ``base`` over the last
    ``reinterpreted_batch_ndims`` dims as one event."""
    return constraints.independent(base, reinterpreted_batch_ndims)  # type: ignore[no-untyped-call]  # unannotated __init__


def constraint_check(constraint: constraints.Constraint, value: Tensor) -> Tensor:
    """``constraint.check(value)``: a boolean tensor, True where ``value`` satisfies it."""
    passed: Tensor = constraint.check(value)  # type: ignore[no-untyped-call]  # unannotated in torch
    return passed
