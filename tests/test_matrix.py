"""Matrix transforms beyond the shared contract: shapes, torch's own constraint checks on every
random draw, Cholesky factorisations that never fail, the correlation inverse against torch's, values
kept on assignment, log-det-Jacobians in torch's coordinates, and the error messages."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.distributions import constraints, transform_to
from torch.distributions.transforms import CorrCholeskyTransform

import paramshape as ps
from paramshape.testing import autograd_log_abs_det_jacobian
from paramshape.transforms.matrix.base import cholesky_jitter, matrix_tolerance

SQUARE = [ps.LowerCholesky, ps.PositiveDefinite, ps.CorrCholesky, ps.CorrMatrix, ps.Symmetric]
ALL = [*SQUARE, ps.Orthogonal]
BIJECTIVE = SQUARE


class Holder(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


def deviation(q: torch.Tensor) -> torch.Tensor:
    """Spectral norm of Q^T Q - I per matrix, in float64."""
    q = q.double()
    gram = q.mT @ q - torch.eye(q.shape[-1], dtype=torch.float64)
    return torch.linalg.matrix_norm(gram, ord=2)


def random_orthogonal(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(*shape, dtype=torch.float64))
    return (q * torch.sign(r.diagonal(dim1=-2, dim2=-1))[..., None, :]).to(dtype)


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_vectors_are_refused_with_a_clear_message(cls):
    with pytest.raises(ps.ShapeMismatchError, match=r"acts on matrices .* shape \(5,\)"):
        ps.constrain(nn.Linear(4, 5), "bias", cls(), init="sample")


@pytest.mark.parametrize("cls", SQUARE, ids=lambda c: c.__name__)
def test_square_matrices_are_required(cls):
    with pytest.raises(ps.ShapeMismatchError, match=r"needs square matrices .* 5 x 4"):
        ps.constrain(nn.Linear(4, 5), "weight", cls(), init="sample")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_leading_dimensions_are_a_batch(cls):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    batched = cls().double()(x)
    one_by_one = torch.stack([torch.stack([cls().double()(m) for m in row]) for row in x])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- torch's checks on every draw
TORCH_CONSTRAINT = {
    ps.LowerCholesky: constraints.lower_cholesky,
    ps.PositiveDefinite: constraints.positive_definite,
    ps.CorrCholesky: constraints.corr_cholesky,
    ps.CorrMatrix: constraints.positive_definite,
    ps.Symmetric: constraints.symmetric,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("size", [2, 5, 12])
@pytest.mark.parametrize("cls", SQUARE, ids=lambda c: c.__name__)
def test_every_random_draw_passes_torchs_constraint_check(cls, size, dtype):
    """Scales from 0.1 to 30: at 30 softplus diagonals range from 1e-40 to 90 and correlations sit
    within 1e-10 of 1, where unguarded maps produce matrices torch's checks reject."""
    transform = cls().to(dtype)
    check = TORCH_CONSTRAINT[cls]
    for scale in (0.1, 1.0, 5.0, 30.0):
        y = transform(scale * torch.randn(400, size, size, dtype=dtype))
        assert check.check(y).all(), f"{cls.__name__} at scale {scale}"
        assert transform.contains(y).all()
        if cls is ps.CorrMatrix:
            assert torch.equal(y.diagonal(dim1=-2, dim2=-1), torch.ones(400, size, dtype=dtype))
            assert ps.CorrMatrix.codomain.fget(transform).check(y).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(5, 5), (12, 12), (7, 3), (3, 7)])
def test_every_orthogonal_draw_is_orthonormal(shape, dtype):
    transform = ps.Orthogonal().to(dtype)
    tolerance = matrix_tolerance(dtype, max(shape))
    for scale in (0.1, 1.0, 5.0, 30.0, 1e4):
        q = transform(scale * torch.randn(200, *shape, dtype=dtype))
        tall = q.mT if shape[0] < shape[1] else q
        assert (deviation(tall) <= tolerance).all(), f"scale {scale}"
        assert transform.codomain.check(q).all()


# ------------------------------------------------------------------- no Cholesky failures
def test_positive_definite_factorises_where_torchs_transform_does_not():
    """torch's transform_to(positive_definite), L L^T with an exp diagonal, fails Cholesky on most
    float32 draws of 16 x 16 matrices at unconstrained scale 3 (47% measured); ours on none."""
    x = 3 * torch.randn(2000, 16, 16)
    torch_values = transform_to(constraints.positive_definite)(x)
    torch_failures = (torch.linalg.cholesky_ex(torch_values).info != 0).float().mean()
    ours = ps.PositiveDefinite()(x)
    assert torch_failures > 0.3
    assert (torch.linalg.cholesky_ex(ours).info == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_positive_definite_factorises_nearly_parallel_rows_and_vanishing_diagonals(dtype):
    shared = torch.randn(300, 1, 8, dtype=dtype).expand(300, 8, 8)
    x = shared + 1e-6 * torch.randn(300, 8, 8, dtype=dtype)
    x = x.tril(-1) - 100 * torch.eye(8, dtype=dtype)  # softplus(-100) is 4e-44: below float32's range
    for candidate in (x, 1e3 * x, torch.full_like(x, -1e4)):
        values = ps.PositiveDefinite().to(dtype)(candidate)
        assert (torch.linalg.cholesky_ex(values).info == 0).all()


def test_positive_definite_stays_factorisable_through_training():
    module = Holder(torch.eye(6))
    ps.constrain(module, "value", ps.PositiveDefinite())
    optimizer = torch.optim.Adam(module.parameters(), lr=0.5)
    target = torch.randn(6, 6)
    for _ in range(200):
        optimizer.zero_grad()
        # Drives the matrix towards the singular, indefinite target's symmetric part.
        (module.value - (target + target.mT)).square().sum().backward()
        optimizer.step()
        assert torch.linalg.cholesky_ex(module.value.detach()).info == 0


def test_half_precision_values_factorise_in_float32():
    for dtype in (torch.float16, torch.bfloat16):
        values = ps.PositiveDefinite().to(dtype)(5 * torch.randn(500, 6, 6).to(dtype))
        assert (torch.linalg.cholesky_ex(values.float()).info == 0).all()
        corr = ps.CorrMatrix().to(dtype)(5 * torch.randn(500, 6, 6).to(dtype))
        assert (torch.linalg.cholesky_ex(corr.float()).info == 0).all()


# ------------------------------------------------------------------------ values are kept
@pytest.mark.parametrize(("dtype", "condition"), [(torch.float64, 1e12), (torch.float32, 1e5)])
def test_positive_definite_keeps_a_positive_definite_value(dtype, condition):
    """Condition numbers up to about 1 / c (4e5 for 6 x 6 in float32) are kept to an ulp or so of
    the largest entry: the jitter is divided out exactly."""
    q = random_orthogonal(5, 6, 6)
    spectrum = torch.logspace(0, math.log10(condition), 6, dtype=torch.float64)
    value = ((q * spectrum) @ q.mT).to(dtype)
    value = (value + value.mT) / 2
    module = Holder(value)
    ps.constrain(module, "value", ps.PositiveDefinite())  # init="keep"
    error = (module.value.detach().double() - value.double()).abs().amax((-2, -1))
    assert (error <= 8 * torch.finfo(dtype).eps * value.double().abs().amax((-2, -1))).all()
    assert torch.linalg.cholesky_ex(module.value.detach()).info.eq(0).all()


def test_positive_definite_is_indifferent_to_the_variables_scales():
    """The jitter is relative to each variance: variances of 1e-20 and 1e20 are both kept to
    about float64's precision, where a jitter relative to the largest one would erase the smaller."""
    scales = torch.tensor([1e-10, 1.0, 1e10], dtype=torch.float64)
    correlation = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]], dtype=torch.float64)
    value = scales[:, None] * correlation * scales[None, :]
    transform = ps.PositiveDefinite().double()
    kept = transform(transform.right_inverse(value))
    relative = ((kept - value) / value).abs()
    assert relative.max() < 1e-13


def test_positive_definite_stores_a_singular_value_as_a_nearby_definite_one():
    v = torch.randn(5, 1, dtype=torch.float64)
    singular = v @ v.mT  # rank one: on the boundary of the closed set, accepted
    transform = ps.PositiveDefinite().double()
    assert transform.contains(singular).all()
    stored = transform(transform.right_inverse(singular))
    assert torch.isfinite(stored).all()
    assert torch.linalg.cholesky_ex(stored).info == 0
    c = cholesky_jitter(torch.float64, 5)
    assert ((stored - singular).abs() <= 4 * c * singular.diagonal().max()).all()


@pytest.mark.parametrize(
    "value",
    [
        torch.eye(4),
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]),
        random_orthogonal(6, 6, dtype=torch.float32),
        random_orthogonal(3, 5, 5, dtype=torch.float32),
        random_orthogonal(7, 3, dtype=torch.float32),
        random_orthogonal(7, 3, dtype=torch.float32).mT.contiguous(),
    ],
    ids=["identity", "signed-permutation", "random", "batch", "tall", "wide"],
)
def test_orthogonal_keeps_an_orthogonal_value_bit_for_bit(value):
    module = Holder(value)
    parameter = module.value
    ps.constrain(module, "value", ps.Orthogonal())  # init="keep"
    assert torch.equal(module.value.detach(), value)
    assert module.parametrizations.value.original is parameter  # the same Parameter, now zeros
    assert torch.equal(parameter.detach(), torch.zeros_like(value))


def test_orthogonal_assignment_refuses_a_non_orthogonal_value():
    module = Holder(random_orthogonal(3, 4, 4, dtype=torch.float32))
    ps.constrain(module, "value", ps.Orthogonal())
    before = module.value.detach().clone()
    bad = before.clone()
    bad[2] *= 1.3  # singular values 1.3: |Q^T Q - I| = 0.69
    with pytest.raises(ps.InfeasibleValueError) as caught:
        module.value = bad
    message = str(caught.value)
    assert "'value' of Holder (shape (3, 4, 4), float32): 1 of 3 matrices lie outside Orthogonal()" in message
    assert re.search(r"worst: the matrix at \[2\] has \|Q\^T Q - I\| = 0\.69\d* \(spectral norm", message)
    assert torch.equal(module.value.detach(), before)  # nothing was stored


def test_orthogonal_project_takes_the_polar_factor():
    layer = nn.Linear(5, 5)
    weight = layer.weight.detach().double().clone()
    with pytest.warns(ps.ParamshapeWarning, match="moved 1 of 1 matrices"):
        ps.constrain(layer, "weight", ps.Orthogonal(), init="project")
    u, _, vh = torch.linalg.svd(weight)
    torch.testing.assert_close(layer.weight.detach().double(), u @ vh, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["matrix_exp", "cayley"])
@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8), (2, 4, 4)])
def test_orthogonal_training_stays_on_the_manifold(shape, method):
    module = Holder(torch.zeros(shape))
    ps.constrain(module, "value", ps.Orthogonal(method=method), init="sample")
    target = torch.randn(shape)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    start = (module.value - target).square().sum().item()
    for _ in range(200):
        optimizer.zero_grad()
        (module.value - target).square().sum().backward()
        optimizer.step()
    q = module.value.detach()
    tall = q.mT if shape[-2] < shape[-1] else q
    assert (deviation(tall) <= matrix_tolerance(torch.float32, max(shape[-2:]))).all()
    assert (module.value - target).square().sum().item() < start  # it learned


def test_orthogonal_base_travels_in_the_state_dict():
    source = Holder(random_orthogonal(2, 5, 3, dtype=torch.float32))
    ps.constrain(source, "value", ps.Orthogonal())
    fresh = ps.Orthogonal()
    fresh.load_state_dict(ps.constraints(source)["value"].state_dict())  # an empty base is resized
    stored = source.parametrizations.value.original.detach()
    assert torch.equal(fresh(stored), source.value.detach())


def test_orthogonal_method_is_validated():
    with pytest.raises(ps.SpecError, match="method must be one of"):
        ps.Orthogonal(method="householder")
    assert repr(ps.resolve("orthogonal(method='cayley')")) == "Orthogonal(method='cayley')"


# --------------------------------------------------------------------- correlation inverse
def test_corr_cholesky_inverse_is_finite_where_torchs_is_not():
    """At unconstrained scale 5, torch's tanh-based inverse is non-finite for about 38% of float32
    draws of 4 x 4 factors; ours is finite for all of the same factors and maps them back."""
    torch_transform = CorrCholeskyTransform()
    factors = torch_transform(5 * torch.randn(5000, 6))
    torch_inverse = torch_transform.inv(factors)
    nonfinite = (~torch.isfinite(torch_inverse).all(-1)).float().mean()
    assert nonfinite > 0.25
    ours = ps.CorrCholesky()
    x = ours.right_inverse(factors)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(ours(x), factors, rtol=0, atol=4e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_corr_cholesky_round_trips_at_every_scale(dtype):
    transform = ps.CorrCholesky().to(dtype)
    for scale in (1.0, 5.0, 30.0, 1e3):
        factors = transform((scale * torch.randn(500, 5, 5)).to(dtype))
        x = transform.right_inverse(factors)
        assert torch.isfinite(x).all()
        error = (transform(x).double() - factors.double()).abs().max()
        assert error <= 8 * 5 * torch.finfo(dtype).eps, f"scale {scale}: {error}"


def test_corr_matrix_keeps_a_correlation_matrix():
    corr = torch.tensor([[1.0, 0.9, -0.3], [0.9, 1.0, -0.1], [-0.3, -0.1, 1.0]], dtype=torch.float64)
    module = Holder(corr)
    ps.constrain(module, "value", "corr_matrix")
    torch.testing.assert_close(module.value.detach(), corr, rtol=0, atol=1e-14)
    assert torch.equal(module.value.detach().diagonal(), torch.ones(3, dtype=torch.float64))


def test_corr_matrix_project_turns_a_covariance_into_its_correlation():
    covariance = torch.tensor([[4.0, 1.0], [1.0, 9.0]])
    module = Holder(covariance)
    with pytest.warns(ps.ParamshapeWarning):
        ps.constrain(module, "value", ps.CorrMatrix(), init="project")
    torch.testing.assert_close(module.value.detach(), torch.tensor([[1.0, 1 / 6], [1 / 6, 1.0]]))


# ------------------------------------------------------------------------ log-det-Jacobian
@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("cls", BIJECTIVE, ids=lambda c: c.__name__)
def test_log_abs_det_jacobian_matches_autograd(cls, size):
    transform = cls().double()
    if cls.domain_offset == -1 and size == 1:
        # A 1 x 1 correlation factor is the constant [[1]]: no coordinates, log-det 0.
        x = torch.randn(3, 1, 1, dtype=torch.float64)
        assert torch.equal(
            transform.log_abs_det_jacobian(x, transform(x)), torch.zeros(3, dtype=torch.float64)
        )
        return
    for scale in (0.3, 3.0):
        x = scale * torch.randn(3, size, size, dtype=torch.float64)
        ldj = transform.log_abs_det_jacobian(x, transform(x))
        assert ldj.shape == (3,)
        torch.testing.assert_close(ldj, autograd_log_abs_det_jacobian(transform, x), rtol=1e-11, atol=1e-11)


def test_corr_cholesky_log_det_uses_torchs_coordinates():
    """Going from torch's unconstrained vector to ours through the shared factor, the Jacobian's
    log-determinant is torch's log-det minus ours: both measure the factor's strictly lower entries,
    so an LKJCholesky prior means the same under either parametrisation."""
    torch_transform = CorrCholeskyTransform()
    ours = ps.CorrCholesky().double()
    rows, cols = torch.tril_indices(4, 4, -1)

    def ours_from_torch(v: torch.Tensor) -> torch.Tensor:
        return ours.inverse(torch_transform(v))[rows, cols]

    for _ in range(5):
        v = torch.randn(6, dtype=torch.float64)
        factor = torch_transform(v)
        jacobian = torch.autograd.functional.jacobian(ours_from_torch, v)
        x = ours.inverse(factor)
        expected = torch_transform.log_abs_det_jacobian(v, factor) - ours.log_abs_det_jacobian(x, factor)
        torch.testing.assert_close(torch.linalg.slogdet(jacobian).logabsdet, expected, rtol=1e-10, atol=1e-10)


def test_orthogonal_has_no_log_abs_det_jacobian():
    transform = ps.Orthogonal()
    assert not transform.bijective
    x = torch.zeros(3, 3)
    with pytest.raises(NotImplementedError, match="not a bijection"):
        transform.log_abs_det_jacobian(x, transform(x))


@pytest.mark.parametrize("cls", BIJECTIVE, ids=lambda c: c.__name__)
def test_ignored_entries_get_no_gradient(cls):
    """The stored tensor's entries outside the coordinates are dead: the forward map ignores them."""
    x = torch.randn(5, 5, requires_grad=True)
    (cls()(x) * torch.randn(5, 5)).sum().backward()
    used = torch.zeros(5, 5, dtype=torch.bool)
    offset = cls.domain_offset
    rows, cols = torch.tril_indices(5, 5, offset)
    used[rows, cols] = True
    assert (x.grad[~used] == 0).all()
    assert (cls().inverse(cls()(x.detach()))[~used] == 0).all()


# ------------------------------------------------------------------------------- messages
def outside_message(transform: ps.Transform, value: torch.Tensor) -> str:
    with pytest.raises(ps.InfeasibleValueError) as caught:
        transform.right_inverse(value)
    return str(caught.value)


def test_lower_cholesky_messages_name_the_entry():
    value = torch.eye(4).repeat(2, 1, 1)
    value[0, 1, 1] = -0.1
    assert (
        "1 of 32 entries lie outside LowerCholesky(); worst: diagonal entry -0.1 at [0, 1, 1] is not positive"
        in (outside_message(ps.LowerCholesky(), value))
    )
    value = torch.eye(4).repeat(2, 1, 1)
    value[1, 0, 2] = 0.3
    assert "entry 0.3 at [1, 0, 2] above the diagonal is not 0" in outside_message(ps.LowerCholesky(), value)


def test_positive_definite_messages():
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    message = outside_message(ps.PositiveDefinite(), torch.stack([torch.eye(2), indefinite]))
    assert (
        "1 of 2 matrices lie outside PositiveDefinite(); worst: the matrix at [1] is not positive definite"
        in message
    )
    assert "smallest eigenvalue is -1.0" in message
    asymmetric = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    message = outside_message(ps.PositiveDefinite(), asymmetric)
    assert "the matrix is not symmetric: entries [0, 1] = 0.5 and [1, 0] = 0.0" in message


def test_correlation_messages():
    factor = torch.eye(3)
    factor[2] = torch.tensor([0.6, 0.8, 0.5])
    factor = factor.tril()
    assert "row 2 of the matrix has length 1.118" in outside_message(ps.CorrCholesky(), factor)
    corr = torch.tensor([[1.0, 0.5], [0.5, 1.2]])
    assert "diagonal entry 1.2" in outside_message(ps.CorrMatrix(), corr)
    assert "at [1, 1] is not 1" in outside_message(ps.CorrMatrix(), corr)
    corr = torch.tensor([[1.0, 1.5], [1.5, 1.0]])
    assert "is not positive semi-definite: its smallest eigenvalue is -0.5" in outside_message(
        ps.CorrMatrix(), corr
    )


def test_symmetric_message_and_tolerance():
    b = torch.randn(30, 30)
    product = b @ b.mT  # symmetric up to the rounding of its sums: accepted
    assert ps.Symmetric().contains(product).all()
    skewed = torch.eye(3)
    skewed[0, 2] = 0.25
    assert "the matrix is not symmetric: entries [0, 2] = 0.25 and [2, 0] = 0.0" in outside_message(
        ps.Symmetric(), skewed
    )


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_non_finite_entries_are_named(cls):
    value = cls().sample((2, 3, 3))
    value[1, 2, 0] = float("nan")
    assert "entry nan at [1, 2, 0] is not finite" in outside_message(cls(), value)
