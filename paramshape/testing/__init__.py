"""The transform contract as functions: check your own transforms the way paramshape checks its own.

:func:`check_transform` runs every property of the contract on one transform and raises
:class:`~paramshape.ContractViolation` naming the first property that fails and the transform. Each
property is also a function of its own (``check_round_trip``, ``check_gradcheck``, ...; the list is
:data:`PROPERTIES`): paramshape's contract suite, ``tests/test_contract.py``, calls them one test
per property, so there is a single implementation of the contract.
:func:`autograd_log_abs_det_jacobian` is the float64 reference that
:meth:`~paramshape.Transform.log_abs_det_jacobian` is compared with.

Each check works on a copy of the transform (cast to the dtype under test) and draws its random
inputs from its own generator state (``seed``, default 0), so the caller's transform and random
stream are left alone. ``shape`` is the shape of the *constrained value*; the unconstrained inputs
have :meth:`~paramshape.Transform.inverse_shape` of it. The checks assume, as every paramshape
transform arranges, that unconstrained inputs of order one (``0.5`` to ``3`` standard deviations)
map well inside the set.

Example:
    >>> import torch, paramshape as ps
    >>> from paramshape.testing import check_transform
    >>> check_transform(ps.Box(-1.0, 1.0), shape=(3, 4))
    >>> class Broken(ps.Box):  # an inverse that is off by 1e-3
    ...     def inverse(self, y):
    ...         return super().inverse(y) + 1e-3
    >>> try:
    ...     check_transform(Broken(-1.0, 1.0), shape=(3, 4), dtypes=(torch.float64,))
    ... except ps.ContractViolation as error:
    ...     print(error.property)
    round_trip

May import: :mod:`paramshape.attach` (its checks call ``constrain``) and the layers below. Nothing
in paramshape imports it except the public facade.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.autograd.gradcheck import GradcheckError

from paramshape.errors import ContractViolation, InfeasibleValueError, SaturationWarning
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import widest
from paramshape.testing.reference import (
    BOUNDARY_DISTANCES,
    INVERSE_ULPS,
    REFERENCE_ULPS,
    ROUND_TRIP_ULPS,
    check_against_reference,
    check_boundary_round_trip,
    setting_tensors,
)
from paramshape.transforms.base import Transform

__all__ = [
    "BOUNDARY_DISTANCES",
    "COMPLEX_DTYPES",
    "DTYPES",
    "EXTREMES",
    "INVERSE_ULPS",
    "PROPERTIES",
    "REFERENCE_ULPS",
    "ROUND_TRIP_ULPS",
    "ContractViolation",
    "autograd_log_abs_det_jacobian",
    "check_against_reference",
    "check_boundary_inverse",
    "check_boundary_round_trip",
    "check_compiles",
    "check_extreme_gradients",
    "check_extreme_inputs",
    "check_gradcheck",
    "check_log_abs_det_jacobian",
    "check_log_abs_det_jacobian_extremes",
    "check_nan_and_inf_are_never_members",
    "check_optimizer_steps",
    "check_reference",
    "check_repr",
    "check_round_trip",
    "check_sample",
    "check_settings_follow_dtype",
    "check_state_dict_round_trip",
    "check_to_interior",
    "check_torch_codomain",
    "check_transform",
    "round_trip_tolerance",
]

#: The dtypes every transform supports (half precision is computed in float32 and cast back).
DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The dtypes of the sets of complex tensors (:attr:`~paramshape.Transform.supports_complex`): their
#: tolerances are those of the real dtype of the same precision (float32 for ``complex64``).
COMPLEX_DTYPES: tuple[torch.dtype, ...] = (torch.complex64, torch.complex128)

#: Unconstrained inputs from -1e4 to 1e4, with 0 and values on both sides of each regime switch.
EXTREMES: tuple[float, ...] = (
    -1e4, -1e3, -100.0, -30.0, -13.8, -1.0, -1e-3, 0.0, 1e-3, 1.0, 13.8, 30.0, 100.0, 1e3, 1e4,
)  # fmt: skip

Shape = Sequence[int]
_Check = TypeVar("_Check", bound=Callable[..., None])


# ------------------------------------------------------------------------------------ plumbing
class _Holder(nn.Module):
    """A custom module with one bare parameter, the simplest thing to constrain."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _grad(x: Tensor) -> Tensor:
    """``x.grad`` after a backward through ``x``; ``None`` (nothing reached ``x``) fails where it is
    used, as it did before this helper typed it."""
    return cast(Tensor, x.grad)


def _property(name: str) -> Callable[[_Check], _Check]:
    """Run a check under its own seed, and report any failure as a :class:`ContractViolation`
    naming ``name`` (an unexpected exception from the transform too)."""

    def decorate(check: _Check) -> _Check:
        @functools.wraps(check)
        def run(transform: Transform, *args: Any, seed: int | None = 0, **kwargs: Any) -> None:
            label = repr(transform)
            try:
                with _seeded(seed):
                    check(transform, *args, **kwargs)
            except ContractViolation:
                raise
            except AssertionError as error:
                raise ContractViolation(name, label, str(error) or "a check failed") from error
            except Exception as error:  # the transform itself failed: that is the finding
                raise ContractViolation(name, label, f"raised {type(error).__name__}: {error}") from error

        run.property = name  # type: ignore[attr-defined]  # a function attribute, read by check_transform
        return run  # type: ignore[return-value]  # the check's signature plus seed=

    return decorate


def _require(condition: bool | Tensor, message: str) -> None:
    if not bool(condition):
        raise AssertionError(message)


def _prepared(transform: Transform, shape: Shape, dtype: torch.dtype) -> Transform:
    """A copy of ``transform`` in ``dtype``, checked against the value shape. For a complex dtype
    the copy moves to the real dtype of that precision (``Module.to(complex)`` warns; a set of
    complex tensors keeps its complex buffers complex, see :attr:`Transform.supports_complex`)."""
    prepared = copy.deepcopy(transform).to(_real(dtype))
    prepared.check_shape(torch.Size(shape))
    return prepared


def _real(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of ``dtype``'s precision (``dtype`` itself when real)."""
    return dtype.to_real() if dtype.is_complex else dtype


def _real_loss(value: Tensor) -> Tensor:
    """A real scalar of ``value`` to call ``backward`` on: its sum, or the real part of its sum for
    a complex value (torch's complex autograd differentiates real losses of complex tensors)."""
    total = value.sum()
    return total.real if total.is_complex() else total


def _case_dtype(transform: Transform) -> torch.dtype:
    """The dtype of the per-case (float64) properties: complex128 for a set of complex tensors, so
    ``gradcheck`` checks the complex (Wirtinger) derivatives torch's autograd computes."""
    return torch.complex128 if transform.supports_complex else torch.float64


def _stored(transform: Transform, shape: Shape) -> torch.Size:
    return transform.inverse_shape(torch.Size(shape))


def _events_last(transform: Transform, y: Tensor) -> Tensor:
    dims = transform.event_dims(y.dim())
    return y.movedim(dims, tuple(range(y.dim() - len(dims), y.dim())))


def _batch_shape(transform: Transform, shape: torch.Size) -> torch.Size:
    dims = set(transform.event_dims(len(shape)))
    return torch.Size(size for i, size in enumerate(shape) if i not in dims)


def extreme_inputs(transform: Transform, shape: Shape, dtype: torch.dtype) -> list[Tensor]:
    """Unconstrained tensors of the stored shape: :data:`EXTREMES` in order and shuffled, all 0,
    all 1e4 and all -1e4."""
    stored = _stored(transform, shape)
    numel = stored.numel()
    cycled = torch.tensor(EXTREMES)[torch.arange(numel) % len(EXTREMES)].reshape(stored)
    shuffled = cycled.flatten()[torch.randperm(numel)].reshape(stored)
    tensors = (cycled, shuffled, torch.zeros(stored), torch.full(stored, 1e4), torch.full(stored, -1e4))
    if dtype.is_complex:  # the same magnitudes in the imaginary parts, in another order
        return [torch.complex(t, t.flip(-1)).to(dtype) for t in tensors]
    return [tensor.to(dtype) for tensor in tensors]


def feasible_values(transform: Transform, shape: Shape, dtype: torch.dtype) -> Tensor:
    """Values inside the set: images of moderate inputs and of +-13.8, which land within about
    1e-6 (relative to the set's scale) of a bound."""
    x = 3 * torch.randn(_stored(transform, shape), dtype=torch.complex64 if dtype.is_complex else None)
    x.view(-1)[::3] = 13.8
    x.view(-1)[1::3] = -13.8
    with torch.no_grad():
        value: Tensor = transform(x.to(dtype))
    return value


def round_trip_tolerance(transform: Transform, y: Tensor, u: Tensor) -> Tensor:
    """What ``forward(right_inverse(y))`` may differ from ``y`` by, derived rather than chosen:

    * for float16 and bfloat16, one ulp of the value (they are computed in float32 and rounded
      once); then a few ulps of the compute dtype of the value and of the bounds it is computed from (``low + w * s`` carries the
      rounding of ``low``); for event transforms the value's ulps are multiplied by the longest
      event dimension (a softmax or a cumulative sum over ``K`` entries rounds ``K`` times), and
      the value's scale is the largest magnitude in its slice or matrix;
    * the change in the forward map when the stored unconstrained value moves by its own rounding
      (one ulp of ``u``), measured in float64: storing ``u`` in the tensor's dtype cannot do better.
    """
    eps = torch.finfo(y.dtype).eps
    compute_eps = torch.finfo(torch.float32 if y.dtype in (torch.float16, torch.bfloat16) else y.dtype).eps
    bound_scale = max(
        [
            float(b.abs().double().nan_to_num(posinf=0.0, neginf=0.0).max())
            for b in setting_tensors(transform)
            if b.numel()
        ],
        default=0.0,
    )
    reference = copy.deepcopy(transform).to(torch.float64)
    u64 = widest(u)
    signs = torch.where(torch.rand(u.shape) < 0.5, -1.0, 1.0).double()
    step = eps * u64.abs().clamp_min(torch.finfo(torch.float64).tiny) * signs
    with torch.no_grad():
        sensitivity = (reference(u64 + step) - reference(u64)).abs()
    dims = tuple(transform.event_dims(y.dim()))
    size_factor = max((y.shape[d] for d in dims), default=1)
    # Entries of one slice or matrix share its rounding (a normaliser, a cumulative sum): their
    # scale is the largest magnitude in it.
    magnitude = widest(y).abs()
    if dims:
        magnitude = magnitude.amax(dim=dims, keepdim=True).expand(y.shape)
    # Half dtypes are computed in float32 and rounded once: an ulp of the value, plus float32's
    # rounding of the computation (for Box(100, 101) in float16, 0.1 rather than wider than the box).
    # Event transforms (a softmax over K rounded logits) keep 8 K ulps; an entry read as the smallest
    # normal number (a zero probability) may come back as it.
    half = compute_eps != eps
    once = eps * magnitude * (1 if size_factor == 1 else 8 * size_factor) if half else 0.0
    compute_tiny = torch.finfo(torch.float32 if half else y.dtype).tiny
    floor = 2 * (torch.finfo(y.dtype).tiny * (size_factor > 1) + compute_tiny)
    tolerance: Tensor = (
        once + 8 * compute_eps * (magnitude * size_factor + bound_scale) + 4 * sensitivity + floor
    )
    return tolerance


# ------------------------------------------------------------------------- per-dtype properties
@_property("extreme_inputs")
def check_extreme_inputs(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """Unconstrained inputs from -1e4 to 1e4 (and 0) map to finite values of the right dtype and
    shape, inside the set."""
    transform = _prepared(transform, shape, dtype)
    for x in extreme_inputs(transform, shape, dtype):
        y = transform(x)
        _require(y.dtype == dtype, f"forward returned {y.dtype} for a {dtype} input")
        _require(y.shape == torch.Size(shape), f"forward returned shape {tuple(y.shape)}, not {tuple(shape)}")
        _require(torch.isfinite(y).all(), "forward produced non-finite values")
        _require(transform.contains(y).all(), "forward left the set")


@_property("extreme_gradients")
def check_extreme_gradients(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """Gradients through the forward map are finite for inputs from -1e4 to 1e4. For elementwise maps
    they are also alive where the slope is: wherever the map, in the dtype, is not flat around x (its
    values at x - h and x + h differ, h = 1e-2 max(1, |x|)), the gradient is not zero; and in float64
    it agrees within 1% with a central difference of the map wherever that difference is resolved.
    A gradient cut off below -20, or a clamp that freezes values it should not, fails here while the
    values are right."""
    transform = _prepared(transform, shape, dtype)
    for x in extreme_inputs(transform, shape, dtype):
        x = x.clone().requires_grad_(True)
        weights = torch.randn(shape).to(dtype)
        torch.autograd.backward(_real_loss(transform(x) * weights))
        _require(torch.isfinite(_grad(x)).all(), "forward produced non-finite gradients")
    if transform.event_dim != 0 or not _elementwise_shapes(transform, shape):
        return
    x = extreme_inputs(transform, shape, dtype)[0].clone().requires_grad_(True)
    transform(x).sum().backward()
    grad = _grad(x).double()
    with torch.no_grad():
        step = (1e-2 * x.abs().clamp_min(1.0)).to(dtype)
        moves = transform(x + step) != transform(x - step)
    dead = moves & (grad == 0)
    if dead.any():
        raise AssertionError(
            f"zero gradient at x={x[dead].flatten()[0].item():.6g}, where the map is not flat"
        )
    if dtype != torch.float64:
        return
    x64 = x.detach()
    step = torch.full_like(x64, 1e-3)
    with torch.no_grad():
        upper, lower = transform(x64 + step), transform(x64 - step)
    slope = (upper - lower) / (2 * step)
    # Trust the difference only where it is resolved to about 1e-6 of the values compared.
    resolved = (upper - lower).abs() >= 1e10 * torch.finfo(torch.float64).eps * upper.abs().maximum(
        lower.abs()
    )
    off = resolved & ((grad - slope).abs() > 1e-2 * slope.abs())
    if off.any():
        raise AssertionError(
            f"gradient {grad[off].flatten()[0].item():.6g} at x={x64[off].flatten()[0].item():.6g} "
            f"but the forward map's slope there is {slope[off].flatten()[0].item():.6g}"
        )


def _elementwise_shapes(transform: Transform, shape: Shape) -> bool:
    """Whether the stored tensor has the value's shape (one slope per entry)."""
    return _stored(transform, shape) == torch.Size(shape)


@_property("round_trip")
def check_round_trip(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """``forward(right_inverse(y))`` is ``y`` within :func:`round_trip_tolerance`, for values inside
    the set and within about 1e-6 of a bound."""
    transform = _prepared(transform, shape, dtype)
    y = feasible_values(transform, shape, dtype)
    u = transform.right_inverse(y)
    _require(u.dtype == dtype, f"right_inverse returned {u.dtype} for a {dtype} value")
    _require(u.shape == _stored(transform, shape), f"right_inverse returned shape {tuple(u.shape)}")
    _require(torch.isfinite(u).all(), "right_inverse returned non-finite values")
    error = (widest(transform(u)) - widest(y)).abs()
    tolerance = round_trip_tolerance(transform, y, u)
    worst = int(torch.argmax(error - tolerance))
    _require(
        (error <= tolerance).all(),
        f"round trip error {error.flatten()[worst]:.3g} > {tolerance.flatten()[worst]:.3g} at "
        f"y={y.flatten()[worst].item():.9g}",
    )


@_property("boundary_inverse")
def check_boundary_inverse(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """Values on or next to the boundary (images of extreme inputs) have a finite inverse that
    returns the value: ``forward(right_inverse(y))`` is ``y`` within :func:`round_trip_tolerance`
    (an inverse that clamps the stored value, or maps a near-bound value to a finite but wrong one,
    fails here)."""
    transform = _prepared(transform, shape, dtype)
    for x in extreme_inputs(transform, shape, dtype):
        with torch.no_grad():
            y = transform(x)
            u = transform.right_inverse(y)
            back = transform(u)
        _require(torch.isfinite(u).all(), "right_inverse of a boundary value is not finite")
        _require(transform.contains(back).all(), "forward(right_inverse(y)) left the set")
        error = (widest(back) - widest(y)).abs()
        tolerance = round_trip_tolerance(transform, y, u)
        worst = int(torch.argmax(error - tolerance))
        _require(
            (error <= tolerance).all(),
            f"forward(right_inverse(y)) is {back.flatten()[worst].item():.9g} for y = "
            f"{y.flatten()[worst].item():.9g} (off by {error.flatten()[worst]:.3g}, tolerance "
            f"{tolerance.flatten()[worst]:.3g})",
        )


@_property("to_interior")
def check_to_interior(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """``to_interior`` maps anything (NaN, infinities, huge values) strictly inside the set, with a
    finite inverse; for elementwise transforms the slope there is at least 1e-4 of the slope at the
    image of 0, so the value can still move."""
    transform = _prepared(transform, shape, dtype)
    wild = torch.tensor([float("nan"), float("inf"), -float("inf"), -1e30, 1e30, 0.0, -5.0, 5.0])
    values = wild[torch.arange(torch.Size(shape).numel()) % len(wild)].reshape(shape)
    inside = transform.to_interior(values.to(dtype))
    _require(inside.dtype == dtype, f"to_interior returned {inside.dtype}")
    _require(torch.isfinite(inside).all(), "to_interior returned non-finite values")
    _require(transform.contains(inside).all(), "to_interior returned values outside the set")
    u = transform.right_inverse(inside).detach().requires_grad_(True)
    _require(torch.isfinite(u).all(), "right_inverse of to_interior's values is not finite")
    if transform.event_dim == 0:
        transform(u).sum().backward()
        centre = torch.zeros(_stored(transform, shape), dtype=dtype, requires_grad=True)
        transform(centre).sum().backward()
        # Magnitudes, so that decreasing maps (a negative Affine scale) are judged the same way.
        _require(
            (_grad(u).double().abs() >= 1e-4 * _grad(centre).double().abs()).all(),
            "dead gradient after to_interior",
        )


@_property("sample")
def check_sample(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """``sample`` returns values of the dtype inside the set."""
    transform = _prepared(transform, shape, dtype)
    value = transform.sample(torch.Size(shape), dtype=dtype)
    _require(value.dtype == dtype, f"sample returned {value.dtype}")
    _require(value.shape == torch.Size(shape), f"sample returned shape {tuple(value.shape)}")
    _require(transform.contains(value).all(), "sample returned values outside the set")


@_property("nan_and_inf_are_never_members")
def check_nan_and_inf_are_never_members(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """A NaN or infinite entry is never in the set, and ``right_inverse`` refuses it with an
    :class:`~paramshape.InfeasibleValueError` that says the value lies outside."""
    transform = _prepared(transform, shape, dtype)
    value = transform.sample(torch.Size(shape), dtype=dtype)
    for bad in (float("nan"), float("inf")):
        broken = value.clone()
        broken.view(-1)[0] = bad
        _require(not transform.contains(broken).all(), f"a value with {bad} counts as a member")
        try:
            transform.right_inverse(broken)
        except InfeasibleValueError as error:
            _require("outside" in str(error), f"the message does not say 'outside': {error}")
        else:
            raise AssertionError(f"right_inverse accepted a value with {bad}")


@_property("settings_follow_dtype")
def check_settings_follow_dtype(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """After ``.to(dtype)`` every buffer has the dtype, and so has the forward map's output."""
    transform = _prepared(transform, shape, dtype)
    # A complex dtype: complex buffers take it, real settings (bounds) its real precision.
    _require(
        all(
            buffer.dtype == (dtype if buffer.is_complex() else _real(dtype))
            for buffer in setting_tensors(transform)
        ),
        "a buffer kept its dtype",
    )
    x = torch.randn(_stored(transform, shape)).to(dtype)
    _require(transform(x).dtype == dtype, "forward changed the dtype")


@_property("state_dict_round_trip")
def check_state_dict_round_trip(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """A constrained tensor survives ``state_dict`` / ``load_state_dict`` into another module whose
    transform was built with other settings (every bound, ``loc`` and ``scale`` moved by ``2 b + 1``,
    which keeps them valid and ordered): the value and the settings come back exactly."""
    from paramshape.attach.constrain import constrain, constraints

    transform.check_shape(torch.Size(shape))
    source = _Holder(torch.zeros(shape, dtype=dtype))
    constrain(source, "value", transform, init="sample")
    other = _other_settings(transform)
    target = _Holder(torch.zeros(shape, dtype=dtype))
    constrain(target, "value", other, init="sample")
    _require(not torch.equal(source.value, target.value), "two samples are equal; the check is void")
    target.load_state_dict(source.state_dict())
    _require(torch.equal(source.value, target.value), "load_state_dict did not restore the value")
    mine, theirs = constraints(source)["value"], constraints(target)["value"]
    # Buffers, and parameters for learnable settings (bounds).
    settings = zip(
        (*mine.named_buffers(), *mine.named_parameters()),
        (*theirs.named_buffers(), *theirs.named_parameters()),
        strict=True,
    )
    for (name, expected), (_, loaded) in settings:
        _require(torch.equal(expected, loaded), f"load_state_dict did not restore the setting {name!r}")


def _other_settings(transform: Transform) -> Transform:
    """A copy of ``transform`` whose floating-point settings are moved by ``2 b + 1`` (an increasing
    map: bounds stay ordered and infinite ones infinite, a scale stays nonzero where it was > 0;
    a negative scale -s becomes 1 - 2s, still nonzero)."""
    other = copy.deepcopy(transform)
    with torch.no_grad():
        for buffer in (*other.buffers(), *other.parameters()):
            if buffer.dtype.is_floating_point and buffer.numel():
                buffer.mul_(2).add_(1)
    return other


@_property("optimizer_steps")
def check_optimizer_steps(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """20 Adam steps with learning rate 1, each pushing every value outward, keep the value and the
    stored tensor finite and the value inside the set."""
    from paramshape.attach.constrain import constrain, constraints

    transform.check_shape(torch.Size(shape))
    module = _Holder(torch.zeros(shape, dtype=dtype))
    constrain(module, "value", transform, init="sample")
    attached = constraints(module)["value"]
    direction = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(dtype)
    # Adam's default eps (1e-8) is 0 in float16, which makes its step 0/0; use one the dtype holds.
    optimizer = torch.optim.Adam(module.parameters(), lr=1.0, eps=torch.finfo(dtype).eps)
    with warnings.catch_warnings():
        # Pushing every value outward at lr=1 saturates on purpose; that is this check's point.
        warnings.simplefilter("ignore", SaturationWarning)
        _push_outward(module, attached, direction, optimizer)


def _push_outward(module: Any, attached: Transform, direction: Tensor, optimizer: Any) -> None:
    # module: the nn.Module holding ``value``; typed Any because Module.__getattr__ is Tensor | Module.
    for step in range(20):
        optimizer.zero_grad()
        torch.autograd.backward(-_real_loss(module.value * direction))
        optimizer.step()
        with torch.no_grad():
            value = module.value
            _require(torch.isfinite(value).all(), f"non-finite value after step {step + 1}")
            _require(attached.contains(value).all(), f"value outside the set after step {step + 1}")
            stored = module.parametrizations.value.original
            _require(torch.isfinite(stored).all(), f"non-finite stored tensor after step {step + 1}")


@_property("log_abs_det_jacobian_extremes")
def check_log_abs_det_jacobian_extremes(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    """For a bijective transform, the log-det-Jacobian at inputs from -1e4 to 1e4 is finite, of the
    input's dtype and of its shape without the event dimensions, with finite gradients. For one
    that is not, it raises :class:`NotImplementedError` with a message."""
    transform = _prepared(transform, shape, dtype)
    if not transform.bijective:
        _check_refuses_jacobian(transform, shape, dtype)
        return
    for x in extreme_inputs(transform, shape, dtype):
        x = x.clone().requires_grad_(True)
        ldj = transform.log_abs_det_jacobian(x, transform(x))
        _require(ldj.dtype == dtype, f"log_abs_det_jacobian returned {ldj.dtype} for {dtype}")
        expected = _batch_shape(transform, x.shape)
        _require(
            ldj.shape == expected, f"log_abs_det_jacobian has shape {tuple(ldj.shape)}, not {tuple(expected)}"
        )
        _require(torch.isfinite(ldj).all(), "log_abs_det_jacobian is not finite")
        if ldj.requires_grad:  # a constant log-det-Jacobian (an affine map) has no graph
            torch.autograd.backward(ldj.sum())
            _require(torch.isfinite(_grad(x)).all(), "the gradient of log_abs_det_jacobian is not finite")


def _check_refuses_jacobian(transform: Transform, shape: Shape, dtype: torch.dtype) -> None:
    x = torch.zeros(_stored(transform, shape), dtype=dtype)
    try:
        transform.log_abs_det_jacobian(x, transform(x))
    except NotImplementedError as error:
        _require(len(str(error)) > 20, "the NotImplementedError does not say why")
    else:
        raise AssertionError("a transform with bijective = False returned a log-det-Jacobian")


# ------------------------------------------------------------------------- per-case properties
@_property("gradcheck")
def check_gradcheck(transform: Transform, shape: Shape) -> None:
    """``torch.autograd.gradcheck`` of the forward map at ``2 * N(0, 1)`` and of the inverse at
    values of :meth:`~paramshape.Transform.sample`, in float64 and, for a set of complex tensors
    (:attr:`~paramshape.Transform.supports_complex`), in complex128 too: the complex (Wirtinger)
    derivatives do not vouch for the real ones, which take other code paths (``UnitNorm``'s real
    norm, ``Hermitian``'s real transpose). A complex-only set is checked in complex128 alone."""
    for wide in _gradcheck_dtypes(transform):
        prepared = _prepared(transform, shape, wide)
        x = (2 * torch.randn(_stored(prepared, shape), dtype=wide)).requires_grad_(True)
        _gradcheck(prepared, x, f"forward in {wide}")
        # Typical values, not boundary ones: near a bound the inverse's curvature exceeds finite
        # differences' reach. sample() is the transform's own notion of typical (the map of N(0, 1)
        # for most; SoftClip, whose stored value is the value, draws around the middle of its box).
        y = prepared.sample(torch.Size(shape), dtype=wide).requires_grad_(True)
        _gradcheck(prepared.inverse, y, f"inverse in {wide}")


def _gradcheck(function: Callable[[Tensor], Tensor], value: Tensor, what: str) -> None:
    """torch's gradcheck, its failure named by what was checked (which map, which dtype)."""
    try:
        passed = torch.autograd.gradcheck(function, (value,))
    except GradcheckError as error:
        raise AssertionError(f"gradcheck of the {what} failed: {error}") from error
    _require(passed, f"gradcheck of the {what} failed")


def _gradcheck_dtypes(transform: Transform) -> list[torch.dtype]:
    """float64 unless the set is complex only; complex128 as well for a set of complex tensors."""
    real = [] if transform.complex_only else [torch.float64]
    return real + ([torch.complex128] if transform.supports_complex else [])


#: How many random draws :func:`check_torch_codomain` checks per dtype and scale, for event transforms.
CODOMAIN_DRAWS = 64


@_property("torch_codomain")
def check_torch_codomain(transform: Transform, shape: Shape) -> None:
    """torch's own check of :attr:`~paramshape.Transform.codomain` accepts the forward map's values
    (event dimensions moved last, as torch expects), and :attr:`domain` accepts unconstrained
    tensors. For event transforms (vectors, matrices) every one of :data:`CODOMAIN_DRAWS` random
    draws at scales 1, 3 and 10 must pass, in float32 and float64."""
    wide = _case_dtype(transform)
    transform = _prepared(transform, shape, wide)
    stored = _stored(transform, shape)
    y = transform(2 * torch.randn(stored, dtype=wide))
    _require(
        torch_typed.constraint_check(transform.codomain, _events_last(transform, y)).all(),
        "codomain.check rejected a value",
    )
    _require(
        torch_typed.constraint_check(transform.domain, torch.randn(stored, dtype=torch.float64)).all(),
        "domain.check failed",
    )
    if transform.event_dim == 0:
        return
    for dtype in COMPLEX_DTYPES if wide.is_complex else (torch.float32, torch.float64):
        typed = copy.deepcopy(transform).to(_real(dtype))
        for scale in (1.0, 3.0, 10.0):
            # One draw at a time: a leading batch dimension would shift a non-negative ``dim``.
            with torch.no_grad():
                rejected = sum(
                    int(
                        (
                            ~torch_typed.constraint_check(
                                typed.codomain,
                                _events_last(typed, typed(scale * torch.randn(stored, dtype=dtype))),
                            )
                        ).sum()
                    )
                    for _ in range(CODOMAIN_DRAWS)
                )
            _require(rejected == 0, f"codomain.check rejected {rejected} {dtype} events at scale {scale}")


@_property("repr")
def check_repr(transform: Transform, shape: Shape | None = None) -> None:
    """The repr starts with the class name and never prints a tensor."""
    text = repr(transform)
    _require(text.startswith(type(transform).__name__ + "("), f"repr {text!r} does not start with the class")
    _require("tensor(" not in text, f"repr {text!r} prints a tensor")


@_property("compiles")
def check_compiles(transform: Transform, shape: Shape) -> None:
    """Reading the constrained tensor compiles with ``torch.compile(fullgraph=True)`` (no graph
    break; the ``aot_eager`` backend, so no compiler toolchain is needed) and gives the eager value.
    It calls ``torch.compiler.reset()`` first, which drops every cached compilation in the process."""
    from paramshape.attach.constrain import constrain

    transform.check_shape(torch.Size(shape))
    module = _Holder(torch.zeros(shape, dtype=torch.complex64 if transform.supports_complex else None))
    constrain(module, "value", transform, init="sample")
    torch.compiler.reset()  # every call reuses this code object; start each from a clean cache
    compiled = torch.compile(lambda: module.value * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(), module.value * 2)


@_property("log_abs_det_jacobian")
def check_log_abs_det_jacobian(transform: Transform, shape: Shape) -> None:
    """In float64, :meth:`~paramshape.Transform.log_abs_det_jacobian` matches
    :func:`autograd_log_abs_det_jacobian` at the unconstrained values of random samples, within
    ``16 n eps (1 + |reference|)`` for ``n`` coordinates per event (``slogdet`` of an ``n x n``
    matrix and a sum of ``n`` logs each round about ``n`` times). Transforms that are not bijective
    must raise :class:`NotImplementedError` instead."""
    transform = _prepared(transform, shape, torch.float64)
    if not transform.bijective:
        _check_refuses_jacobian(transform, shape, _case_dtype(transform))
        return
    x = transform.inverse(transform.sample(torch.Size(shape), dtype=torch.float64))
    ldj = transform.log_abs_det_jacobian(x, transform(x))
    reference = autograd_log_abs_det_jacobian(transform, x)
    _require(ldj.shape == reference.shape, f"shape {tuple(ldj.shape)}, expected {tuple(reference.shape)}")
    coordinates = transform.domain_coordinates(x).shape[-1]
    tolerance = 16 * coordinates * torch.finfo(torch.float64).eps * (1 + reference.abs())
    error = (ldj - reference).abs()
    worst = int(torch.argmax(error - tolerance))
    _require(
        (error <= tolerance).all(),
        f"log_abs_det_jacobian {ldj.flatten()[worst].item():.17g} differs from the autograd "
        f"Jacobian's {reference.flatten()[worst].item():.17g}",
    )


@_property("reference")
def check_reference(
    transform: Transform,
    shape: Shape,
    dtype: torch.dtype,
    reference: Callable[[Tensor], Tensor],
    inverse_reference: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """The forward map (and the inverse, if ``inverse_reference`` is given) matches a float64
    reference of the documented map: :func:`check_against_reference` at the extreme inputs and at
    normal draws of scale 0.5, 3 and 30, and :func:`check_boundary_round_trip` (elementwise maps)."""
    prepared = _prepared(transform, shape, dtype)
    stored = _stored(prepared, shape)
    draws = [scale * torch.randn(stored) for scale in (0.5, 3.0, 30.0)]
    inputs = [*extreme_inputs(prepared, shape, dtype), *draws]
    check_against_reference(prepared, shape, dtype, reference, inverse_reference, inputs=inputs)
    check_boundary_round_trip(prepared, shape, dtype, reference, inverse_reference)


#: Every property: name -> (check function, whether it runs once per dtype).
PROPERTIES: dict[str, tuple[Callable[..., None], bool]] = {
    "extreme_inputs": (check_extreme_inputs, True),
    "extreme_gradients": (check_extreme_gradients, True),
    "round_trip": (check_round_trip, True),
    "boundary_inverse": (check_boundary_inverse, True),
    "to_interior": (check_to_interior, True),
    "sample": (check_sample, True),
    "nan_and_inf_are_never_members": (check_nan_and_inf_are_never_members, True),
    "settings_follow_dtype": (check_settings_follow_dtype, True),
    "state_dict_round_trip": (check_state_dict_round_trip, True),
    "optimizer_steps": (check_optimizer_steps, True),
    "log_abs_det_jacobian_extremes": (check_log_abs_det_jacobian_extremes, True),
    "gradcheck": (check_gradcheck, False),
    "torch_codomain": (check_torch_codomain, False),
    "log_abs_det_jacobian": (check_log_abs_det_jacobian, False),
    "repr": (check_repr, False),
    "compiles": (check_compiles, False),
}


def check_transform(
    transform: Transform,
    shape: Shape = (4, 5),
    dtypes: Sequence[torch.dtype] = DTYPES,
    *,
    properties: Sequence[str] | None = None,
    seed: int | None = 0,
    reference: Callable[[Tensor], Tensor] | None = None,
    inverse_reference: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Run the transform contract on ``transform``; raise on the first property that fails.

    The properties (:data:`PROPERTIES`) are those every paramshape transform passes: inputs from
    -1e4 to 1e4 (and 0) land in the set with finite values and gradients, the round trip keeps
    feasible values within derived tolerances, boundary values have a finite inverse, ``to_interior``
    lands inside with a live gradient, samples lie in the set, NaN and infinities are never members,
    settings follow the dtype and ``state_dict``, 20 outward Adam steps stay feasible, the
    log-det-Jacobian is finite and (in float64) matches an autograd Jacobian where the transform is
    bijective, float64 ``gradcheck`` passes, torch's ``codomain.check`` accepts the values, the repr
    prints no tensor, and ``torch.compile(fullgraph=True)`` traces the forward map.

    Args:
        transform: the transform to check (it is copied, never changed).
        shape: the shape of the constrained value to test with.
        dtypes: the dtypes of the per-dtype properties.
        properties: names of the properties to run (default: all). ``"compiles"`` takes a few seconds
            and needs the forward map to be traceable; leave it out for quick checks.
        seed: seed of the random inputs (``None``: use the global generator as it is).
        reference: a float64 implementation of the map you documented, ``reference(x) -> y`` on
            float64 tensors of the stored shape. When given, the property ``"reference"`` also runs
            for every dtype: :func:`check_against_reference` at the extreme inputs and at normal
            draws, and :func:`check_boundary_round_trip` next to the bounds of elementwise maps,
            with the fixed tolerances of :data:`REFERENCE_ULPS`. A map that is wrong together with its
            inverse passes every other property, but not this one.
        inverse_reference: the same for the inverse (optional).

    Raises:
        ContractViolation: naming the property that failed and the transform (an ``AssertionError``,
            so it reads as a test failure under pytest).
        ValueError: an unknown property name.

    Example:
        >>> import torch, paramshape as ps
        >>> from paramshape.testing import check_transform
        >>> check_transform(ps.Simplex(method="ilr"), shape=(2, 6), dtypes=(torch.float32,),
        ...                 properties=["round_trip", "log_abs_det_jacobian"])
        >>> def documented(x):  # ps.UnitInterval()'s map, 1/2 + tanh(2x)/2 = sigmoid(4x) (slope 1 at 0),
        ...     return torch.sigmoid(4 * x)  # in the form that keeps its precision next to 0
        >>> check_transform(ps.UnitInterval(), shape=(3, 4), properties=[], reference=documented)
        >>> def wrong(x):  # a slope off by 1%
        ...     return torch.sigmoid(4.04 * x)
        >>> try:
        ...     check_transform(ps.UnitInterval(), shape=(3, 4), properties=[], reference=wrong)
        ... except ps.ContractViolation as error:
        ...     print(error.property)
        reference
    """
    names = list(PROPERTIES) if properties is None else list(properties)
    unknown = sorted(set(names) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"Unknown contract properties {unknown}; known: {', '.join(PROPERTIES)}.")
    if reference is not None:
        for dtype in dtypes:
            # _property's wrapper takes seed=, which the checks' own signatures do not show.
            seeded = cast(Callable[..., None], check_reference)
            seeded(transform, shape, dtype, reference, inverse_reference, seed=seed)
    for name in names:
        check, per_dtype = PROPERTIES[name]
        if per_dtype:
            for dtype in dtypes:
                check(transform, shape, dtype, seed=seed)
        else:
            check(transform, shape, seed=seed)


# ------------------------------------------------------------------------------ the reference
def autograd_log_abs_det_jacobian(transform: Transform, x: Tensor) -> Tensor:
    r"""The log-det-Jacobian of ``transform`` at ``x`` from an autograd Jacobian, in float64.

    For each event (slice, matrix or element, see :meth:`~paramshape.Transform.event_dims`) this
    builds the Jacobian of :meth:`~paramshape.Transform.codomain_coordinates` of the forward map
    with respect to the entries of ``x`` that :meth:`~paramshape.Transform.domain_coordinates`
    selects, and returns :math:`\log\lvert\det J\rvert` with ``torch.linalg.slogdet``. It is the
    reference that :meth:`~paramshape.Transform.log_abs_det_jacobian` must match; it costs a dense
    Jacobian over the whole tensor, so use small shapes.

    Args:
        transform: any paramshape transform (a float64 copy is used; ``transform`` is not changed).
        x: an unconstrained tensor of the stored shape.

    Returns:
        A float64 tensor of ``x``'s shape without the event dimensions.

    Raises:
        ValueError: the two coordinate maps do not give square Jacobians (as many free coordinates
            in the value as in the unconstrained tensor), or disagree on the batch shape.

    Example:
        >>> import torch, paramshape as ps
        >>> from paramshape.testing import autograd_log_abs_det_jacobian
        >>> x = torch.tensor([-1.0, 0.0, 2.0])
        >>> exact = ps.Positive(method="exp").log_abs_det_jacobian(x, x.exp())  # log e^x = x
        >>> torch.allclose(autograd_log_abs_det_jacobian(ps.Positive(method="exp"), x), exact.double())
        True
    """
    reference = copy.deepcopy(transform).to(torch.float64)
    x64 = x.detach().to(torch.float64)
    # The coordinate map is a selection of entries, so applying it to the entries' flat indices
    # says which columns of the full Jacobian belong to each event.
    indices = torch.arange(x64.numel(), dtype=torch.float64).reshape(x64.shape)
    columns = reference.domain_coordinates(indices).round().long()

    def value_coordinates(flat: Tensor) -> Tensor:
        return reference.codomain_coordinates(reference(flat.reshape(x64.shape)))

    with torch.enable_grad():
        # One input and one output: a single Tensor (jacobian is unannotated in torch).
        full: Tensor = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
            value_coordinates, x64.reshape(-1)
        )
    batch, free = columns.shape[:-1], columns.shape[-1]
    if full.shape[:-2] != batch:
        raise ValueError(
            f"{transform!r}: codomain_coordinates gives batch shape {tuple(full.shape[:-2])} but "
            f"domain_coordinates gives {tuple(batch)}."
        )
    if full.shape[-2] != free:
        raise ValueError(
            f"{transform!r}: {full.shape[-2]} codomain coordinates per event but {free} domain "
            "coordinates; the Jacobian between them must be square."
        )
    rows = full.reshape(-1, free, x64.numel())
    picked = torch.take_along_dim(rows, columns.reshape(-1, 1, free).expand(-1, free, -1), dim=2)
    log_det: Tensor = torch.linalg.slogdet(picked).logabsdet.reshape(batch)
    return log_det
