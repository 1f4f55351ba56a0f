"""The real line, rescaled: :class:`Affine`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.errors.report import format_index, format_scalar
from paramshape.numerics import torch_typed
from paramshape.numerics.precision import compute_dtype
from paramshape.transforms.elementwise.bounds import BoundedTransform, BoundLike, ensure_finite
from paramshape.transforms.registry import register

__all__ = ["Affine"]


@register("affine")
class Affine(BoundedTransform):
    r"""An elementwise affine map of the real line, for parameters of very different scales.

    .. math::

        f(x) = \mu + \sigma x, \qquad f^{-1}(y) = \frac{y - \mu}{\sigma}

    The optimizer then works on :math:`x`, of order one when :math:`\mu` and :math:`\sigma` are the
    expected location and scale of the value: a learning rate that suits one parameter suits the
    others (Stan's ``offset``/``multiplier``). The set does not change, so every finite value is
    feasible. A negative ``scale`` gives a decreasing map.

    The map is capped at the dtype's largest finite number, so a large scale cannot overflow to
    ``inf`` (in float16 ``10 * 1e4`` would).

    * Domain: :math:`\mathbb{R}`, elementwise.
    * Codomain: :math:`\mathbb{R}` (every finite value).

    Args:
        loc: :math:`\mu`, a finite number or a tensor that broadcasts against the constrained tensor.
        scale: :math:`\sigma`, likewise, nonzero everywhere.

    Raises:
        SpecError: ``loc`` or ``scale`` is NaN or infinite, or ``scale`` is 0 somewhere.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(2, 2), "bias", ps.Affine(loc=100.0, scale=10.0), init="raw")
        >>> t = ps.Affine(100.0, 10.0)
        >>> t(torch.tensor([0.0, 1.0])), t.inverse(torch.tensor([90.0]))
        (tensor([100., 110.]), tensor([-1.]))
    """

    loc: Tensor
    scale: Tensor
    bound_names = ("loc", "scale")

    def __init__(self, loc: BoundLike = 0.0, scale: BoundLike = 1.0) -> None:
        super().__init__()
        self._set_bounds(loc=loc, scale=scale)

    def forward(self, x: Tensor) -> Tensor:
        work = compute_dtype(x.dtype)
        largest = torch.finfo(x.dtype).max
        y = self.loc.to(work) + self.scale.to(work) * x.to(work)
        return y.clamp(-largest, largest).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = compute_dtype(y.dtype)
        largest = torch.finfo(y.dtype).max
        x = (y.to(work) - self.loc.to(work)) / self.scale.to(work)
        return x.clamp(-largest, largest).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Elementwise :math:`\log\lvert\sigma\rvert`, broadcast to ``x``'s shape."""
        work = compute_dtype(x.dtype)
        slope = torch.log(self.scale.to(work).abs())
        return slope.expand(torch_typed.broadcast_shapes(slope.shape, x.shape)).to(x.dtype)

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.real

    def project(self, y: Tensor) -> Tensor:
        """The identity: every real value is in the set."""
        return y.clone()

    def to_interior(self, y: Tensor) -> Tensor:
        largest = torch.finfo(y.dtype).max
        return torch.where(torch.isfinite(y), y.double(), 0.0).clamp(-largest, largest).to(y.dtype)

    def _analyse_bounds(self, bounds: dict[str, Tensor]) -> None:
        name = type(self).__name__
        ensure_finite(bounds["loc"], "loc", name, "loc must be a finite number.")
        ensure_finite(bounds["scale"], "scale", name, "scale must be a finite, nonzero number.")
        zero = bounds["scale"] == 0
        if bool(zero.any()):
            where = tuple(int(i) for i in zero.nonzero()[0]) if zero.dim() else ()
            raise SpecError(
                f"{name}: 'scale' is {format_scalar(0.0)} at {format_index(where)}; the map must be "
                "invertible, so scale must be nonzero everywhere."
            )
