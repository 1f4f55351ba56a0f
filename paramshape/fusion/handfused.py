"""Hand-fused eager implementations: the same maps as ``_maps``, in fewer passes and allocations.

On CPU, ``torch.where`` and every other boolean-mask kernel run about 30 times slower than an
arithmetic one (3.7 ms against 0.1 ms for 1M float32 values on the 2-core benchmark machine), and
the two-sided box of ``_maps.sigmoid_box`` needs a ``where`` in its forward and several in the
backward autograd builds from it. The function below selects the nearer bound by sign arithmetic
instead (``copysign``, ``maximum``, ``minimum``) and computes the backward from the saved sigmoid, so
the forward is 8 arithmetic passes (6 for a box centred on 0, ``low = -high``) and the backward 4.
The values are within an ulp of ``_maps.sigmoid_box`` (one rounding where it has two; at
``x = -0.0``, the midpoint, computed from the other bound), and the gradient is autograd's,
operation for operation.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, NamedTuple

import torch
from torch import Tensor

from paramshape.numerics import torch_typed
from paramshape.numerics.maps import box_gain
from paramshape.numerics.precision import compute_dtype

__all__ = [
    "MIN_ELEMENTS",
    "SigmoidBoxConstants",
    "constants_for",
    "kept_constants",
    "sigmoid_box",
    "sigmoid_box_constants",
    "sigmoid_box_value_and_slope",
]

#: Below this many elements the plain map runs instead. With the bounds' constants kept between
#: reads (:func:`kept_constants`) the hand-fused arithmetic is the faster at every size, even as an
#: autograd.Function: forward and backward of a 64-element box took 313 against 424 us of the plain
#: map's, 352 against 484 at 4096 (2-vCPU AMD EPYC under load, 1 thread, interleaved; below
#: :data:`FUNCTION_MIN_ELEMENTS` the native ops are faster still); so only an empty tensor takes
#: the plain map.
MIN_ELEMENTS = 1


def sigmoid_box(x: Tensor, low: Tensor, high: Tensor, layout: str, slope: float = 1.0) -> Tensor | None:
    """``Box``'s map for two-sided bounds, hand-fused; ``None`` (decline) for other layouts, empty
    tensors, or when the bounds would broadcast ``x`` to a larger shape."""
    if layout != "interval" or x.numel() < MIN_ELEMENTS:
        return None
    constants = constants_for(x, low, high, slope)
    if constants is None:
        return None
    work = constants.width.dtype
    same = work == x.dtype  # float32 and float64: no cast either way
    x_work = x if same else x.to(work)
    if x.numel() < FUNCTION_MIN_ELEMENTS:
        y = _sigmoid_box_native(x_work, constants)
    else:
        # Function.apply is unannotated in torch; forward below states what it returns.
        outputs: tuple[Tensor, Tensor] = _SigmoidBox.apply(x_work, constants)  # type: ignore[no-untyped-call]
        y = outputs[0]
    return y if same else y.to(x.dtype)


#: From this many elements the map is one ``autograd.Function`` (:class:`_SigmoidBox`), which saves
#: one tensor for backward; below it, :func:`_sigmoid_box_native`, whose autograd nodes save three
#: but skip the Function's Python machinery: forward and backward took 212 against 240 us at 4,096
#: values and 239 against 269 at 16,384 for a box centred on 0, 211 against 228 at 8,192 for one
#: off centre, level at 32,768 (2-vCPU AMD EPYC, 1 thread, loaded, interleaved). The values and
#: gradients of the two are the same, bit for bit.
FUNCTION_MIN_ELEMENTS = 16384


def _sigmoid_box_native(x: Tensor, constants: SigmoidBoxConstants) -> Tensor:
    """:class:`_SigmoidBox`'s arithmetic in native autograd ops (exact first and second
    derivatives from autograd itself). ``-|g x|`` is ``x (-g sign(x))`` with the sign a constant
    (``copysign``, so +-1 at +-0 as well), never ``abs``, whose subgradient 0 at 0 would freeze a
    value at the box's centre."""
    high = constants.high
    # The sign and what follows from it are constants, computed from x detached (a no_grad block
    # costs more Python than the operation at these sizes; the bounds never require grad here).
    sign = torch.copysign(constants.one, x.detach())
    factor = sign * constants.neg_gain
    if constants.centred:
        # Centred (low = -high): sign (high - w s), the same values and gradients as below (the
        # factors +-1 are exact wherever they enter), with two operations fewer.
        return _minus_width_times(high, torch.sigmoid(x * factor), constants) * sign
    # One clamp between the two bounds: at these sizes an op's fixed cost is what counts (at
    # 262,144 values it is four times two one-sided clamps, which the Function keeps).
    bound = torch.clamp(sign * constants.inf, constants.low, high)
    return _minus_width_times(bound, torch.sigmoid(x * factor) * sign, constants)


def _minus_width_times(
    base: Tensor, s: Tensor, constants: SigmoidBoxConstants, out: Tensor | None = None
) -> Tensor:
    """``base - w s``, rounded once (a fused multiply-add): with ``w`` as a number where the
    constants have it (``add`` with ``alpha``: 6 against 16 us at 8,577 values, 44 against 169 at
    262,144 on the 2-vCPU AMD EPYC, where ``addcmul`` walks a 0-d ``base`` as a broadcast tensor),
    else ``addcmul``. The two give the same values (tested): one rounding of the same product."""
    # out=None is torch's "no out" (a new tensor, with autograd history where s has it).
    neg_width = constants.neg_width
    if neg_width is not None:
        return torch.add(base, s, alpha=neg_width, out=out)
    return torch.addcmul(base, s, constants.width, value=-1, out=out)


#: The constants of 0-d bounds last seen, per pair of bound tensors (by identity, checked through
#: weak references, with their versions, memory, the working dtype and the slope): at every read of
#: a small tensor, deriving them again (casts, the gain's division and clamp, the width) costs as
#: much as the map. An entry holds copies, never the bounds themselves, and leaves with either
#: bound; the table is cleared if it ever holds more pairs than any model has boxes.
_KEPT: dict[tuple[int, int], tuple[Any, Any, tuple[Any, ...], SigmoidBoxConstants]] = {}
_KEPT_MAX = 4096


def constants_for(x: Tensor, low: Tensor, high: Tensor, slope: float) -> SigmoidBoxConstants | None:
    """The constants of the map of ``x`` between ``low`` and ``high`` in ``x``'s working dtype
    (:func:`kept_constants`); ``None`` when the bounds would broadcast ``x`` to a larger shape."""
    if (low.dim() or high.dim()) and torch_typed.broadcast_shapes(x.shape, low.shape, high.shape) != x.shape:
        return None
    return kept_constants(low, high, compute_dtype(x.dtype), slope)


def kept_constants(low: Tensor, high: Tensor, work: torch.dtype, slope: float) -> SigmoidBoxConstants:
    """:func:`sigmoid_box_constants` of ``low`` and ``high`` in ``work`` with ``slope``, kept
    between calls while the bounds are the same tensors, unwritten (the table above)."""
    # Tensor bounds (large) and inference tensors (made under torch.inference_mode, no version
    # counter to check) are derived at each call.
    if low.dim() or high.dim() or low.is_inference() or high.is_inference():
        low_w, high_w = low.to(work), high.to(work)
        return sigmoid_box_constants(low_w, high_w, box_gain(low_w, high_w, slope))
    key = (id(low), id(high))
    state = (low._version, high._version, low.data_ptr(), high.data_ptr(), work, slope)
    kept = _KEPT.get(key)
    if kept is not None and kept[0]() is low and kept[1]() is high and kept[2] == state:
        return kept[3]
    low_w, high_w = low.detach().to(work, copy=True), high.detach().to(work, copy=True)
    # Read once per change of the bounds, and on CPU only (off it, reading a device value back
    # would stall the stream; the tensor arithmetic then serves): whether the box is centred on
    # 0, and the width as a number.
    on_cpu = low_w.device.type == "cpu"
    constants = sigmoid_box_constants(
        low_w,
        high_w,
        box_gain(low_w, high_w, slope),
        centred=on_cpu and bool(low_w == -high_w),
        numbers=on_cpu,
    )
    if len(_KEPT) >= _KEPT_MAX:
        _KEPT.clear()

    def forget(_: object) -> None:
        _KEPT.pop(key, None)

    _KEPT[key] = (weakref.ref(low, forget), weakref.ref(high, forget), state, constants)
    return constants


class _SigmoidBox(torch.autograd.Function):
    """``low + w sigmoid(z)`` for ``z < 0``, ``high - w sigmoid(-z)`` otherwise, ``w = high - low``,
    ``z = g x`` with the gain ``g = 4 slope / w`` of ``_maps.box_gain`` (unit slope at the centre).

    Its second output, ``u = sign(x) sigmoid(-|z|)``, is what the backward needs (``|u|`` is the
    sigmoid, the sign says which bound is nearer) and is saved instead of ``x``: the stored tensor
    may change in place before the backward runs (``functional_call`` puts it back). ``u`` is an
    output so that a backward with ``create_graph=True`` differentiates through it
    (``du/dx = -g |u| (1 - |u|)``), which gives exact second derivatives.

    Two allocations forward (``u`` and the result) and two backward: on CPU every fresh tensor of a
    few MB costs page faults comparable to a pass over it.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, constants: SigmoidBoxConstants
    ) -> tuple[Tensor, Tensor]:
        # The bounds' tensors come in one tuple, not as arguments: they never require grad here
        # (dispatch leaves such bounds to the plain map), and each tensor argument of apply costs
        # Python work at every read.
        y, u = torch.empty_like(x), torch.empty_like(x)
        _value_into(x, constants, y, u, signed=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u)
        ctx.width_gain = (constants.width, constants.gain)  # type: ignore[attr-defined]
        return y, u

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_y: Tensor | None, grad_u: Tensor | None
    ) -> tuple[Tensor | None, None]:
        (u,) = ctx.saved_tensors  # type: ignore[attr-defined]
        width, gain = ctx.width_gain  # type: ignore[attr-defined]
        if grad_y is None and grad_u is None:
            return None, None
        # dy/dx = w s (1 - s) g and du/dx = -s (1 - s) g: autograd's order (the sigmoid's backward of
        # g_y w - g_u, then the gain of z = g x), so the gradient equals the plain map's bit for bit.
        if torch.is_grad_enabled():
            # create_graph=True: out-of-place, so the gradient is itself differentiable (through u).
            total = torch.zeros_like(u) if grad_y is None else grad_y * width
            if grad_u is not None:
                total = total - grad_u
            return torch.ops.aten.sigmoid_backward(total, u.abs()) * gain, None
        # Laid out like u: the gradient of a Linear weight arrives transposed (the backward of
        # weight.t()), and an elementwise op over two layouts walks one with a stride, 8x slower on
        # CPU; writing g w into u's layout transposes it once, in the same pass.
        total = torch.empty_like(u)
        if grad_y is None:
            assert grad_u is not None  # both None returned above
            torch.neg(grad_u, out=total)
        else:
            torch.mul(grad_y, width, out=total)
            if grad_u is not None:
                total.sub_(grad_u)
        # w s (1 - s) g, in the order autograd's sigmoid backward multiplies, in place, then the gain.
        result = torch.ops.aten.sigmoid_backward.grad_input(total, u.abs(), grad_input=total)
        return result.mul_(gain), None


class SigmoidBoxConstants(NamedTuple):
    """What :func:`sigmoid_box_value_and_slope` derives from the bounds, computed once per change
    of them (0-d or broadcastable tensors in the working dtype)."""

    low: Tensor
    high: Tensor
    width: Tensor  # high - low
    gain: Tensor  # box_gain(low, high, slope)
    neg_gain: Tensor  # -gain (negation is exact)
    width_gain: Tensor  # (high - low) gain
    inf: Tensor  # +inf, whose sign copysign sets
    one: Tensor  # 1, likewise
    #: Whether the box is centred on 0 (``low == -high``): then ``y = copysign(high - w s, x)``,
    #: the same values in fewer passes (``w / 2 = high`` exactly).
    centred: bool = False
    #: ``-(high - low)`` as a Python number (on CPU, 0-d bounds), else ``None``.
    neg_width: float | None = None


def sigmoid_box_constants(
    low: Tensor, high: Tensor, gain: Tensor, *, centred: bool = False, numbers: bool = False
) -> SigmoidBoxConstants:
    """The constants of :func:`sigmoid_box_value_and_slope` for bounds ``low``, ``high`` and the
    gain ``gain`` (:func:`paramshape.numerics.maps.box_gain`); ``centred``: the caller checked that
    ``low == -high``; ``numbers``: keep the width as a Python number too (0-d bounds on CPU)."""
    width = high - low
    inf = torch.full((), math.inf, dtype=width.dtype, device=width.device)
    one = torch.ones((), dtype=width.dtype, device=width.device)
    neg_width = -float(width) if numbers else None
    return SigmoidBoxConstants(low, high, width, gain, -gain, width * gain, inf, one, centred, neg_width)


def sigmoid_box_value_and_slope(
    x: Tensor, constants: SigmoidBoxConstants, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``Box``'s two-sided map and its slope ``dy/dx`` at ``x``, outside autograd, with the
    arithmetic of :class:`_SigmoidBox`: the value is the hand-fused forward's bit for bit, the slope
    is what its backward multiplies an incoming gradient by (``w s (1 - s) g``, with ``w g``
    rounded first), computed once. What a step-folded tensor (``constrain(..., fold=True)``)
    recomputes when its stored tensor changed, at any size (no autograd node, so no fixed cost to
    amortise), in ten passes (six for a box centred on 0) and no allocation with ``out``. ``x``
    and ``constants`` (:func:`sigmoid_box_constants`) in the working dtype; ``out``: the value's
    and the slope's tensors to write (``x``'s shape, not ``x``), else new ones."""
    y, s = out if out is not None else (torch.empty_like(x), torch.empty_like(x))
    _value_into(x, constants, y, s, signed=False)
    # (w g) s (1 - s), in the order of autograd's sigmoid backward (the 0-d w g broadcast as a
    # number: a third faster than an expanded tensor at 8,577 values, the same values).
    return y, torch.ops.aten.sigmoid_backward.grad_input(constants.width_gain, s, grad_input=s)


def _value_into(x: Tensor, constants: SigmoidBoxConstants, y: Tensor, s: Tensor, *, signed: bool) -> None:
    """The arithmetic :class:`_SigmoidBox` and :func:`sigmoid_box_value_and_slope` share, written
    into ``y`` (the value) and ``s``: ``sigmoid(-|g x|)``, with ``x``'s sign where ``signed`` (the
    Function's saved ``u``), without it otherwise (what the slope is computed from)."""
    # s = sigmoid(-|g x|), the logistic of the nearer bound's side (abs and a product: copysign or
    # neg with a number is slower than abs on CPU, and -(|x| g) = |x| (-g) exactly).
    torch.abs(x, out=s).mul_(constants.neg_gain).sigmoid_()
    if constants.centred:
        # Centred (low = -high): high - w s carries x's sign (low + w s = -(high - w s), and the
        # fused multiply-add rounds symmetrically), so the value is the general branch's below
        # bit for bit (at x = -0.0, -0.0 where it gives +0.0), in 2 passes instead of 6.
        _minus_width_times(constants.high, s, constants, out=y).copysign_(x)
        if signed:
            s.copysign_(x)
        return
    # The nearer bound: low where the sign bit of x is set (-0.0 included), high elsewhere. On CPU
    # a where over signbit's mask takes ten times as long at 262,144 values, a clamp between two
    # tensors four times.
    torch.copysign(constants.inf, x, out=y).clamp_min_(constants.low).clamp_max_(constants.high)
    # y = bound - copysign(s, x) w, rounded once (within an ulp of _maps.sigmoid_box, which rounds
    # w s first), with s signed in place (and unsigned again, exactly, where unwanted): a new tensor
    # for the signed s would cost its page faults, on CPU two passes' worth.
    _minus_width_times(y, s.copysign_(x), constants, out=y)
    if not signed:
        s.abs_()
