"""Checks of a transform against an independent reference of its map, with fixed tolerances.

The contract's other properties check a transform against itself (its own ``contains``, its own
inverse); these compare it with a float64 implementation of the documented formula that the caller
provides, so a map that is wrong together with its inverse is still caught. The tolerances are the
constants below, in ulps of the dtype under test, stated in ``docs/transforms.md`` ("Accuracy").

May import: :mod:`paramshape.transforms` and the layers below (it never constrains a module).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import BoundedTransform

__all__ = [
    "BOUNDARY_DISTANCES",
    "INVERSE_RANGE",
    "INVERSE_ULPS",
    "REFERENCE_ULPS",
    "ROUND_TRIP_ULPS",
    "boundary_values",
    "check_against_reference",
    "check_boundary_round_trip",
    "reference_tolerance",
]

#: The map may differ from the reference by this many ulps (of the dtype under test) of the value's
#: scale, plus the change the reference makes when its input moves by as many ulps (see
#: :func:`reference_tolerance`). Half dtypes are computed in float32 and rounded once.
REFERENCE_ULPS: dict[torch.dtype, float] = {
    torch.float16: 2.0,
    torch.bfloat16: 2.0,
    torch.float32: 8.0,
    torch.float64: 8.0,
}

#: The same for the inverse, compared with the reference inverse at values inside the set.
INVERSE_ULPS: dict[torch.dtype, float] = dict(REFERENCE_ULPS)

#: The inverse is compared at the images of inputs whose entries all lie within this range, by the
#: transform's kind (elementwise, vector, matrix). Beyond it the values are within rounding of a
#: bound (or a matrix of singular), where the inverse is ill-conditioned.
INVERSE_RANGE: tuple[float, float, float] = (15.0, 15.0, 4.0)

#: ``forward(right_inverse(y))`` may differ from ``y``, a value at a fixed distance from a bound, by
#: this many ulps of ``y``, plus the change one ulp of the stored value makes (its rounding).
ROUND_TRIP_ULPS: dict[torch.dtype, float] = {
    torch.float16: 1.0,
    torch.bfloat16: 1.0,
    torch.float32: 8.0,
    torch.float64: 8.0,
}

#: Distances from a bound, as fractions of the set's scale (``high - low``, or ``max(1, |bound|)``
#: for a one-sided set), at which :func:`check_boundary_round_trip` tests. Distances a dtype cannot
#: represent next to the bound (the value rounds onto the bound, or below its smallest normal
#: number) are skipped.
BOUNDARY_DISTANCES: tuple[float, ...] = (1e-6, 1e-8, 1e-10, 1e-12, 1e-14)

Reference = Callable[[Tensor], Tensor]


def _event_dims(transform: Transform, ndim: int) -> tuple[int, ...]:
    return tuple(transform.event_dims(ndim))


def setting_tensors(transform: Transform) -> list[Tensor]:
    """The transform's tensor settings, without gradients: its buffers, its parameters (learnable
    bounds) and the bounds those compute (a learnable Box's ``low`` and ``high``)."""
    tensors = [*transform.buffers(), *(p.detach() for p in transform.parameters())]
    for part in transform.modules():
        if isinstance(part, BoundedTransform) and part.learnable:
            tensors.extend(part._plain_bounds().values())
    return tensors


def _scale_of_settings(transform: Transform) -> float:
    """The largest finite magnitude among the transform's floating-point settings (bounds, loc)."""
    values = [
        float(buffer.double().abs().nan_to_num(posinf=0.0, neginf=0.0).max())
        for buffer in setting_tensors(transform)
        if buffer.numel() and buffer.dtype.is_floating_point
    ]
    return max(values, default=0.0)


def _sensitivity(reference: Reference, x: Tensor, value: Tensor, ulps: float, eps: float) -> Tensor:
    r"""How much the reference's result may move when every input entry moves by ``ulps`` of itself:
    the first-order bound :math:`\sum_j |\partial r_i / \partial x_j|\,|x_j|\,\mathrm{ulps}\,\epsilon`
    from the reference's Jacobian (a sampled direction can miss the sensitive one of a matrix
    exponential), and the change along the two uniform directions (beyond first order: a cap that
    switches on). Non-finite derivatives and directions that leave the reference's domain count as 0."""
    flat = x.detach().reshape(-1)
    with torch.enable_grad():
        # One input and one output: a single Tensor (jacobian is unannotated in torch).
        jacobian: Tensor = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
            lambda entries: reference(entries.reshape(x.shape)).reshape(-1), flat, vectorize=True
        )
    bound = (jacobian.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs() @ flat.abs()).reshape(value.shape)
    moved = ulps * eps * bound
    for sign in (1.0, -1.0):
        shifted = reference(x * (1 + sign * ulps * eps))
        moved = torch.maximum(moved, (shifted - value).abs().nan_to_num(nan=0.0, posinf=0.0))
    return moved


def reference_tolerance(
    transform: Transform,
    reference: Reference,
    x: Tensor,
    value: Tensor,
    dtype: torch.dtype,
    ulps: float,
    settings_scale: float | None = None,
) -> Tensor:
    r"""What a result of ``transform`` in ``dtype`` may differ from ``value = reference(x)`` by:

    ``ulps`` ulps of the result's scale, :math:`\mathrm{ulps}\cdot\epsilon\cdot K\,(m + b)`, where
    :math:`m` is the largest magnitude of the reference value in its event (the entry itself for
    elementwise maps), :math:`b` the largest finite magnitude of the transform's settings (a value
    ``low + w s`` carries the rounding of ``low``) and :math:`K` the longest event dimension (a
    softmax or a cumulative sum of ``K`` entries rounds ``K`` times); plus the change in the
    reference when its input moves by ``ulps`` ulps (the map's own conditioning: a matrix
    exponential of entries of 1e4 cannot be computed better than that). ``settings_scale``
    replaces :math:`b` (the inverse's results are on the unconstrained scale: it passes 1).
    """
    eps = torch.finfo(dtype).eps
    dims = _event_dims(transform, value.dim())
    magnitude = value.abs()
    if dims:
        magnitude = magnitude.amax(dim=dims, keepdim=True)
    size = max((value.shape[d] for d in dims), default=1)
    settings = _scale_of_settings(transform) if settings_scale is None else settings_scale
    scale = ulps * eps * size * (magnitude + settings)
    return scale + _sensitivity(reference, x, value, ulps, eps)


def _compare(name: str, got: Tensor, expected: Tensor, tolerance: Tensor, at: Tensor) -> None:
    error = (got.double() - expected).abs()
    bad = ~(error <= tolerance)  # NaN counts as bad
    if bool(bad.any()):
        worst = int(torch.argmax(torch.where(bad, error - tolerance, -1.0).nan_to_num(nan=float("inf"))))
        where = at.flatten()[worst].item() if at.numel() == got.numel() else "(an event of) the input"
        raise AssertionError(
            f"{name} {got.flatten()[worst].item():.17g} differs from the reference "
            f"{expected.flatten()[worst].item():.17g} by {error.flatten()[worst].item():.3g} "
            f"(tolerance {tolerance.flatten()[worst].item():.3g}) at {where}; "
            f"{int(bad.sum())} of {bad.numel()} entries"
        )


def check_against_reference(
    transform: Transform,
    shape: Sequence[int],
    dtype: torch.dtype,
    reference: Reference,
    inverse: Reference | None = None,
    inputs: Sequence[Tensor] = (),
    condition: Reference | None = None,
) -> None:
    """``forward`` in ``dtype`` matches ``reference`` (a float64 function of the float64 input) within
    :func:`reference_tolerance` with :data:`REFERENCE_ULPS`, at each of ``inputs`` (unconstrained
    tensors of the stored shape); ``inverse``, when given, is compared with
    ``transform.right_inverse`` at the images of the moderate inputs among them (entries within
    :data:`INVERSE_RANGE`: farther out, a value is within rounding of a bound, or a matrix within
    rounding of singular, and its inverse is tested by :func:`check_boundary_round_trip` instead),
    with :data:`INVERSE_ULPS`. ``condition``, when given, maps the float64 input to a known accuracy
    limit of the algorithm in units of ``eps`` (for instance the norm of the argument of a matrix
    exponential, whose scaling and squaring loses that many ulps); :data:`REFERENCE_ULPS` of it are
    added to the forward tolerance. Raises ``AssertionError`` naming the worst entry."""
    transform = copy.deepcopy(transform).to(dtype)
    for x in inputs:
        x = x.to(dtype)
        x64 = x.double()
        with torch.no_grad():
            y = transform(x)
        expected = reference(x64)
        tolerance = reference_tolerance(transform, reference, x64, expected, dtype, REFERENCE_ULPS[dtype])
        if condition is not None:
            tolerance = tolerance + REFERENCE_ULPS[dtype] * torch.finfo(dtype).eps * condition(x64)
        _compare("forward", y, expected, tolerance, x64)
        limit = INVERSE_RANGE[min(transform.event_dim, 2)]
        if transform.event_dim >= 2 and dtype in (torch.float16, torch.bfloat16):
            # Rounding a matrix to 8 or 11 bits moves its eigenvalues by a few percent of its norm:
            # only the image of 0 is well enough conditioned to compare the inverse.
            limit = 0.0
        if inverse is None or bool((x64.abs() > limit).any()):
            continue
        inside = transform.contains(y)
        if not bool(inside.all()):
            raise AssertionError("forward left the set; the inverse cannot be compared")
        with torch.no_grad():
            u = transform.right_inverse(y)
        y64 = y.double()
        expected_u = inverse(y64)
        # On the unconstrained side the scale is at least 1 (a centred log of a uniform slice is 0,
        # but it is the difference of logs of order 1).
        tolerance_u = reference_tolerance(
            transform,
            inverse,
            y64,
            expected_u,
            dtype,
            INVERSE_ULPS[dtype],
            settings_scale=max(_scale_of_settings(transform), 1.0),
        )
        _compare("inverse", u, expected_u, tolerance_u, y64)


def boundary_values(transform: Transform, shape: Sequence[int], dtype: torch.dtype) -> list[Tensor]:
    """For an elementwise transform, tensors of ``shape`` whose entries lie at the fixed
    :data:`BOUNDARY_DISTANCES` inside each finite bound (one tensor per bound and distance; entries
    whose bound is infinite, or which round onto the bound in ``dtype``, take the set's midpoint or
    a value one scale inside)."""
    if transform.event_dim != 0:
        return []
    low = getattr(transform, "low", None)
    high = getattr(transform, "high", None)
    lows = (
        low.detach().double().expand(shape)
        if isinstance(low, Tensor)
        else torch.full(shape, 0.0 if _is_positive(transform) else -torch.inf, dtype=torch.float64)
    )
    highs = (
        high.detach().double().expand(shape)
        if isinstance(high, Tensor)
        else torch.full(shape, torch.inf, dtype=torch.float64)
    )
    finite_low, finite_high = torch.isfinite(lows), torch.isfinite(highs)
    both = finite_low & finite_high
    width = torch.where(both, highs - lows, 1.0)
    one_sided_low = torch.where(finite_low, lows.abs().clamp_min(1.0), 1.0)
    one_sided_high = torch.where(finite_high, highs.abs().clamp_min(1.0), 1.0)
    fallback = torch.where(
        both,
        (lows + highs) / 2,
        torch.where(finite_low, lows + one_sided_low, torch.where(finite_high, highs - one_sided_high, 0.0)),
    )
    finfo = torch.finfo(dtype)
    tensors = []
    for side in ("low", "high"):
        bound = lows if side == "low" else highs
        finite = finite_low if side == "low" else finite_high
        if not bool(finite.any()):
            continue
        scale = torch.where(both, width, one_sided_low if side == "low" else one_sided_high)
        for distance in BOUNDARY_DISTANCES:
            raw = bound + (distance if side == "low" else -distance) * scale
            typed = raw.to(dtype).double()
            usable = finite & (typed != bound) & ((typed - bound).abs() >= finfo.tiny)
            usable &= (typed > bound) if side == "low" else (typed < bound)
            if not bool(usable.any()):
                continue
            tensors.append(torch.where(usable, typed, fallback).to(dtype))
    return tensors


def _is_positive(transform: Transform) -> bool:
    return type(transform).__name__ == "Positive"


def check_boundary_round_trip(
    transform: Transform,
    shape: Sequence[int],
    dtype: torch.dtype,
    reference: Reference,
    inverse: Reference | None = None,
) -> None:
    """At the :func:`boundary_values`, ``forward(right_inverse(y))`` is ``y`` within
    :data:`ROUND_TRIP_ULPS` ulps of ``y`` plus the change that one ulp of the stored value makes in
    ``reference``; and ``right_inverse(y)`` matches ``inverse`` (if given) within
    :data:`INVERSE_ULPS` ulps of the result and of 1. Elementwise transforms only (others: no-op)."""
    transform = copy.deepcopy(transform).to(dtype)
    eps = torch.finfo(dtype).eps
    ulps = ROUND_TRIP_ULPS[dtype]
    for y in boundary_values(transform, shape, dtype):
        with torch.no_grad():
            u = transform.right_inverse(y)
            back = transform(u)
        if not bool(torch.isfinite(u).all()):
            raise AssertionError("right_inverse of a value next to a bound is not finite")
        u64, y64 = u.double(), y.double()
        stored = (
            reference(torch.nextafter(u, torch.full_like(u, torch.inf)).double()) - reference(u64)
        ).abs()
        stored = torch.maximum(
            stored,
            (reference(torch.nextafter(u, torch.full_like(u, -torch.inf)).double()) - reference(u64)).abs(),
        )
        tolerance = ulps * (eps * y64.abs() + stored)
        _compare("forward(right_inverse(y))", back, y64, tolerance, y64)
        if inverse is not None:
            expected = inverse(y64)
            _compare("right_inverse", u, expected, INVERSE_ULPS[dtype] * eps * (expected.abs() + 1), y64)
