"""Independent float64 references of every registered transform's documented map.

Each entry of :data:`REFERENCES` is the formula of ``docs/transforms.md`` (the spec) written plainly
with float64 torch operations. Nothing here calls the code under test: the only thing read from a
transform is its settings (bounds, ``dim``, ``method``, ``softness``, the orthogonal base, the
parts of a ``Compose``), and the only paramshape helper used is the registry's table, to find a
``Compose`` part's reference by its registered name.

A reference is called as ``REFERENCES[name](transform, x, dtype)``: ``x`` is the unconstrained
tensor in float64 (the exact values the transform under test received, in ``dtype``), ``dtype``
the dtype under test (the maps' floors, caps and matrix jitters depend on it), and the result is the
documented value in float64. ``REFERENCES[name].inverse(transform, y, dtype)`` is the documented
inverse where the docs give one in closed form (``None`` otherwise).

Engineers adding a transform add its reference here (a meta-test fails while a registered name
has none). Write it from the docs' formula, not from the implementation: the point is that a wrong
map and a matching wrong inverse still disagree with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Map = Callable[..., Tensor]

F64 = torch.float64


@dataclass(frozen=True)
class Reference:
    """A documented map (``forward``) and, where the docs state one, its inverse."""

    forward: Map
    inverse: Map | None = None
    #: A known accuracy limit of the algorithm, in ulps, as a function ``(transform, x, dtype)``
    #: (see ``paramshape.testing.reference.check_against_reference``); ``None`` for most maps.
    condition: Map | None = None

    def __call__(self, transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
        return self.forward(transform, x, dtype)


# ----------------------------------------------------------------------------------- helpers
def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) without overflow (torch's own softplus switches to x above 20, an error of 2e-9)."""
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))


def _softplus_inverse(y: Tensor) -> Tensor:
    """log(expm1(y)), written as y + log(1 - e^-y) so that it neither overflows nor cancels."""
    return y + torch.log(-torch.expm1(-y))


def _sigmoid(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1 / (1 + torch.exp(-x)), torch.exp(x) / (1 + torch.exp(x)))


def _bound(transform: object, name: str) -> Tensor:
    return getattr(transform, name).detach().to(F64)


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def _cap(y: Tensor, dtype: torch.dtype) -> Tensor:
    """The docs' "capped at the dtype's largest finite number"."""
    largest = torch.finfo(dtype).max
    return y.clamp(-largest, largest)


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _compute(dtype: torch.dtype) -> torch.dtype:
    """The dtype a transform computes in: float32 for the half dtypes (docs: Half precision)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _compute_eps(dtype: torch.dtype) -> float:
    return _eps(_compute(dtype))


def _move(x: Tensor, transform: object) -> Tensor:
    return x.movedim(getattr(transform, "dim", -1), -1)


def _back(y: Tensor, transform: object) -> Tensor:
    return y.movedim(-1, getattr(transform, "dim", -1))


def _helmert(size: int) -> Tensor:
    """V (size x size-1): column j (1-based) is (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1))."""
    basis = torch.zeros(size, size - 1, dtype=F64)
    for j in range(1, size):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= math.sqrt(j * (j + 1))
    return basis


def _jitter(dtype: torch.dtype, size: int) -> float:
    """c = (2n + 4) eps(compute dtype) + 2 sqrt(n) eps(dtype) (docs: PositiveDefinite)."""
    return (2 * size + 4) * _compute_eps(dtype) + 2 * math.sqrt(size) * _eps(dtype)


# ------------------------------------------------------------------------------ elementwise
def box(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """l + (h - l) sigma(4 a x / (h - l)), which is c + r tanh(a x / r) (centre c, half-width r, slope
    a) written so that it keeps its precision near l; one-sided, l + s softplus(a x / s) (softness
    s = 1/4), where a bound is infinite; a x if both are."""
    low, high = torch.broadcast_tensors(_bound(transform, "low"), _bound(transform, "high"))
    low, high, x = torch.broadcast_tensors(low, high, x)
    finite_low, finite_high = torch.isfinite(low), torch.isfinite(high)
    lo, hi = torch.where(finite_low, low, 0.0), torch.where(finite_high, high, 1.0)
    a = transform.slope
    both = lo + (hi - lo) * _sigmoid(4 * a * x / (hi - lo))
    above = lo + _above(a * x, "softplus", dtype)
    below = hi - _above(-a * x, "softplus", dtype)
    y = torch.where(
        finite_low & finite_high, both, torch.where(finite_low, above, torch.where(finite_high, below, a * x))
    )
    return _cap(y, dtype)


def box_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """r atanh((y - c) / r) / a, written as (log(y - l) - log(h - y)) r / (2a) so that it is exact
    near either bound."""
    low, high = torch.broadcast_tensors(_bound(transform, "low"), _bound(transform, "high"))
    low, high, y = torch.broadcast_tensors(low, high, y)
    finite_low, finite_high = torch.isfinite(low), torch.isfinite(high)
    lo, hi = torch.where(finite_low, low, 0.0), torch.where(finite_high, high, 1.0)
    a = transform.slope
    both = (torch.log(y - lo) - torch.log(hi - y)) * (hi - lo) / (4 * a)
    above = _above_inverse(y - lo, "softplus") / a
    below = -_above_inverse(hi - y, "softplus") / a
    return torch.where(
        finite_low & finite_high, both, torch.where(finite_low, above, torch.where(finite_high, below, y / a))
    )


def unit_interval(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """sigma(4 a x) = (1 + tanh(2 a x)) / 2."""
    return _sigmoid(4 * transform.slope * x)


def unit_interval_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return (torch.log(y) - torch.log1p(-y)) / (4 * transform.slope)


def _exp_capped(x: Tensor, dtype: torch.dtype) -> Tensor:
    """e^x with its argument capped at log(max) (1 - 8 eps) of the dtype, a number of the compute
    dtype (docs: Positive)."""
    finfo = torch.finfo(dtype)
    cap = torch.tensor(math.log(finfo.max) * (1 - 8 * finfo.eps), dtype=_compute(dtype)).item()
    return torch.exp(x.clamp_max(cap))


#: The one-sided maps' default softness (docs: GreaterThan): s softplus(x / s).
SOFTNESS = 0.25


def _above(x: Tensor, method: str, dtype: torch.dtype, softness: float = SOFTNESS) -> Tensor:
    """s softplus(x / s) or e^x, floored at the dtype's smallest normal number, capped at its largest."""
    grown = softness * _softplus(x / softness) if method == "softplus" else _exp_capped(x, dtype)
    return _cap(grown.clamp_min(_tiny(dtype)), dtype)


def _above_inverse(d: Tensor, method: str, softness: float = SOFTNESS) -> Tensor:
    return softness * _softplus_inverse(d / softness) if method == "softplus" else torch.log(d)


def positive(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """max(s softplus(x / s), t) (or e^x floored at t), t the smallest normal number of the dtype."""
    return _above(x, transform.method, dtype, transform.softness)


def positive_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return _above_inverse(y, transform.method, transform.softness)


def greater_than(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """l + s softplus(x / s) (l + e^x with method="exp"), capped at the dtype's largest number."""
    return _cap(_bound(transform, "low") + _above(x, transform.method, dtype, transform.softness), dtype)


def greater_than_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return _above_inverse(y - _bound(transform, "low"), transform.method, transform.softness)


def less_than(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """h - s softplus(-x / s) (h - e^-x with method="exp")."""
    return _cap(_bound(transform, "high") - _above(-x, transform.method, dtype, transform.softness), dtype)


def less_than_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return -_above_inverse(_bound(transform, "high") - y, transform.method, transform.softness)


def soft_clip(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """s = softplus((x - l) / (c w)), f = l + w (S - softplus(u - s)) / S, u = 1/c, S = softplus(u)."""
    low, high = _bound(transform, "low"), _bound(transform, "high")
    width, c = high - low, float(transform.softness)
    u = 1.0 / c
    big_s = _softplus(torch.tensor(u, dtype=F64))
    s = _softplus((x - low) / (c * width))
    return low + width * (big_s - _softplus(u - s)) / big_s


def soft_clip_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Solve the two softplus layers backwards: s = u - softplus^-1(S (h - y) / w) and
    x = l + c w softplus^-1(s), with the outer layer written from the lower bound as
    s = r - log(1 - e^-u expm1(r)), r = S (y - l) / w, where that is the more accurate side."""
    low, high = _bound(transform, "low"), _bound(transform, "high")
    width, c = high - low, float(transform.softness)
    u = 1.0 / c
    big_s = float(_softplus(torch.tensor(u, dtype=F64)))
    r = big_s * (y - low) / width
    from_low = r - torch.log1p(-math.exp(-u) * torch.expm1(r))
    from_high = u - _softplus_inverse(big_s * (high - y) / width)
    s = torch.where(y - low < high - y, from_low, from_high)
    return low + c * width * _softplus_inverse(s)


def affine(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """mu + sigma x, capped at the dtype's largest number."""
    return _cap(_bound(transform, "loc") + _bound(transform, "scale") * x, dtype)


def affine_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return (y - _bound(transform, "loc")) / _bound(transform, "scale")


# ----------------------------------------------------------------------------------- vectors
def simplex(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """softmax(x) along dim; with method="ilr", softmax(V x) with V the Helmert basis; with
    "stick_breaking", z_i = sigmoid(x_i - log(K - 1 - i)), y_i = z_i prod_{j<i} (1 - z_j), the last
    entry prod_j (1 - z_j), each factor written as exp(log-sigmoid) so that products of thousands of
    factors neither underflow early nor round 1 - z."""
    z = _move(x, transform)
    if transform.method == "stick_breaking":
        offsets = torch.log(torch.arange(z.shape[-1], 0, -1, dtype=F64))
        t = z - offsets
        log_z = -torch.log1p(torch.exp(-t.abs())) + t.clamp_max(0.0)  # log sigmoid(t)
        log_rest = -torch.log1p(torch.exp(-t.abs())) - t.clamp_min(0.0)  # log sigmoid(-t)
        logs = []
        remaining = torch.zeros_like(z[..., 0])
        for i in range(z.shape[-1]):
            logs.append(log_z[..., i] + remaining)
            remaining = remaining + log_rest[..., i]
        logs.append(remaining)
        return _back(torch.exp(torch.stack(logs, -1)), transform)
    if transform.method == "ilr":
        z = z @ _helmert(z.shape[-1] + 1).T
    shifted = z - z.amax(-1, keepdim=True)
    weights = torch.exp(shifted)
    return _back(weights / weights.sum(-1, keepdim=True), transform)


def simplex_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Centred logs (softmax) or V^T log y (ilr); an entry of 0 is read as the compute dtype's tiny."""
    logs = torch.log(_move(y, transform).clamp_min(_tiny(_compute(dtype))))
    if transform.method == "stick_breaking":
        # logit(z_i) + log(K - 1 - i), z_i = y_i / (y_i + ... + y_(K-1)): the stick left, from the tail.
        pieces = torch.exp(logs)
        count = pieces.shape[-1] - 1
        tails = torch.stack([pieces[..., i:].sum(-1) for i in range(count + 1)], -1)
        offsets = torch.log(torch.arange(count, 0, -1, dtype=F64))
        return _back(logs[..., :-1] - torch.log(tails[..., 1:]) + offsets, transform)
    if transform.method == "ilr":
        return _back(logs @ _helmert(logs.shape[-1]), transform)
    return _back(logs - logs.mean(-1, keepdim=True), transform)


def sum_to_zero(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """V x with V the Helmert basis (K x K-1); a slice whose largest entry would exceed half the
    dtype's largest number is scaled down to it."""
    z = _move(x, transform)
    y = z @ _helmert(z.shape[-1] + 1).T
    limit = torch.finfo(dtype).max / 2
    largest = y.abs().amax(-1, keepdim=True)
    return _back(y * (limit / largest.clamp_min(limit)), transform)


def sum_to_zero_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    z = _move(y, transform)
    return _back(z @ _helmert(z.shape[-1]), transform)


def ordered(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """y_0 = x_0, y_k = y_(k-1) + softplus(x_k), capped at the dtype's largest number."""
    z = _move(x, transform)
    steps = torch.cat([z[..., :1], _softplus(z[..., 1:]).clamp_min(_tiny(dtype))], -1)
    return _back(_cap(torch.cumsum(steps, -1), dtype), transform)


def ordered_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    z = _move(y, transform)
    steps = _softplus_inverse(torch.diff(z, dim=-1))
    return _back(torch.cat([z[..., :1], steps], -1), transform)


def positive_ordered(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """y_k = sum_(j <= k) softplus(x_j), the first term floored at the dtype's tiny."""
    z = _move(x, transform)
    steps = _softplus(z).clamp_min(_tiny(dtype))
    return _back(_cap(torch.cumsum(steps, -1), dtype), transform)


def positive_ordered_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    z = _move(y, transform)
    gaps = torch.diff(z, dim=-1, prepend=torch.zeros_like(z[..., :1]))
    return _back(_softplus_inverse(gaps), transform)


def unit_norm(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """x / ||x||; the zero vector maps to (1, ..., 1) / sqrt(K)."""
    z = _move(x, transform)
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    fallback = torch.full_like(z, 1 / math.sqrt(z.shape[-1]))
    return _back(torch.where(norm > 0, z / torch.where(norm > 0, norm, 1.0), fallback), transform)


def unit_norm_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return y.clone()


def _norm_dims(transform: object, ndim: int) -> tuple[int, ...]:
    dims = transform.dim if isinstance(transform.dim, tuple) else (transform.dim,)
    return tuple(sorted(d % ndim for d in dims))


def _radial(x: Tensor, dims: tuple[int, ...], low: float, high: float) -> Tensor:
    """x / ||x|| (low + w tanh(||x|| / w)), w = high - low; 0 maps to 0 for a ball and to
    low (1, ..., 1) / sqrt(K) for a shell (docs: MaxNorm and MinMaxNorm)."""
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    width = high - low
    safe = torch.where(norm > 0, norm, 1.0)
    value = x / safe * (low + width * torch.tanh(norm / width))
    size = math.prod(x.shape[d] for d in dims)
    return torch.where(norm > 0, value, low / math.sqrt(size))


def _radial_inverse(y: Tensor, dims: tuple[int, ...], low: float, high: float, dtype: torch.dtype) -> Tensor:
    """y / ||y|| w artanh((||y|| - low) / w), the fraction at most 1 - eps / 2 of the compute dtype
    (docs: the inverse of a value on the outer sphere steps half an ulp inside it)."""
    norm = torch.linalg.vector_norm(y, dim=dims, keepdim=True)
    width = high - low
    safe = torch.where(norm > 0, norm, 1.0)
    fraction = ((norm - low) / width).clamp_max(1 - _compute_eps(dtype) / 2)
    return torch.where(norm > 0, y / safe * width * torch.atanh(fraction), 0.0)


def max_norm(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """x / ||x|| r tanh(||x|| / r) per slice over dim."""
    return _radial(x, _norm_dims(transform, x.dim()), 0.0, transform.max_value)


def max_norm_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return _radial_inverse(y, _norm_dims(transform, y.dim()), 0.0, transform.max_value, dtype)


def min_max_norm(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """x / ||x|| (a + (b - a) tanh(||x|| / (b - a))) per slice over dim."""
    return _radial(x, _norm_dims(transform, x.dim()), transform.min_value, transform.max_value)


def min_max_norm_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return _radial_inverse(y, _norm_dims(transform, y.dim()), transform.min_value, transform.max_value, dtype)


# ---------------------------------------------------------------------------------- matrices
def skew_symmetric(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """tril(x, -1) - tril(x, -1)^T."""
    return x.tril(-1) - x.tril(-1).mT


def skew_symmetric_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return ((y - y.mT) / 2).tril(-1)


def positive_semidefinite(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """B B^T with B = tril(x) (or x, n x r, with a rank), B scaled down where its longest squared
    row would exceed min(max / 4, sqrt(max of the compute dtype)) (as PositiveDefinite)."""
    factor = x.tril() if transform.rank is None else x
    limit = min(torch.finfo(dtype).max / 4, torch.finfo(_compute(dtype)).max ** 0.5)
    longest = (factor * factor).sum(-1).amax(-1)[..., None, None]
    factor = factor * (limit / longest.clamp_min(limit)).sqrt()
    return factor @ factor.mT


def low_rank(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """A B^T for x = [A; B] (A the value's m rows, B the n columns, each with rank columns), scaled
    down where its largest entry would exceed min(max / 2, sqrt(max of the compute dtype))."""
    rows = transform._rows  # the value's row count m, which the transform learnt from its shape
    product = x[..., :rows, :] @ x[..., rows:, :].mT
    largest = product.abs().amax((-2, -1), keepdim=True)
    limit = min(torch.finfo(dtype).max / 2, torch.finfo(_compute(dtype)).max ** 0.5)
    return product * (limit / largest.clamp_min(limit))


def positive_determinant(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """B e^X (B = I before any assignment), X scaled down to Frobenius norm log(1 / eps) / 4 of the
    dtype where it is larger."""
    limit = 0.25 * math.log(1 / torch.finfo(dtype).eps)
    norm = torch.linalg.matrix_norm(x)[..., None, None]
    value = torch.matrix_exp(x / (norm / limit).clamp_min(1.0))
    base = transform.base.detach().to(F64)
    return base @ value if base.numel() else value


def special_linear(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Y / det(Y)^(1/n), Y = B e^(X - tr(X)/n I) with the exponent capped as positive_determinant's
    (B = I before any assignment); B itself where X is exactly 0."""
    size = x.shape[-1]
    traceless = x - torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)[..., None, None] / size * torch.eye(
        size, dtype=F64
    )
    limit = 0.25 * math.log(1 / torch.finfo(dtype).eps)
    norm = torch.linalg.matrix_norm(traceless)[..., None, None]
    value = torch.matrix_exp(traceless / (norm / limit).clamp_min(1.0))
    base = transform.base.detach().to(F64)
    if base.numel():
        value = base @ value
    value = value / torch.linalg.det(value)[..., None, None] ** (1 / size)
    if base.numel():
        value = torch.where((x == 0).all(-1).all(-1)[..., None, None], base, value)
    return value


def special_linear_condition(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """The Frobenius norm of the capped traceless exponent plus the value's condition number, times
    its largest entry, per matrix: the exponential loses about norm ulps of the value's scale (as
    Orthogonal's), and the determinant it is divided by about cond ulps (docs: SpecialLinear)."""
    size = x.shape[-1]
    traceless = x - torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)[..., None, None] / size * torch.eye(
        size, dtype=F64
    )
    limit = 0.25 * math.log(1 / torch.finfo(dtype).eps)
    norm = torch.linalg.matrix_norm(traceless).clamp_max(limit)[..., None, None]
    value = special_linear(transform, x, dtype)
    magnitude = value.abs().amax((-2, -1), keepdim=True)
    return ((norm + torch.linalg.cond(value)[..., None, None]) * magnitude).expand(x.shape)


def doubly_stochastic(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Sinkhorn on K = exp(x): columns normalised first, then max_iterations rounds of rows then
    columns, stopped early once every row sum is within matrix_tolerance / 4 of 1 (checked after
    every 10th round, as documented); then rows corrected by (1 - row sums) / n and, where an entry
    is negative, mixed with the uniform matrix just enough to lift the lowest entry to 0."""
    size = x.shape[-1]

    def log_normalise(logs: Tensor, dim: int) -> Tensor:
        # logs - log(sum(exp(logs))), with the largest term taken out so that nothing underflows.
        top = logs.amax(dim, keepdim=True)
        return logs - top - torch.log(torch.exp(logs - top).sum(dim, keepdim=True))

    logs = log_normalise(x, -2)
    compute = torch.finfo(_compute(dtype)).eps
    tolerance = (10 * size * compute + 4 * math.sqrt(size) * torch.finfo(dtype).eps) / 4
    for step in range(transform.max_iterations):
        logs = log_normalise(log_normalise(logs, -1), -2)
        if step % 10 == 9 and bool(((torch.exp(logs).sum(-1) - 1).abs() <= tolerance).all()):
            break
    p = torch.exp(logs)
    p = p + (1 - p.sum(-1, keepdim=True)) / size
    lowest = p.amin((-2, -1), keepdim=True)
    t = (-lowest).clamp_min(0.0) / (1 / size - lowest.clamp_max(0.0))
    return p * (1 - t) + t / size


def doubly_stochastic_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return torch.log(y.clamp_min(torch.finfo(dtype).tiny))


def spectral_bound(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """X c tanh(sigma / c) / sigma, sigma the largest singular value (here the square root of the
    largest eigenvalue of X^T X); with conv=True, of the kernel flattened to (out, in * prod(k)) and
    c / sqrt(prod(k))."""
    matrices = x.flatten(1) if transform.conv else x
    bound = transform.bound / math.sqrt(math.prod(x.shape[2:])) if transform.conv else transform.bound
    sigma = torch.linalg.eigvalsh(matrices.mT @ matrices)[..., -1:].clamp_min(0.0).sqrt()[..., None]
    safe = torch.where(sigma > 0, sigma, 1.0)
    value = torch.where(sigma > 0, matrices * bound * torch.tanh(sigma / bound) / safe, matrices)
    return value.reshape(x.shape)


def spectral_bound_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    matrices = y.flatten(1) if transform.conv else y
    bound = transform.bound / math.sqrt(math.prod(y.shape[2:])) if transform.conv else transform.bound
    sigma = torch.linalg.eigvalsh(matrices.mT @ matrices)[..., -1:].clamp_min(0.0).sqrt()[..., None]
    safe = torch.where(sigma > 0, sigma, 1.0)
    fraction = (sigma / bound).clamp_max(1 - _compute_eps(dtype) / 2)  # half an ulp inside the bound
    value = torch.where(sigma > 0, matrices * bound * torch.atanh(fraction) / safe, matrices)
    return value.reshape(y.shape)


def symmetric(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """tril(x) + tril(x, -1)^T."""
    return x.tril() + x.tril(-1).mT


def symmetric_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return ((y + y.mT) / 2).tril()


def _diag(x: Tensor) -> Tensor:
    return x.diagonal(dim1=-2, dim2=-1)


def _with_diag(strict: Tensor, diagonal: Tensor) -> Tensor:
    return strict.tril(-1) + torch.diag_embed(diagonal)


def lower_cholesky(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Strict lower triangle of x, max(softplus(x_ii), t) on the diagonal, 0 above."""
    return _with_diag(x, _above(_diag(x), "softplus", dtype, softness=1.0))


def lower_cholesky_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return _with_diag(y, _above_inverse(_diag(y), "softplus", softness=1.0))


def positive_definite(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """L L^T + c diag(L L^T); L strictly lower x, diagonal softplus(x_ii) + sqrt(t); L scaled down
    where its longest squared row would exceed min(max / 4, sqrt(max of the compute dtype))."""
    factor = _with_diag(x, _softplus(_diag(x)) + math.sqrt(_tiny(dtype)))
    limit = min(torch.finfo(dtype).max / 4, torch.finfo(_compute(dtype)).max ** 0.5)
    longest = (factor * factor).sum(-1).amax(-1)[..., None, None]
    factor = factor * (limit / longest.clamp_min(limit)).sqrt()
    product = factor @ factor.mT
    return product + _jitter(dtype, x.shape[-1]) * torch.diag_embed(_diag(product))


def positive_definite_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """The Cholesky factor of A - c / (1 + c) diag(A), its diagonal through softplus^-1(L_ii - s)."""
    c = _jitter(dtype, y.shape[-1])
    factor = torch.linalg.cholesky(y - c / (1 + c) * torch.diag_embed(_diag(y)))
    return _with_diag(factor, _softplus_inverse(_diag(factor) - math.sqrt(_tiny(dtype))))


def corr_cholesky(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """Row i: (x_i0, ..., x_i,i-1, 1, 0, ..., 0) / sqrt(1 + sum_(j<i) x_ij^2)."""
    rows = x.tril(-1) + torch.eye(x.shape[-1], dtype=F64)
    return rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True)


def corr_cholesky_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    return (y / _diag(y)[..., :, None]).tril(-1)


def corr_matrix(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """(L L^T + c I) / (1 + c), L = CorrCholesky(x)."""
    factor = corr_cholesky(transform, x, dtype)
    c = _jitter(dtype, x.shape[-1])
    return (factor @ factor.mT + c * torch.eye(x.shape[-1], dtype=F64)) / (1 + c)


def corr_matrix_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    c = _jitter(dtype, y.shape[-1])
    factor = torch.linalg.cholesky(y * (1 + c) - c * torch.eye(y.shape[-1], dtype=F64))
    return corr_cholesky_inverse(transform, factor, dtype)


#: The documented ratio at which ``Orthogonal(method="auto")`` takes the thin map: the longer side at
#: least 4 times the shorter.
_THIN_RATIO = 4


def _thin(transform: object, shape: torch.Size) -> bool:
    rows, cols = max(shape[-2:]), min(shape[-2:])
    return transform.method == "thin" or (transform.method == "auto" and rows >= _THIN_RATIO * cols)


def _thin_skew(transform: object, tall: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The thin map's n x n skew matrix A = Z B^T - B Z^T, for Z the stored tensor with its Frobenius
    norm capped at 54, float32's eps ** -1/4, in every dtype (the documented cap), and its base B (the
    first k columns of I before any assignment)."""
    rows, cols = tall.shape[-2:]
    limit = torch.finfo(torch.float32).eps ** -0.25
    norm = torch.linalg.matrix_norm(tall)[..., None, None]
    z = tall / (norm / limit).clamp_min(1.0)
    base = transform.base.detach().to(F64)
    if not base.numel():
        base = torch.eye(rows, cols, dtype=F64).expand(tall.shape)
    elif base.shape[-2:] != (rows, cols):
        base = base.mT
    return z @ base.mT - base @ z.mT, base


def orthogonal(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """B phi(skew(X)), skew(X) = (X - X^T) / 2 with X padded by zero columns to square, its
    Frobenius norm capped at 1 / sqrt(eps(compute dtype)); phi = matrix exponential or Cayley map;
    the first k columns (rows for a wide matrix, through the transpose). The thin map (docs:
    Orthogonal, ``method="thin"``, and ``"auto"`` at 4:1): e^(Z B^T - B Z^T) B, formed here as the
    plain n x n exponential that the code under test never forms."""
    wide = x.shape[-2] < x.shape[-1]
    tall = x.mT if wide else x
    rows, cols = tall.shape[-2:]
    if _thin(transform, x.shape):
        skew, base = _thin_skew(transform, tall, dtype)
        value = torch.matrix_exp(skew) @ base
        return value.mT if wide else value
    square = torch.cat([tall, tall.new_zeros(*tall.shape[:-1], rows - cols)], -1)
    skew = (square - square.mT) / 2
    limit = _compute_eps(dtype) ** -0.5
    norm = torch.linalg.matrix_norm(skew)[..., None, None]
    skew = skew / (norm / limit).clamp_min(1.0)
    if transform.method == "cayley":
        eye = torch.eye(rows, dtype=F64)
        rotation = torch.linalg.solve(eye - skew, eye + skew)
    else:
        rotation = torch.matrix_exp(skew)
    base = transform.base.detach().to(F64)
    value = (base @ rotation if base.numel() else rotation)[..., :cols]
    return value.mT if wide else value


def orthogonal_condition(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """The Frobenius norm of the (capped) skew matrix, per matrix: the scaling and squaring of a
    matrix exponential (and the solve of a Cayley map) lose about that many ulps (docs: Orthogonal)."""
    wide = x.shape[-2] < x.shape[-1]
    tall = x.mT if wide else x
    rows, cols = tall.shape[-2:]
    if _thin(transform, x.shape):
        norm = torch.linalg.matrix_norm(_thin_skew(transform, tall, dtype)[0])
        return norm[..., None, None].expand(x.shape)
    square = torch.cat([tall, tall.new_zeros(*tall.shape[:-1], rows - cols)], -1)
    norm = torch.linalg.matrix_norm((square - square.mT) / 2)
    return norm.clamp_max(_compute_eps(dtype) ** -0.5)[..., None, None].expand(x.shape)


def hermitian(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """(X + X^H) / 2 (X^T for a real tensor); complex128 for a complex ``x``."""
    return (x + x.mH) / 2


def hermitian_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """The value itself (a fixed point of the map)."""
    return y


def unitary(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """B phi(skewh(X)), skewh(X) = (X - X^H) / 2 with X padded by zero columns to square, its
    Frobenius norm capped at 1 / sqrt(eps) of the real dtype; phi = matrix exponential or Cayley map
    (in complex128); the first k columns (rows for a wide matrix, through the conjugate transpose)."""
    x = x.to(torch.complex128)
    wide = x.shape[-2] < x.shape[-1]
    tall = x.mH if wide else x
    rows, cols = tall.shape[-2:]
    square = torch.cat([tall, tall.new_zeros(*tall.shape[:-1], rows - cols)], -1)
    skew = (square - square.mH) / 2
    limit = _compute_eps(dtype.to_real() if dtype.is_complex else dtype) ** -0.5
    norm = torch.linalg.matrix_norm(skew)[..., None, None]
    skew = skew / (norm / limit).clamp_min(1.0)
    eye = torch.eye(rows, dtype=torch.complex128)
    if transform.method == "cayley":
        rotation = torch.linalg.solve(eye - skew, eye + skew)
    else:
        rotation = torch.matrix_exp(skew)
    base = transform.base.detach().to(torch.complex128)
    value = (base @ rotation if base.numel() else rotation)[..., :cols]
    return value.mH if wide else value


# ------------------------------------------------------------------------------------ compose
def _name_of(part: object) -> str:
    from paramshape.transforms.registry import available, registered_class

    for name in available():
        if type(part) is registered_class(name):
            return name
    raise KeyError(f"{type(part).__name__} is not registered; give Compose parts a reference")


def compose(transform: object, x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """The parts' references one after the other; each intermediate value is rounded to the dtype,
    as the parts hand tensors of the dtype to each other."""
    for part in transform.parts:
        x = REFERENCES[_name_of(part)](part, x, dtype).to(dtype).to(F64)
    return x


def compose_inverse(transform: object, y: Tensor, dtype: torch.dtype = F64) -> Tensor:
    for part in reversed(list(transform.parts)):
        inverse = REFERENCES[_name_of(part)].inverse
        if inverse is None:
            raise KeyError(f"{type(part).__name__} has no reference inverse")
        y = inverse(part, y, dtype)
    return y


REFERENCES: dict[str, Reference] = {
    "affine": Reference(affine, affine_inverse),
    "box": Reference(box, box_inverse),
    "compose": Reference(compose, compose_inverse),
    "corr_cholesky": Reference(corr_cholesky, corr_cholesky_inverse),
    "corr_matrix": Reference(corr_matrix, corr_matrix_inverse),
    # Orthogonal's map and base (the Grassmannian stores a representative basis the same way).
    "grassmannian": Reference(orthogonal, None, orthogonal_condition),
    "doubly_stochastic": Reference(doubly_stochastic, doubly_stochastic_inverse),
    "greater_than": Reference(greater_than, greater_than_inverse),
    "hermitian": Reference(hermitian, hermitian_inverse),
    "less_than": Reference(less_than, less_than_inverse),
    "lower_cholesky": Reference(lower_cholesky, lower_cholesky_inverse),
    # The factors are defined up to an invertible r x r matrix (and the SVD's signs): no closed-form
    # inverse to compare with; the contract checks the round trip.
    "low_rank": Reference(low_rank, None),
    "max_norm": Reference(max_norm, max_norm_inverse),
    "min_max_norm": Reference(min_max_norm, min_max_norm_inverse),
    "ordered": Reference(ordered, ordered_inverse),
    # The inverse sets the base to the value and stores zeros: no closed form to compare with.
    "orthogonal": Reference(orthogonal, None, orthogonal_condition),
    "positive": Reference(positive, positive_inverse),
    "positive_definite": Reference(positive_definite, positive_definite_inverse),
    # The inverse sets the base to the value and stores zeros: no closed form to compare with.
    "positive_determinant": Reference(positive_determinant, None),
    "positive_ordered": Reference(positive_ordered, positive_ordered_inverse),
    # The stored factor is defined up to rotation (and, for a singular value, a Cholesky factor is
    # not unique): no closed-form inverse to compare with; the contract checks the round trip.
    "positive_semidefinite": Reference(positive_semidefinite, None),
    "skew_symmetric": Reference(skew_symmetric, skew_symmetric_inverse),
    # The inverse sets the base to the value and stores zeros: no closed form to compare with.
    "special_linear": Reference(special_linear, None, special_linear_condition),
    "spectral_bound": Reference(spectral_bound, spectral_bound_inverse),
    "simplex": Reference(simplex, simplex_inverse),
    "soft_clip": Reference(soft_clip, soft_clip_inverse),
    "sum_to_zero": Reference(sum_to_zero, sum_to_zero_inverse),
    "symmetric": Reference(symmetric, symmetric_inverse),
    "unit_interval": Reference(unit_interval, unit_interval_inverse),
    "unit_norm": Reference(unit_norm, unit_norm_inverse),
    # The inverse sets the base to the value and stores zeros: no closed form to compare with.
    "unitary": Reference(unitary, None),
}
