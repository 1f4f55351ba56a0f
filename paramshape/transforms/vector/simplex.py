"""The probability simplex: :class:`Simplex`, as softmax logits or bijectively (isometric log-ratio)."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.errors.report import format_scalar
from paramshape.fusion.compiled import Fusable
from paramshape.numerics.precision import INTERIOR_FRACTION, compute_dtype, membership_tolerance
from paramshape.numerics.slopes import to_dtype
from paramshape.transforms.registry import register
from paramshape.transforms.vector.base import VectorTransform
from paramshape.transforms.vector.sumtozero import helmert, helmert_inverse

__all__ = ["Simplex", "SimplexMethod"]

#: How :class:`Simplex` parametrizes the simplex.
SimplexMethod = Literal["softmax", "ilr", "stick_breaking"]
_METHODS: tuple[str, ...] = get_args(SimplexMethod)


def _simplex_forward(x: Tensor, dim: int, method: SimplexMethod, log: bool = False) -> Tensor:
    """Simplex's forward map as a pure function (the kernel paramshape.fusion compiles); with
    ``log``, the log-probabilities, by ``log_softmax`` (finite where a probability rounds to 0)."""
    work = x.to(compute_dtype(x.dtype))
    normalize = torch.log_softmax if log else torch.softmax
    if method == "ilr":
        probabilities = normalize(helmert(work.movedim(dim, -1)), -1)
        return probabilities.movedim(-1, dim).contiguous().to(x.dtype)
    if method == "stick_breaking":
        logs = _stick_breaking_logs(work.movedim(dim, -1))
        values = logs if log else torch.exp(logs)
        return values.movedim(-1, dim).contiguous().to(x.dtype)
    return normalize(work, dim=dim).to(x.dtype)


def _stick_offsets(count: int, like: Tensor) -> Tensor:
    """``log(K - 1 - i)`` for ``i < K - 1``: the shift that maps ``x = 0`` to the uniform vector."""
    return torch.log(torch.arange(count, 0, -1, dtype=like.dtype, device=like.device))


def _stick_breaking_logs(x: Tensor) -> Tensor:
    r"""``log y`` of the stick-breaking map along the last dimension (``K - 1`` in, ``K`` out), in log
    space: :math:`\log y_i = \log\sigma(t_i) + \sum_{j<i} \log\sigma(-t_j)`,
    :math:`\log y_{K-1} = \sum_j \log\sigma(-t_j)`, :math:`t = x - \log(K - 1 - i)`. No product of
    many factors in (0, 1) and no ``1 - z`` is formed, so nothing underflows or cancels."""
    t = x - _stick_offsets(x.shape[-1], x)
    keep = torch.nn.functional.logsigmoid(-t)  # log(1 - z_i): what is left of the stick
    left = torch.cumsum(keep, -1)
    before = torch.cat([torch.zeros_like(left[..., :1]), left[..., :-1]], -1)
    return torch.cat([torch.nn.functional.logsigmoid(t) + before, left[..., -1:]], -1)


@register("simplex")
class Simplex(VectorTransform):
    r"""Slices along ``dim`` that are non-negative and sum to one (rows of probabilities).

    .. math::

        f(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}, \qquad
        f^{-1}(y)_i = \log y_i - \frac{1}{K} \sum_j \log y_j

    With ``method="softmax"`` (the default) the stored tensor keeps the parameter's shape (``K``
    logits per slice). The logits are redundant by one degree of freedom (adding a constant to a
    slice changes nothing), so the map is not bijective and has no log-det-Jacobian; the inverse
    picks the centred logits. Entries that are exactly 0 are read as the smallest normal number of
    the dtype so the logits stay finite.

    With ``method="ilr"`` (isometric log-ratio, Stan's simplex since 2.37) the logits are the
    sum-to-zero vector :math:`V x` of :class:`SumToZero`:

    .. math::

        f(x) = \operatorname{softmax}(V x), \qquad f^{-1}(y) = V^\top \log y

    a bijection from :math:`\mathbb{R}^{K-1}`. **The stored tensor then has ``K - 1`` entries
    along ``dim``.** It is computed in :math:`O(K)`; in float32 at ``K = 10000`` it round-trips to
    about 1e-5, where stick-breaking (``torch.distributions.biject_to(simplex)``) loses about 1e-2.
    Its log-det-Jacobian is with respect to the first ``K - 1`` probabilities (the last is one minus
    their sum), the density a Dirichlet prior is written in:

    .. math::

        \log\lvert\det J\rvert = \sum_{i=1}^{K} \log y_i + \tfrac12 \log K

    With ``method="stick_breaking"`` (torch's ``biject_to(simplex)``, TFP's and Stan's former
    simplex) each stored number breaks off a fraction :math:`z_i = \sigma(x_i - \log(K - 1 - i))` of
    what is left of a unit stick:

    .. math::

        y_i = z_i \prod_{j<i} (1 - z_j), \quad y_{K-1} = \prod_j (1 - z_j); \qquad
        f^{-1}(y)_i = \log y_i - \log \sum_{j > i} y_j + \log(K - 1 - i)

    also a bijection from :math:`\mathbb{R}^{K-1}` (``x = 0`` gives the uniform vector), computed in
    log space (:math:`\log y_i = \log\sigma(t_i) + \sum_{j<i} \log\sigma(-t_j)`, a cumulative sum)
    and inverted with the stick left summed from the tail, where torch computes
    :math:`1 - \sum_{j<i} y_j`, which cancels: at ``K = 10^4`` its round trip of the stored numbers
    is off by 73 in float32 and 5.4e-8 in float64, this one by 1.9e-6 and 1.5e-14. Its
    log-det-Jacobian, with respect to the first ``K - 1`` probabilities, is
    :math:`\sum_{i<K-1} (\log y_i + \log(1 - z_i))`. It depends on the order of the entries (the
    first breaks the stick first); ``"ilr"`` is symmetric.

    * Domain: :math:`\mathbb{R}^K` along ``dim``.
    * Codomain: the simplex :math:`\{y : y_i \ge 0, \sum_i y_i = 1\}` along ``dim``. Membership
      tolerates a sum off by a few ulps times ``K``, not torch's fixed 1e-6, which float16 and long
      float32 rows cannot meet. :attr:`codomain` is torch's ``constraints.simplex``, which is
      defined along the last dimension.

    As an output layer (``ps.bound_output(model, ps.Simplex(log=True))`` or the last layer of a
    ``Sequential``), ``log=True`` returns the log-probabilities :math:`\log f(x)_i = x_i -
    \log\sum_j e^{x_j}`, computed by ``log_softmax`` (finite where a probability underflows to 0),
    for ``nn.NLLLoss`` or a log-likelihood, as :class:`TemperatureSoftmax` does. Log-probabilities do
    not lie in the simplex, so ``constrain`` refuses such a transform for a tensor (a
    :class:`~paramshape.SpecError` at the call): constrain with ``Simplex()`` and take
    ``tensor.log()`` where the logarithm is needed.

    Args:
        dim: the dimension that holds each distribution (default: the last one).
        method: ``"softmax"`` (default; ``K`` stored logits, not bijective), ``"ilr"`` or
            ``"stick_breaking"`` (``K - 1`` stored numbers, bijective, with a log-det-Jacobian).
        log: return log-probabilities (output layers only; default ``False``).

    Raises:
        SpecError: ``dim`` is not an integer, ``method`` is unknown or ``log`` is not a bool; at
            ``constrain``, ``log=True``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> mix = nn.Module()
        >>> mix.logits = nn.Parameter(torch.full((2, 3), 1 / 3))
        >>> _ = ps.constrain(mix, "logits", ps.Simplex(dim=-1))
        >>> mix.logits.sum(-1)
        tensor([1., 1.], grad_fn=<SumBackward1>)
        >>> ilr = ps.Simplex(method="ilr")
        >>> x = torch.zeros(2)  # K - 1 = 2 numbers for K = 3 probabilities
        >>> ilr(x)
        tensor([0.3333, 0.3333, 0.3333])
        >>> ilr.log_abs_det_jacobian(x, ilr(x))  # 3 log(1/3) + log(3) / 2
        tensor(-2.7465)
        >>> head = nn.Sequential(nn.Linear(4, 3), ps.Simplex(log=True))  # for nn.NLLLoss
        >>> bool(torch.allclose(head(torch.randn(2, 4)).exp().sum(-1), torch.ones(2)))
        True
    """

    # Eager softmax is one kernel already: "auto" never compiles it, "on" does.
    fusable = Fusable(_simplex_forward, (), ("dim", "method", "log"), auto_min_elements=None)

    def __init__(self, dim: int = -1, method: SimplexMethod = "softmax", log: bool = False) -> None:
        super().__init__(dim)
        if method not in _METHODS:
            raise SpecError(f"Simplex: method must be one of {list(_METHODS)}; got {method!r}.")
        if not isinstance(log, bool):
            raise SpecError(f"Simplex: log must be True or False; got {log!r}.")
        self.method: SimplexMethod = method
        self.log = log
        self.bijective = method != "softmax"
        self.size_change = 0 if method == "softmax" else -1
        if method != "softmax":
            # One probability is the single point 1, which a bijection stores as K - 1 = 0 numbers.
            self.min_size = 2
            self.size_reason = (
                f"With method={method!r} the simplex of one entry is the point 1: nothing to store."
            )

    def forward(self, x: Tensor) -> Tensor:
        return _simplex_forward(x, self.dim, self.method, self.log)

    @property
    def output_only(self) -> str | None:
        """Why this transform cannot constrain a tensor (``constrain`` raises it), or ``None``."""
        if not self.log:
            return None
        return (
            f"{self!r} returns log-probabilities, which do not lie in the simplex, so it bounds "
            "outputs only; constrain the tensor with Simplex() and take .log() where needed."
        )

    def inverse(self, y: Tensor) -> Tensor:
        work = y.to(compute_dtype(y.dtype))
        logs = torch.log(work.clamp_min(torch.finfo(work.dtype).tiny))
        if self.method == "stick_breaking":
            return self._back(_stick_breaking_inverse(self._last(work))).to(y.dtype)
        centred = logs - logs.mean(self.dim, keepdim=True)
        if self.method == "ilr":
            return self._back(helmert_inverse(self._last(centred))).to(y.dtype)
        return centred.to(y.dtype)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""With ``method="stick_breaking"``: :math:`\sum_{i<K-1} (\log y_i + \log(1 - z_i))`. With
        ``method="ilr"``: :math:`\sum_i \log y_i + \tfrac12 \log K` per slice, with
        respect to the first ``K - 1`` probabilities; ``log y`` is taken as ``log_softmax`` of the
        logits, so it is finite even where ``y`` rounds to 0. Shape: ``x``'s without ``dim``.

        Raises:
            NotImplementedError: with ``method="softmax"``, which is not bijective.
        """
        if self.method == "stick_breaking":
            work = self._last(x.to(compute_dtype(x.dtype)))
            logs = _stick_breaking_logs(work)
            t = work - _stick_offsets(work.shape[-1], work)
            keep = torch.nn.functional.logsigmoid(-t)
            return to_dtype((logs[..., :-1] + keep).sum(-1), x.dtype)
        if self.method != "ilr":
            raise NotImplementedError(
                f"{self!r} maps K logits onto K probabilities that sum to one, so it is not "
                "bijective and has no log-det-Jacobian. Use Simplex(method='ilr'), which stores "
                "K - 1 numbers per slice and is a bijection."
            )
        work = self._last(x.to(compute_dtype(x.dtype)))
        logs = torch.log_softmax(helmert(work), -1)
        return to_dtype(logs.sum(-1) + 0.5 * math.log(work.shape[-1] + 1), x.dtype)

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        """With a bijective method (``"ilr"``, ``"stick_breaking"``), the first ``K - 1`` probabilities of each slice (the last is one
        minus their sum); with ``"softmax"``, all ``K``."""
        moved = self._last(y)
        return moved if self.method == "softmax" else moved[..., :-1]

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.simplex

    def _excess(self, y: Tensor) -> Tensor:
        y64 = y.double()
        size = y.shape[self.dim]
        negative = (-y64 - membership_tolerance(y.dtype, 1.0)).clamp_min(0.0).amax(self.dim, keepdim=True)
        off_sum = (y64.sum(self.dim, keepdim=True) - 1.0).abs() - self._sum_tolerance(y.dtype, size)
        return negative + off_sum.clamp_min(0.0)

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        row, label = self._slice_at(y, index)
        smallest = row.min().item()
        if smallest < 0:
            position = int(torch.argmin(row))
            return f"the slice {label} has entry {format_scalar(smallest)} at position {position}"
        tolerance = format_scalar(self._sum_tolerance(y.dtype, row.numel()))
        return (
            f"the slice {label} sums to {format_scalar(row.sum().item())} (must sum to 1 within {tolerance})"
        )

    def to_interior(self, y: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(y), y.double(), 0.0)
        projected = _project_onto_simplex(finite, self.dim)
        size = y.shape[self.dim]
        weight = max(INTERIOR_FRACTION, 8 * torch.finfo(y.dtype).eps)
        return ((1 - weight) * projected + weight / size).to(y.dtype)

    def project(self, y: Tensor) -> Tensor:
        r"""The Euclidean projection of each slice onto the simplex, by sorting (exact,
        :math:`O(K \log K)` per slice; computed in float32 for half-precision inputs):

        .. math::

            P(y)_i = \max(y_i - \tau, 0), \qquad \tau \text{ such that } \textstyle\sum_i P(y)_i = 1
        """
        return _project_onto_simplex(y.to(compute_dtype(y.dtype)), self.dim).to(y.dtype)

    def extra_repr(self) -> str:
        method = "" if self.method == "softmax" else f", method={self.method!r}"
        return super().extra_repr() + method + (", log=True" if self.log else "")

    @staticmethod
    def _sum_tolerance(dtype: torch.dtype, size: int) -> float:
        # The sum's error: rounding each entry to the stored dtype (at most half an ulp of the total)
        # plus the accumulated rounding of the softmax in its compute dtype, growing with the length.
        return 4 * torch.finfo(dtype).eps + 2 * size * torch.finfo(compute_dtype(dtype)).eps


def _stick_breaking_inverse(y: Tensor) -> Tensor:
    r"""The stick-breaking inverse along the last dimension: :math:`x_i = \log y_i - \log r_{i+1} +
    \log(K - 1 - i)` with :math:`r_i = \sum_{j \ge i} y_j` the stick left before piece ``i``, summed
    from the tail (torch's ``1 - cumsum(y)`` cancels, which costs it 1e-2 at ``K = 10^4``). Zeros are
    read as the smallest normal number."""
    tiny = torch.finfo(y.dtype).tiny
    pieces = y.clamp_min(tiny)
    rest = torch.flip(torch.cumsum(torch.flip(pieces, (-1,)), -1), (-1,))  # r_i, from the tail
    count = y.shape[-1] - 1
    return torch.log(pieces[..., :-1]) - torch.log(rest[..., 1:]) + _stick_offsets(count, y)


def _project_onto_simplex(values: Tensor, dim: int) -> Tensor:
    """Euclidean projection of each slice along ``dim`` onto the simplex (sort-based, exact)."""
    moved = values.movedim(dim, -1)
    # The projection ignores a common shift; removing the largest entry keeps huge values from
    # cancelling in the cumulative sums below.
    moved = moved - moved.amax(-1, keepdim=True)
    ordered, _ = torch.sort(moved, dim=-1, descending=True)
    excess_sums = ordered.cumsum(-1) - 1.0
    ranks = torch.arange(1, moved.shape[-1] + 1, dtype=moved.dtype, device=moved.device)
    # At least one entry is always in the support; rounding can hide it when values are huge.
    support = (ordered - excess_sums / ranks > 0).sum(-1, keepdim=True).clamp_min(1)
    shift = excess_sums.gather(-1, support - 1) / support
    return (moved - shift).clamp_min(0.0).movedim(-1, dim)
