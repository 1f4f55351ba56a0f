"""Unit tests for what is specific to the transforms of issue 3 (the contract suite covers the rest):
log-det-Jacobians, the bijective simplex, SoftClip, ordered vectors, the sphere, sum-to-zero
vectors, Affine, Compose, torch.distributions interop, function transforms and paramshape.testing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions import transforms as T

import paramshape as ps
from paramshape import testing
from paramshape.transforms import registry
from paramshape.transforms.vector.sumtozero import helmert, helmert_inverse


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def slope(transform: ps.Transform, x: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of ``transform`` at float64 ``x``, by autograd."""
    x = x.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(transform.double()(x).sum(), x)
    return grad


# ----------------------------------------------------------------------------- log-det-Jacobian
@pytest.mark.parametrize(
    "transform",
    [ps.Box(-1.0, 1.0), ps.Box(0.0, math.inf), ps.Positive(), ps.Positive(method="exp"), ps.LessThan(2.0)],
    ids=repr,
)
def test_elementwise_log_det_jacobian_is_the_log_slope(transform):
    x = torch.linspace(-8, 8, 33, dtype=torch.float64)
    expected = slope(transform, x).log()
    torch.testing.assert_close(transform.double().log_abs_det_jacobian(x, transform.double()(x)), expected)


def test_box_log_det_jacobian_is_finite_where_the_slope_underflows():
    box = ps.Box(-1.0, 1.0)
    x = torch.tensor([-1e4, -200.0, 0.0, 200.0, 1e4])
    ldj = box.log_abs_det_jacobian(x, box(x))
    assert torch.isfinite(ldj).all()
    # log(4) - softplus(-2x) - softplus(2x) (gain 4 / width = 2) is about log(4) - 2|x| far out, not -inf.
    assert ldj[0].item() == pytest.approx(math.log(4) - 2e4, rel=1e-6)


def test_log_det_jacobian_shape_drops_the_event_dimension():
    x = torch.randn(3, 4, 5)
    for dim, expected in ((-1, (3, 4)), (1, (3, 5)), (0, (4, 5))):
        t = ps.Simplex(dim=dim, method="ilr")
        assert t.log_abs_det_jacobian(x, t(x)).shape == expected


@pytest.mark.parametrize("transform", [ps.Simplex(), ps.UnitNorm()], ids=repr)
def test_transforms_that_are_not_bijective_say_why_and_what_instead(transform):
    x = torch.randn(2, 3)
    with pytest.raises(NotImplementedError, match="not bijective") as info:
        transform.log_abs_det_jacobian(x, transform(x))
    assert not transform.bijective
    assert "ilr" in str(info.value) or "0.5 * ||x||^2" in str(info.value)


def test_a_transform_without_a_log_det_jacobian_says_so(clean_registry):
    class Bare(ps.Positive):
        log_abs_det_jacobian = ps.Transform.log_abs_det_jacobian

    with pytest.raises(NotImplementedError, match="does not implement log_abs_det_jacobian"):
        Bare().log_abs_det_jacobian(torch.zeros(2), torch.ones(2))


def test_log_det_jacobian_gives_a_prior_on_the_stored_tensor():
    """Change of variables: a LogNormal prior on Positive(method="exp") values is a Normal prior on
    the stored tensor, whose log density is known independently."""
    t = ps.Positive(method="exp").double()
    x = torch.randn(7, dtype=torch.float64)
    y = t(x)
    through_ldj = torch.distributions.LogNormal(0.0, 1.0).log_prob(y) + t.log_abs_det_jacobian(x, y)
    torch.testing.assert_close(through_ldj, torch.distributions.Normal(0.0, 1.0).log_prob(x))


# -------------------------------------------------------------------------------- simplex ILR
def test_ilr_round_trip_at_ten_thousand_in_float32_beats_stick_breaking():
    torch.manual_seed(1)
    y = torch.distributions.Dirichlet(torch.ones(10_000, dtype=torch.float64)).sample((8,)).float()
    ilr = ps.Simplex(method="ilr")
    stick = biject_to(constraints.simplex)
    ilr_error = ((ilr(ilr.right_inverse(y)).double() - y.double()).abs() / y.double()).max()
    stick_error = ((stick(stick.inv(y)).double() - y.double()).abs() / y.double()).max()
    assert ilr_error < 1e-5
    assert stick_error > 10 * ilr_error


def test_ilr_values_pass_torch_simplex_check_at_ten_thousand():
    ilr = ps.Simplex(method="ilr")
    values = ilr(3 * torch.randn(64, 9_999))
    assert constraints.simplex.check(values).all()


def test_ilr_inverse_of_a_one_hot_row_is_finite():
    ilr = ps.Simplex(method="ilr")
    one_hot = torch.eye(5)
    stored = ilr.right_inverse(one_hot)
    assert stored.shape == (5, 4)
    assert torch.isfinite(stored).all()
    assert (ilr(stored).argmax(-1) == torch.arange(5)).all()


def test_ilr_at_the_origin_is_uniform_and_its_jacobian_is_known():
    ilr = ps.Simplex(method="ilr").double()
    x = torch.zeros(1, 6, dtype=torch.float64)
    torch.testing.assert_close(ilr(x), torch.full((1, 7), 1 / 7, dtype=torch.float64))
    # K probabilities of 1/K: K log(1/K) + log(K) / 2 (with respect to the first K - 1 of them).
    expected = -7 * math.log(7) + 0.5 * math.log(7)
    assert ilr.log_abs_det_jacobian(x, ilr(x)).item() == pytest.approx(expected, rel=1e-12)


def test_ilr_constrain_stores_one_fewer_entry():
    mix = nn.Module()
    mix.weights = nn.Parameter(torch.full((2, 4), 0.25))
    ps.constrain(mix, "weights", ps.Simplex(method="ilr"))
    assert mix.parametrizations.weights.original.shape == (2, 3)
    torch.testing.assert_close(mix.weights, torch.full((2, 4), 0.25))


def test_simplex_method_is_validated_and_shown():
    with pytest.raises(ps.SpecError, match="method must be one of"):
        ps.Simplex(method="stick")
    assert repr(ps.Simplex()) == "Simplex(dim=-1)"
    assert repr(ps.resolve("simplex(dim=0, method='ilr')")) == "Simplex(dim=0, method='ilr')"


# --------------------------------------------------------------------------------- sum to zero
def test_helmert_basis_is_orthonormal_and_orthogonal_to_ones():
    basis = helmert(torch.eye(9, dtype=torch.float64)).T  # (10, 9): one column per coordinate
    torch.testing.assert_close(basis.T @ basis, torch.eye(9, dtype=torch.float64))
    torch.testing.assert_close(basis.sum(0), torch.zeros(9, dtype=torch.float64))
    # Every entry of the value has the same variance (K - 1) / K under standard normal coordinates.
    torch.testing.assert_close((basis**2).sum(1), torch.full((10,), 0.9, dtype=torch.float64))


def test_helmert_inverse_projects_onto_the_hyperplane():
    z = torch.randn(4, 10, dtype=torch.float64)
    back = helmert(helmert_inverse(z))
    torch.testing.assert_close(back, z - z.mean(-1, keepdim=True))


def test_sum_to_zero_is_exact_to_rounding_for_long_slices():
    t = ps.SumToZero()
    y = t(100 * torch.randn(3, 9_999))
    assert y.shape == (3, 10_000)
    total = y.double().sum(-1).abs()
    assert (total <= 4 * 10_000 * torch.finfo(torch.float32).eps * y.double().abs().sum(-1)).all()
    assert t.contains(y).all()


def test_sum_to_zero_log_det_jacobian_is_constant():
    t = ps.SumToZero(dim=0)
    x = torch.randn(4, 3)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.full((3,), -0.5 * math.log(5)))


# ------------------------------------------------------------------------------------ SoftClip
def test_soft_clip_is_the_identity_in_the_middle():
    clip = ps.SoftClip(-1.0, 1.0)
    x = torch.linspace(-0.8, 0.8, 161, dtype=torch.float64)
    assert slope(clip, torch.zeros(1)).item() == pytest.approx(1.0, abs=1e-9)
    assert (slope(clip, x) >= 0.99).all()
    torch.testing.assert_close(clip.double()(x), x, atol=1e-2, rtol=0)


def test_soft_clip_slope_is_smooth_and_positive_everywhere():
    clip = ps.SoftClip(-1.0, 1.0)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    grads = slope(clip, x)
    assert (grads > 0).all()
    assert grads.diff().abs().max() < 0.1  # no kink: neighbouring slopes 0.01 apart stay close


def test_soft_clip_stays_in_the_box_and_inverts_at_the_bounds():
    clip = ps.SoftClip(2.0, 3.0)
    y = clip(torch.tensor([-1e4, -50.0, 50.0, 1e4]))
    assert ((y >= 2.0) & (y <= 3.0)).all()
    u = clip.right_inverse(torch.tensor([2.0, 3.0]))
    assert torch.isfinite(u).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_soft_clip_keeps_precision_near_either_bound(dtype):
    clip = ps.SoftClip(100.0, 101.0).to(dtype)
    eps = torch.finfo(dtype).eps
    offsets = torch.tensor([1e-5, 1e-3, 0.1, 0.5], dtype=torch.float64)
    values = torch.cat([100.0 + offsets, 101.0 - offsets]).to(dtype)
    back = clip(clip.right_inverse(values))
    assert ((back.double() - values.double()).abs() <= 64 * eps * 101).all()


@pytest.mark.parametrize("softness", [0.0, -1.0, math.inf, math.nan, True, "0.1"])
def test_soft_clip_rejects_bad_softness(softness):
    with pytest.raises(ps.SpecError, match="softness"):
        ps.SoftClip(-1.0, 1.0, softness=softness)


def test_soft_clip_needs_finite_bounds():
    with pytest.raises(ps.SpecError, match="finite bounds"):
        ps.SoftClip(0.0, math.inf)


def test_soft_clip_samples_around_the_middle_of_a_far_box():
    values = ps.SoftClip(100.0, 101.0).sample((1000,))
    assert 100.3 < values.mean() < 100.7


# ------------------------------------------------------------------------------------- ordered
def test_ordered_values_increase_and_ties_invert_finitely():
    t = ps.Ordered()
    y = t(torch.randn(10, 6))
    assert (y.diff(dim=-1) > 0).all()
    tied = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    stored = t.right_inverse(tied)
    assert torch.isfinite(stored).all()
    torch.testing.assert_close(t(stored), tied)


def test_positive_ordered_starts_above_zero():
    t = ps.PositiveOrdered(dim=0)
    y = t(torch.full((4, 3), -1e4))
    assert (y > 0).all()
    assert (y.diff(dim=0) >= 0).all()
    assert torch.isfinite(t.right_inverse(torch.tensor([[0.0], [0.0], [2.0]]))).all()


def test_ordered_rejects_a_decreasing_value_with_its_position():
    with pytest.raises(ps.InfeasibleValueError, match=r"decreases from 2\.0 at position 1"):
        ps.Ordered().right_inverse(torch.tensor([1.0, 2.0, 1.5]))


# ----------------------------------------------------------------------------------- unit norm
def test_unit_norm_handles_zero_tiny_and_huge_vectors():
    t = ps.UnitNorm()
    x = torch.stack([torch.zeros(4), torch.full((4,), 1e-30), torch.full((4,), 1e30)]).requires_grad_(True)
    y = t(x)
    torch.testing.assert_close(y, torch.full((3, 4), 0.5))
    (y * torch.randn(3, 4)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unit_norm_keeps_a_unit_value_and_is_scale_free():
    t = ps.UnitNorm(dim=0)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(t(7.5 * x), t(x))
    y = t(x)
    torch.testing.assert_close(t(t.right_inverse(y)), y)


# -------------------------------------------------------------------------------------- Affine
def test_affine_rejects_a_zero_or_non_finite_setting():
    with pytest.raises(ps.SpecError, match="nonzero"):
        ps.Affine(0.0, torch.tensor([1.0, 0.0]))
    with pytest.raises(ps.SpecError, match="loc"):
        ps.Affine(math.inf, 1.0)
    with pytest.raises(ps.SpecError, match="NaN"):
        ps.Affine(0.0, math.nan)


def test_affine_with_a_negative_scale_is_decreasing_with_the_log_of_its_size():
    t = ps.Affine(1.0, -4.0)
    x = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(t(x), torch.tensor([1.0, -3.0]))
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.full((2,), math.log(4.0)))


def test_affine_does_not_overflow_half_precision():
    assert torch.isfinite(ps.Affine(0.0, 10.0).half()(torch.full((2,), 1e4, dtype=torch.float16))).all()


# ------------------------------------------------------------------------------------- Compose
def test_compose_applies_in_order_and_inverts_in_reverse():
    chain = ps.Compose(ps.Positive(method="exp"), ps.Affine(1.0, 2.0))
    x = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(chain(x), 1.0 + 2.0 * x.exp())
    torch.testing.assert_close(chain.inverse(chain(x)), x)


def test_compose_log_det_jacobian_is_the_sum_of_the_parts():
    first, second = ps.Box(-1.0, 1.0), ps.Affine(0.0, 3.0)
    chain = ps.Compose(first, second)
    x = torch.randn(5)
    expected = first.log_abs_det_jacobian(x, first(x)) + second.log_abs_det_jacobian(first(x), chain(x))
    torch.testing.assert_close(chain.log_abs_det_jacobian(x, chain(x)), expected)


def test_compose_after_a_bijective_simplex_sums_over_its_free_coordinates():
    chain = ps.Compose(ps.Simplex(method="ilr"), ps.Affine(0.0, 2.0)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(
        chain.log_abs_det_jacobian(x, chain(x)), testing.autograd_log_abs_det_jacobian(chain, x)
    )


def test_compose_checks_membership_through_the_chain():
    chain = ps.Compose(ps.Box(-1.0, 1.0), ps.Affine(0.0, 3.0))
    assert chain.contains(torch.tensor([-2.9, 0.0, 2.9])).all()
    with pytest.raises(ps.InfeasibleValueError, match=r"after undoing the later transforms"):
        chain.right_inverse(torch.tensor([3.5]))


def test_compose_constrains_a_tensor_and_is_a_spec_string():
    layer = nn.Linear(3, 2)
    ps.constrain(layer, "bias", "compose('box(-1, 1)', 'affine(0, 3)')", init="sample")
    assert (layer.bias.abs() < 3).all()
    assert (
        repr(ps.constraints(layer)["bias"]) == "Compose(Box(low=-1.0, high=1.0), Affine(loc=0.0, scale=3.0))"
    )


def test_a_list_of_specs_is_refused_with_a_pointer_to_compose():
    with pytest.raises(ps.SpecTypeError, match=r"ps\.Compose"):
        ps.constrain(nn.Linear(2, 2), "bias", [ps.Box(-1, 1), ps.Affine(0.0, 2.0)])
    with pytest.raises(ps.SpecError, match="separate arguments"):
        ps.Compose([ps.Box(-1, 1)])
    with pytest.raises(ps.SpecError, match="at least one"):
        ps.Compose()


def test_compose_with_a_part_that_is_not_bijective_has_no_log_det_jacobian():
    chain = ps.Compose(ps.Affine(0.0, 2.0), ps.UnitNorm())
    assert not chain.bijective
    with pytest.raises(NotImplementedError, match="UnitNorm"):
        chain.log_abs_det_jacobian(torch.ones(3), chain(torch.ones(3)))


# ------------------------------------------------------------------------------------- interop
@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (constraints.interval(0.0, 2.0), "Box(low=0.0, high=2.0)"),
        (constraints.half_open_interval(-1.0, 1.0), "Box(low=-1.0, high=1.0)"),
        (constraints.unit_interval, "UnitInterval()"),
        (constraints.positive, "Positive()"),
        (constraints.nonnegative, "Positive()"),
        (constraints.greater_than(0.5), "GreaterThan(low=0.5)"),
        (constraints.greater_than_eq(-1.0), "GreaterThan(low=-1.0)"),
        (constraints.less_than(3.0), "LessThan(high=3.0)"),
        (constraints.simplex, "Simplex(dim=-1, method='ilr')"),
        (constraints.real, "Affine(loc=0.0, scale=1.0)"),
        (constraints.real_vector, "Affine(loc=0.0, scale=1.0)"),
        (constraints.independent(constraints.positive, 1), "Positive()"),
    ],
    ids=repr,
)
def test_torch_constraints_map_to_paramshape_transforms(constraint, expected):
    assert repr(ps.resolve(constraint)) == expected


def test_matrix_constraints_use_the_registered_matrix_transforms():
    for constraint, name in (
        (constraints.corr_cholesky, "corr_cholesky"),
        (constraints.symmetric, "symmetric"),
    ):
        if name in ps.available():
            assert type(ps.resolve(constraint)) is registry.registered_class(name)


def test_constrain_with_a_torch_constraint():
    layer = ps.constrain(nn.Linear(3, 2), "weight", constraints.interval(0.0, 2.0), init="sample")
    assert ((layer.weight > 0) & (layer.weight < 2)).all()


def test_a_constraint_nothing_reaches_is_named():
    with pytest.raises(ps.SpecError, match=r"Boolean\(\)"):
        ps.resolve(constraints.boolean)


def test_torch_transform_delegates_maps_shapes_and_log_det_jacobian():
    t = ps.TorchTransform(T.StickBreakingTransform())
    assert t.inverse_shape(torch.Size([2, 5])) == (2, 4)
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(t(x), T.StickBreakingTransform()(x))
    torch.testing.assert_close(
        t.log_abs_det_jacobian(x, t(x)), T.StickBreakingTransform().log_abs_det_jacobian(x, t(x))
    )
    # torch's stick-breaking log-det-Jacobian is with respect to the first K - 1 probabilities.
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), testing.autograd_log_abs_det_jacobian(t, x))


def test_torch_transform_refuses_what_it_cannot_wrap():
    with pytest.raises(ps.SpecError, match="bijective"):
        ps.TorchTransform(T.SoftmaxTransform())
    with pytest.raises(ps.SpecTypeError):
        ps.TorchTransform(torch.exp)


def test_check_transform_names_what_a_wrapped_torch_transform_breaks():
    with pytest.raises(ps.ContractViolation) as info:
        testing.check_transform(ps.TorchTransform(T.ExpTransform()), dtypes=(torch.float32,))
    assert info.value.property == "extreme_inputs"


# -------------------------------------------------------------------------- function transforms
def test_function_transform_checks_the_pair_at_construction():
    with pytest.raises(ps.SpecError, match="not an inverse pair"):
        ps.FunctionTransform(torch.exp, torch.log1p, codomain=constraints.positive)
    with pytest.raises(ps.SpecError, match="left the codomain"):
        ps.FunctionTransform(torch.sinh, torch.asinh, codomain=constraints.positive)
    with pytest.raises(ps.SpecTypeError, match="callable"):
        ps.FunctionTransform("exp", torch.log)


def test_function_transform_log_det_jacobian_from_autograd():
    t = ps.FunctionTransform(torch.asinh, torch.sinh)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), -0.5 * torch.log1p(x**2))


def test_register_from_functions_gives_a_spec_name(clean_registry):
    cls = ps.register("asinh_scale", forward=torch.asinh, inverse=torch.sinh)
    assert issubclass(cls, ps.FunctionTransform)
    layer = ps.constrain(nn.Linear(2, 2), "bias", "asinh_scale", init="raw")
    assert isinstance(ps.constraints(layer)["bias"], cls)
    with pytest.raises(ps.RegistryError, match="both"):
        ps.register("half_given", forward=torch.asinh)


def test_check_transform_passes_a_sound_function_transform():
    testing.check_transform(
        ps.FunctionTransform(torch.asinh, torch.sinh),
        dtypes=(torch.float32, torch.float64),
        properties=[name for name in testing.PROPERTIES if name != "compiles"],
    )


# ----------------------------------------------------------------------------- paramshape.testing
class OffInverse(ps.Box):
    def inverse(self, y):
        return super().inverse(y) + 1e-3


class WrongJacobian(ps.Box):
    def log_abs_det_jacobian(self, x, y):
        return super().log_abs_det_jacobian(x, y) + 1e-6


class Escapes(ps.Box):
    def forward(self, x):
        return super().forward(x) * 1.01


@pytest.mark.parametrize(
    ("transform", "prop"),
    [
        (OffInverse(-1.0, 1.0), "round_trip"),
        (WrongJacobian(-1.0, 1.0), "log_abs_det_jacobian"),
        (Escapes(-1.0, 1.0), "extreme_inputs"),
    ],
    ids=["inverse", "jacobian", "escapes"],
)
def test_check_transform_names_the_failed_property_and_the_transform(transform, prop):
    with pytest.raises(ps.ContractViolation) as info:
        testing.check_transform(transform, dtypes=(torch.float64,))
    assert isinstance(info.value, AssertionError)
    assert info.value.property == prop
    assert repr(transform) in str(info.value)


class _RealGradientOff(torch.autograd.Function):
    """The identity, whose backward is 1% off for real tensors only (complex ones pass exactly)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad if grad.is_complex() else 1.01 * grad


class RealGradientOff(ps.UnitNorm):
    def forward(self, x):
        return super().forward(_RealGradientOff.apply(x))


class ComplexGradientOff(ps.UnitNorm):
    def forward(self, x):
        out = super().forward(x)
        return out + 1e-3 * (x - x.detach()) * 1j if x.is_complex() else out


@pytest.mark.parametrize(
    ("transform", "dtype"),
    [(RealGradientOff(), "torch.float64"), (ComplexGradientOff(), "torch.complex128")],
    ids=["real", "complex"],
)
def test_gradcheck_of_a_complex_capable_set_checks_real_and_complex_derivatives(transform, dtype):
    """A set of complex tensors is gradchecked in float64 and in complex128: a wrong gradient on
    either path fails, and the failure names the dtype (complex128 alone missed the real one)."""
    with pytest.raises(ps.ContractViolation, match=f"gradcheck of the forward in {dtype} failed") as info:
        testing.check_gradcheck(transform, (3, 4))
    assert info.value.property == "gradcheck"


def test_check_transform_leaves_the_transform_and_the_random_stream_alone():
    box = ps.Box(-1.0, 1.0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    testing.check_transform(box, shape=(2, 3), properties=["round_trip", "settings_follow_dtype"])
    torch.testing.assert_close(torch.rand(3), expected)
    assert box.low.dtype == torch.float32


def test_check_transform_rejects_unknown_properties():
    with pytest.raises(ValueError, match="Unknown contract properties"):
        testing.check_transform(ps.Box(-1, 1), properties=["round_trips"])


def test_autograd_reference_rejects_non_square_coordinates():
    class Unmeasured(ps.Simplex):
        def codomain_coordinates(self, y):
            return y.movedim(self.dim, -1)

    with pytest.raises(ValueError, match="square"):
        testing.autograd_log_abs_det_jacobian(Unmeasured(method="ilr"), torch.zeros(2, 3))
