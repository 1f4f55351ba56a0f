"""Matrices with a bounded largest singular value (a Lipschitz bound per layer): :class:`SpectralBound`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_scalar, format_shape
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype
from paramshape.transforms.matrix.base import (
    MatrixTransform,
    finite_float64,
    format_value,
    matrix_label,
    matrix_tolerance,
    nonfinite_matrices,
)
from paramshape.transforms.registry import register

__all__ = ["SpectralBound"]


class _SpectralBall(constraints.Constraint):
    """Matrices (the last two dimensions) whose largest singular value is at most ``bound``."""

    event_dim = 2

    def __init__(self, bound: float, conv: bool = False) -> None:
        super().__init__()
        self.bound, self.conv = bound, conv

    def check(self, value: Tensor) -> Tensor:
        if self.conv:  # the whole kernel is one matrix, bounded by c / sqrt(prod(kernel))
            limit = self.bound / math.sqrt(math.prod(value.shape[2:]))
            return (_spectral_excess(value.flatten(1), limit) == 0).reshape(())
        return (_spectral_excess(value, self.bound) == 0).squeeze(-1).squeeze(-1)

    def __repr__(self) -> str:
        return f"SpectralBall({self.bound}{', conv=True' if self.conv else ''})"


def _largest_singular_value(matrix: Tensor) -> Tensor:
    """The spectral norm of each matrix, ``(*batch, 1, 1)``, from the matrix divided by its (detached)
    largest magnitude, so huge and tiny entries neither overflow nor underflow inside the SVD; 0 for a
    zero matrix. Differentiable: the gradient :math:`u_1 v_1^\\top` stays finite at repeated values."""
    largest = matrix.detach().abs().amax((-2, -1), keepdim=True)
    scale = torch.where(largest > 0, largest, torch.ones_like(largest))
    scaled = torch.where(largest > 0, matrix / scale, torch.zeros_like(matrix))
    largest_singular: Tensor = torch.linalg.svdvals(scaled)[..., :1, None] * scale
    return largest_singular


def _spectral_excess(y: Tensor, bound: float) -> Tensor:
    """How far each matrix's spectral norm lies above ``bound``, beyond :func:`matrix_tolerance` of
    the bound; float64 ``(*batch, 1, 1)``, infinite for a matrix holding NaN or infinity."""
    sigma = _largest_singular_value(finite_float64(y))
    tolerance = matrix_tolerance(y.dtype, max(y.shape[-2], y.shape[-1]))
    excess = (sigma - bound * (1 + tolerance)).clamp_min(0.0)
    return torch.where(nonfinite_matrices(y), torch.inf, excess)


@register("spectral_bound")
class SpectralBound(MatrixTransform):
    r"""Matrices whose largest singular value (spectral norm, the Lipschitz constant of
    :math:`x \mapsto W x`) is at most ``bound``: Lipschitz networks, GAN critics, stable recurrences.

    .. math::

        f(X) = X\, \frac{c \tanh(\sigma(X) / c)}{\sigma(X)}, \qquad
        f^{-1}(Y) = Y\, \frac{c \operatorname{artanh}(\sigma(Y) / c)}{\sigma(Y)}

    with :math:`\sigma` the largest singular value and :math:`c` = ``bound``. Each matrix is scaled,
    never rotated, so :math:`\sigma(f(X)) = c \tanh(\sigma(X)/c) < c`; near 0 the map is the identity
    (:math:`f(X) \approx X (1 - \sigma^2 / 3c^2)`). It is a bijection onto the open spectral ball, and
    since :math:`\sigma` is a norm its log-det-Jacobian is that of any radial map,
    :math:`\log\operatorname{sech}^2 u + (N - 1) \log(\tanh u / u)` with :math:`u = \sigma(X)/c` and
    :math:`N` the number of entries. :math:`\sigma` is exact (an SVD of each matrix), not a power
    iteration: ``torch.nn.utils.parametrizations.spectral_norm`` divides by an estimate of
    :math:`\sigma`, one power step per call, so its value can exceed the bound, and it pins the norm
    to 1 rather than bounding it. :meth:`project` clips the singular values at :math:`c`, the exact
    Frobenius projection (``method="project"``).

    **Convolutions.** The spectral norm of a conv kernel reshaped to ``(out, in * kh * kw)`` is not the
    operator norm of the convolution (pytorch #99149): the convolution sums ``kh * kw`` shifted copies
    of the input, so its norm can be up to :math:`\sqrt{k_h k_w}` times larger, for any stride,
    padding, dilation or groups (Cauchy--Schwarz over the shifts, each of which is non-expansive;
    Tsuzuku et al., 2018). With ``conv=True`` the whole tensor ``(out, in, *kernel)`` is one matrix
    ``(out, in * prod(kernel))`` whose spectral norm is bounded by :math:`c / \sqrt{\prod k}`, which
    guarantees that the convolution's operator norm is at most :math:`c`. The bound is tight for some
    kernels and inputs, not for all; the exact norm of a circular convolution (the largest singular
    value over the Fourier frequencies, Sedghi et al., 2019) depends on the input size and is not
    offered.

    * Domain: :math:`\mathbb{R}^{n \times m}` (with ``conv``, any ``(out, in, *kernel)`` tensor);
      leading dimensions are a batch.
    * Codomain: :math:`\{Y : \sigma(Y) \le c\}` per matrix; membership with a relative tolerance of
      ``matrix_tolerance`` of the longer side (about ``10 n`` epsilons) on the bound.

    Args:
        bound: :math:`c`, a finite positive number: the largest singular value allowed (with
            ``conv``, the bound on the convolution's operator norm).
        conv: treat the tensor as a conv kernel ``(out, in, *kernel)``, as described above.

    Raises:
        SpecError: ``bound`` is not a finite positive number.
        ShapeMismatchError: (from :func:`paramshape.constrain`) fewer than two dimensions (three with
            ``conv``), or empty matrices.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(8, 4), "weight", ps.SpectralBound(1.0), init="sample")
        >>> bool(torch.linalg.matrix_norm(layer.weight.detach(), ord=2) <= 1.0)
        True
        >>> conv = ps.constrain(nn.Conv2d(3, 8, 3, padding=1), "weight", ps.SpectralBound(1.0, conv=True), init="sample")
        >>> x = torch.randn(2, 3, 16, 16)
        >>> bool(conv._conv_forward(x, conv.weight, None).norm() <= x.norm())
        True
    """

    square = False

    def __init__(self, bound: float = 1.0, conv: bool = False) -> None:
        super().__init__()
        if isinstance(bound, Tensor) and bound.numel() == 1:
            bound = bound.item()
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < math.inf:
            raise SpecError(f"SpectralBound: bound must be a finite positive number; got {bound!r}.")
        if not isinstance(conv, bool):
            raise SpecError(f"SpectralBound: conv must be True or False; got {conv!r}.")
        self.bound = float(bound)
        self.conv = conv

    # ---------------------------------------------------------------- shapes
    def check_shape(self, shape: torch.Size) -> None:
        if self.conv and len(shape) < 3:
            raise ShapeMismatchError(
                f"{self!r} takes a conv kernel (out, in, *kernel); the tensor has shape "
                f"{format_shape(shape)}. Use conv=False for a matrix."
            )
        super().check_shape(shape)

    def event_dims(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(ndim)) if self.conv else super().event_dims(ndim)

    def _matrices(self, tensor: Tensor) -> Tensor:
        """The tensor as matrices: a conv kernel flattened to ``(out, in * prod(kernel))``."""
        return tensor.flatten(1) if self.conv else tensor

    def _limit(self, shape: torch.Size) -> float:
        """The bound on the matrices' spectral norm: ``bound``, divided by the square root of the
        kernel's size for a conv kernel."""
        return self.bound / math.sqrt(math.prod(shape[2:])) if self.conv else self.bound

    # ---------------------------------------------------------------- the map
    def forward(self, x: Tensor) -> Tensor:
        work = self._matrices(x.to(compute_dtype(x.dtype)))
        limit = self._limit(x.shape)
        largest = work.detach().abs().amax((-2, -1), keepdim=True)
        nonzero = largest > 0
        scale = torch.where(nonzero, largest, torch.ones_like(largest))
        # Double where: a zero matrix never reaches the SVD's gradient.
        scaled = torch.where(nonzero, work / scale, torch.ones_like(work))
        sigma = torch.linalg.svdvals(scaled)[..., :1, None]  # >= 1: sigma bounds every entry
        u = torch.where(nonzero, (scale / limit) * sigma, torch.zeros_like(sigma))
        far = scaled * (limit * torch.tanh(u) / sigma)
        # Near 0 the series x (1 - u^2 / 3), exact to eps below eps^(1/4): the Jacobian at 0 is I.
        small = u < torch.finfo(work.dtype).eps ** 0.25
        value = torch.where(small, work * (1 - u * u / 3), far)
        return value.reshape(x.shape).to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        work = self._matrices(y.to(compute_dtype(y.dtype)))
        limit = self._limit(y.shape)
        sigma = _largest_singular_value(work)
        fraction = (sigma / limit).clamp(0.0, 1.0 - torch.finfo(work.dtype).eps / 2)
        ratio = limit * torch.atanh(fraction) / torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        ratio = torch.where(sigma > 0, ratio, torch.ones_like(ratio))
        return (work * ratio).reshape(y.shape).to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log\operatorname{sech}^2 u + (N - 1)\log(\tanh u / u)`, :math:`u = \sigma(X)/c`,
        one entry per matrix (one per tensor with ``conv``)."""
        work = self._matrices(x.to(compute_dtype(x.dtype)))
        count = work.shape[-2] * work.shape[-1]
        u = _largest_singular_value(work) / self._limit(x.shape)
        log_sech2 = 2 * (math.log(2.0) - u - torch.nn.functional.softplus(-2 * u))
        small = u < torch.finfo(work.dtype).eps ** 0.25
        safe = torch.where(small, torch.ones_like(u), u)
        log_ratio = torch.log(-torch.expm1(-2 * safe)) - torch.log1p(torch.exp(-2 * safe)) - torch.log(safe)
        log_ratio = torch.where(small, -u * u / 3, log_ratio)
        ldj = (log_sech2 + (count - 1) * log_ratio)[..., 0, 0]
        # Far out the log-det is about -2 u, below float16's range: clamped to the dtype's lowest.
        return ldj.clamp_min(torch.finfo(x.dtype).min).to(x.dtype)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value: the map of a normal matrix scaled so that its largest singular value is
        about the bound (a standard normal ``n x m`` matrix has about sqrt(n) + sqrt(m)), so
        the value's lies about three quarters of the way to the bound, not crowded against it."""
        shape = torch.Size(shape)
        noise = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        rows, cols = (shape[0], math.prod(shape[1:])) if self.conv else (shape[-2], shape[-1])
        with torch.no_grad():
            return self.forward(noise * (self._limit(shape) / (math.sqrt(rows) + math.sqrt(cols))))

    # ---------------------------------------------------------------- the set
    @property
    def codomain(self) -> constraints.Constraint:
        return _SpectralBall(self.bound, self.conv)

    def _excess(self, y: Tensor) -> Tensor:
        excess = _spectral_excess(self._matrices(y), self._limit(y.shape))
        return excess.reshape((1,) * y.dim()) if self.conv else excess

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        limit = self._limit(y.shape)
        if self.conv:
            index = (0, 0)  # the whole kernel is one matrix
            y = y.flatten(1)
        broken = self._describe_nonfinite(y, index)
        if broken is not None:
            return broken
        sigma = float(_largest_singular_value(finite_float64(y[index[:-2]])))
        if self.conv:
            return (
                f"the kernel, flattened to {tuple(y.shape)}, has largest singular value "
                f"{format_value(sigma, y.dtype)} (at most {format_value(limit, y.dtype)}, which bounds the "
                f"convolution's norm by {format_scalar(self.bound)})"
            )
        return (
            f"{matrix_label(index)} has largest singular value {format_value(sigma, y.dtype)} "
            f"(at most {format_scalar(self.bound)})"
        )

    def project(self, y: Tensor) -> Tensor:
        r"""The nearest matrix in Frobenius norm: :math:`U \min(\Sigma, c) V^\top` (with ``conv``, of
        the flattened kernel and :math:`c / \sqrt{\prod k}`). NaN stays NaN."""
        return self._clip_singular_values(y, 1.0)

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), y, torch.zeros_like(y))
        return self._clip_singular_values(finite, 1.0 - INTERIOR_FRACTION)

    def _clip_singular_values(self, y: Tensor, fraction: float) -> Tensor:
        work = self._matrices(y.double())
        broken = nonfinite_matrices(work)
        work = torch.where(broken, 0.0, work)
        largest = work.abs().amax((-2, -1), keepdim=True)
        scale = torch.where(largest > 0, largest, 1.0)
        u, s, vh = torch.linalg.svd(work / scale, full_matrices=False)
        clipped = s.clamp_max(fraction * self._limit(y.shape) / scale[..., 0])
        value = (u * clipped[..., None, :]) @ vh * scale
        value = torch.where(broken, torch.nan, value)
        return value.reshape(y.shape).to(y.dtype)

    def extra_repr(self) -> str:
        return format_scalar(self.bound) + (", conv=True" if self.conv else "")
