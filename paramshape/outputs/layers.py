r"""Output layers that are not invertible transforms: :class:`HardClamp` (with an optional
straight-through gradient), :class:`BoundedReLU`, and :class:`TemperatureSoftmax`, a softmax whose
temperature is a learnable, paramshape-constrained parameter.

The smooth bounded outputs are the transforms themselves, used as layers: ``ps.Box(low, high)``
(scaled sigmoid), ``ps.SoftClip(low, high)`` (identity inside, smooth bends at the edges),
``ps.Positive()`` (softplus: positive without ReLU's dead zone) and ``ps.Simplex(dim)`` (softmax).
Any of these, or the layers here, can be appended to a model or attached with
:func:`~paramshape.bound_output`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from paramshape.attach.constrain import constrain
from paramshape.errors import SpecError
from paramshape.errors.report import format_setting
from paramshape.numerics.precision import compute_dtype
from paramshape.strategies.methods import ConstraintMethod
from paramshape.transforms.elementwise.bounds import BoundLike, as_bound
from paramshape.transforms.elementwise.interval import Box, _classify
from paramshape.transforms.elementwise.positive import Positive

__all__ = ["BoundedReLU", "HardClamp", "TemperatureSoftmax"]


def _straight_through_clamp(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``clamp`` forward, identity backward. ``x - x.detach()`` is exactly 0 with a gradient of 1, so
    the value is exactly the clamp; for infinite inputs it is NaN, which ``nan_to_num`` turns into 0
    (and its gradient there into 0)."""
    passthrough = torch.nan_to_num(x - x.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.clamp(x, low, high).detach() + passthrough


class HardClamp(nn.Module):
    r"""Clamp every output into :math:`[l, h]`, optionally with a straight-through gradient.

    .. math::

        y = \min(\max(x, l), h), \qquad
        \frac{\partial y}{\partial x} = \begin{cases} 1 & l \le x \le h \\ 0 & \text{otherwise} \end{cases}
        \quad\text{or}\quad \frac{\partial y}{\partial x} = 1 \text{ (straight-through)}

    The plain clamp (``torch.clamp``) passes no gradient for an output beyond a bound, so nothing
    pulls that output back: a unit whose pre-activation drifts past the bound stops learning.
    ``straight_through=True`` keeps the clamped value but passes the gradient as if there were no
    clamp, so learning does not stop at the bound (a biased gradient estimate, as in quantization-aware
    training). For a smooth alternative use ``ps.Box(low, high)`` or ``ps.SoftClip(low, high)`` as the
    layer. The output is exactly the projection ``ps.Box(low, high).project(x)``.

    Output set: :math:`[l, h]` (closed; values land exactly on the bounds). NaN stays NaN.

    Args:
        low: lower bound, a number or a tensor that broadcasts against the outputs (``-inf``
            allowed).
        high: upper bound, likewise (``+inf`` allowed); ``low < high`` everywhere.
        straight_through: pass the gradient through unchanged (default ``False``).

    Raises:
        SpecError: a bound is NaN or ``low >= high`` somewhere.

    Example:
        >>> import torch, paramshape as ps
        >>> x = torch.tensor([-3.0, 0.5, 3.0], requires_grad=True)
        >>> ps.HardClamp(-1, 1)(x).sum().backward()
        >>> x.grad
        tensor([0., 1., 0.])
        >>> x.grad = None
        >>> clamp = ps.HardClamp(-1, 1, straight_through=True)
        >>> clamp(x).detach()
        tensor([-1.0000,  0.5000,  1.0000])
        >>> clamp(x).sum().backward()
        >>> x.grad
        tensor([1., 1., 1.])
    """

    low: Tensor
    high: Tensor

    def __init__(self, low: BoundLike, high: BoundLike, straight_through: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        low_tensor, high_tensor = as_bound(low, "low", name), as_bound(high, "high", name)
        _classify(low_tensor, high_tensor, name)
        dtype = torch.promote_types(low_tensor.dtype, high_tensor.dtype)
        self.register_buffer("low", low_tensor.to(dtype))
        self.register_buffer("high", high_tensor.to(dtype))
        self.straight_through = bool(straight_through)

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        if self.straight_through:
            return _straight_through_clamp(x, low, high)
        return torch.clamp(x, low, high)

    def extra_repr(self) -> str:
        text = f"low={format_setting(self.low)}, high={format_setting(self.high)}"
        return text + (", straight_through=True" if self.straight_through else "")


class BoundedReLU(nn.Module):
    r"""A ReLU capped at ``high``: :math:`y = \min(\max(x, 0), h)`; ``BoundedReLU(6.0)`` is ReLU6.

    .. math::

        \frac{\partial y}{\partial x} = \begin{cases} 1 & 0 < x < h \\ 0 & \text{otherwise} \end{cases}

    Like ReLU it has a dead zone (no gradient below 0) and like a clamp none above ``high``. For
    positive outputs that keep a gradient everywhere use ``ps.Positive()`` (softplus) as the layer;
    for a smooth cap, ``ps.Box(0, high)`` or ``ps.SoftClip(0, high)``.

    Output set: :math:`[0, h]`.

    Args:
        high: the cap, a positive number or a tensor of positive numbers that broadcasts against the
            outputs (one cap per feature); ``inf`` gives a plain ReLU.

    Raises:
        SpecError: ``high`` is NaN or not positive.

    Example:
        >>> import torch, paramshape as ps
        >>> ps.BoundedReLU(6.0)(torch.tensor([-2.0, 3.0, 9.0]))
        tensor([0., 3., 6.])
    """

    high: Tensor

    def __init__(self, high: BoundLike = 6.0) -> None:
        super().__init__()
        bound = as_bound(high, "high", type(self).__name__)
        _classify(torch.zeros((), dtype=bound.dtype), bound, type(self).__name__)
        self.register_buffer("high", bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.minimum(torch.relu(x), self.high.to(x.dtype))

    def extra_repr(self) -> str:
        return f"high={format_setting(self.high)}"


class TemperatureSoftmax(nn.Module):
    r"""Softmax with a learnable temperature :math:`T`, itself a constrained parameter.

    .. math::

        y = \operatorname{softmax}\bigl(x / T\bigr) \text{ along } ``dim``, \qquad
        T = f(u) \in \begin{cases} (0, \infty) & \text{``bounds=None'': } f = \text{softplus (Positive)} \\
                                   (l, h) & \text{``bounds=(l, h)'': } f = \text{Box}(l, h) \end{cases}

    ``temperature`` is a 0-d parameter constrained with :func:`~paramshape.constrain`, so the
    optimizer cannot make it negative (which would flip the ranking) or, with ``bounds``, collapse it
    to 0 (a one-hot output with vanishing gradients) or blow it up (a uniform output). Without
    bounds nothing stops :math:`T` from shrinking towards 0 until :math:`x / T` overflows; give
    bounds for long training. Large :math:`T` flattens the distribution, small :math:`T` sharpens it.

    The logits are shifted by their (detached) maximum before the division, which changes nothing
    mathematically but keeps :math:`x / T` from overflowing for large logits. Half-precision inputs
    are computed in float32.

    Output set: the probability simplex along ``dim`` (with ``log=True``, log-probabilities).

    Args:
        dim: the dimension of the classes (default: the last).
        init: the initial temperature, positive and inside ``bounds``.
        bounds: ``(low, high)`` with ``0 <= low < high`` (``high`` may be ``inf``), or ``None`` for
            any positive temperature.
        method: how the temperature is constrained: ``"reparam"`` (default) or ``"project"``
            (clamped after each optimizer step, as CLIP clamps its logit scale; needs ``bounds``
            with ``low > 0``), see :func:`~paramshape.constrain`.
        log: return ``log_softmax`` instead (for ``nn.NLLLoss``).

    Raises:
        SpecError: ``init`` or ``bounds`` are invalid, or ``method="project"`` without a positive
            lower bound.

    Example:
        >>> import torch, paramshape as ps
        >>> head = ps.TemperatureSoftmax(init=2.0, bounds=(0.05, 20.0))
        >>> head.temperature
        tensor(2.0000, grad_fn=<...>)
        >>> p = head(torch.tensor([[2.0, 0.0, -2.0]]))
        >>> bool(torch.allclose(p, torch.softmax(torch.tensor([[1.0, 0.0, -1.0]]), -1)))
        True
        >>> ps.constraints(head)
        {'temperature': Box(low=0.05, high=20.0)}
    """

    temperature: Tensor

    def __init__(
        self,
        dim: int = -1,
        init: float = 1.0,
        bounds: tuple[float, float] | None = None,
        *,
        method: ConstraintMethod = "reparam",
        log: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise SpecError(f"{name}: dim must be an integer; got {dim!r}.")
        self.dim = dim
        self.log = bool(log)
        if (
            isinstance(init, bool)
            or not isinstance(init, (int, float))
            or not math.isfinite(init)
            or init <= 0
        ):
            raise SpecError(f"{name}: init must be a positive finite temperature; got {init!r}.")
        spec = _temperature_spec(bounds, float(init), method, name)
        self.temperature = nn.Parameter(torch.tensor(float(init)))
        constrain(self, "temperature", spec, method=method)

    def forward(self, x: Tensor) -> Tensor:
        work = compute_dtype(x.dtype)
        logits = x.to(work)
        # softmax ignores a shift; removing the maximum keeps logits / T from overflowing.
        logits = logits - logits.amax(self.dim, keepdim=True).detach()
        scaled = logits / self.temperature.to(work)
        out = torch.log_softmax(scaled, self.dim) if self.log else torch.softmax(scaled, self.dim)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (", log=True" if self.log else "")


def _temperature_spec(
    bounds: tuple[float, float] | None, init: float, method: str, owner: str
) -> Box | Positive:
    if bounds is None:
        if method == "project":
            raise SpecError(
                f"{owner}: method='project' clamps the temperature onto its closed set, which without "
                "bounds includes 0 (a division by zero); give bounds=(low, high) with low > 0."
            )
        return Positive()
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise SpecError(
            f"{owner}: bounds must be a pair (low, high) of numbers or None; got {bounds!r}."
        ) from None
    if not (0 <= low < high) or math.isnan(high):
        raise SpecError(f"{owner}: bounds must satisfy 0 <= low < high; got {bounds!r}.")
    if method == "project" and low == 0:
        raise SpecError(f"{owner}: method='project' needs low > 0 (the clamp can reach low); got {bounds!r}.")
    # A reparametrized temperature on a bound would have a vanishing gradient: start strictly inside.
    inside = low <= init <= high if method == "project" else low < init < high
    if not inside:
        raise SpecError(f"{owner}: init={init!r} lies outside bounds=({low!r}, {high!r}).")
    return Box(low, high)
