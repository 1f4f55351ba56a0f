"""Complex tensors: the sets of complex tensors (Unitary, Hermitian) against independent complex128
references, Haar sampling, projections, torch's complex (Wirtinger) gradients, training, and the
refusal of complex tensors by every set of real ones. The contract suite runs them too
(tests/transform_cases.py COMPLEX_CASES, in complex64 and complex128)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps

from . import references
from .test_constrain import assert_unchanged, snapshot

C128 = torch.complex128


class Holder(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


def _complex_randn(*shape: int, dtype: torch.dtype = C128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=generator)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("spec", ["box(-1, 1)", "positive", "orthogonal", "symmetric", "simplex"])
def test_sets_of_real_tensors_refuse_a_complex_tensor_naming_it_the_set_and_the_dtype(spec):
    layer = nn.Linear(3, 3, dtype=torch.complex64)
    before = snapshot(layer)
    name = type(ps.resolve(spec)).__name__
    with pytest.raises(
        ps.UnsupportedTensorError,
        match=rf"'weight' of Linear has dtype torch\.complex64; {name}\(.*\) is a set of real tensors",
    ):
        ps.constrain(layer, "weight", spec)
    assert_unchanged(layer, before)


def test_unitary_refuses_a_real_tensor_and_points_to_orthogonal():
    layer = nn.Linear(3, 3)
    before = snapshot(layer)
    with pytest.raises(ps.UnsupportedTensorError, match=re.escape("or ps.Orthogonal() for a real one")):
        ps.constrain(layer, "weight", ps.Unitary())
    assert_unchanged(layer, before)


def test_a_complex_value_assigned_to_a_real_constrained_tensor_is_refused():
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Symmetric(), init="sample")
    with pytest.raises(ps.UnsupportedTensorError, match=r"cannot assign a complex value \(complex64\)"):
        layer.weight = torch.eye(2, dtype=torch.complex64)


def test_a_real_value_assigned_to_a_complex_hermitian_tensor_is_converted():
    module = ps.constrain(Holder(torch.zeros(2, 2, dtype=C128)), "value", ps.Hermitian(), init="sample")
    module.value = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    assert module.value.dtype == C128
    torch.testing.assert_close(module.value.detach(), torch.tensor([[1.0, 2.0], [2.0, 3.0]], dtype=C128))


def test_an_infeasible_complex_value_is_refused_with_its_worst_entry():
    module = ps.constrain(Holder(torch.zeros(2, 2, dtype=C128)), "value", ps.Hermitian(), init="sample")
    before = module.value.detach().clone()
    with pytest.raises(
        ps.InfeasibleValueError, match=r"diagonal entry \[1, 1\] with imaginary part 0\.5, not 0"
    ):
        module.value = torch.tensor([[1.0, 0.0], [0.0, 1.0 + 0.5j]])
    assert torch.equal(module.value.detach(), before)


def test_riemannian_is_refused_for_unitary():
    module = Holder(torch.eye(3, dtype=torch.complex64))
    with pytest.raises(ps.ManifoldUnavailableError):
        ps.constrain(module, "value", ps.Unitary(), method="riemannian")


# ------------------------------------------------------------------------------ the maps
@pytest.mark.parametrize("method", ["matrix_exp", "cayley"])
@pytest.mark.parametrize("shape", [(4, 4), (2, 5, 3), (3, 6)])
def test_unitary_forward_matches_the_complex128_reference(method, shape):
    transform = ps.Unitary(method=method)
    x = _complex_randn(*shape)
    expected = references.unitary(transform, x, C128)
    got = transform(x)
    # The polish moves the value by rounding only: a few ulps of float64 times the size.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    gram = got.mH @ got if shape[-2] >= shape[-1] else got @ got.mH
    eye = torch.eye(gram.shape[-1], dtype=C128)
    assert float((gram - eye).abs().max()) < 1e-13


def test_unitary_thin_method_is_unitary_and_keeps_the_base_at_zero():
    transform = ps.Unitary(method="thin")
    value = transform.sample((30, 3), dtype=C128)
    stored = transform.right_inverse(value)
    assert torch.equal(stored, torch.zeros_like(stored))
    assert torch.equal(transform(stored), value)
    moved = transform(0.3 * _complex_randn(30, 3))
    assert float((moved.mH @ moved - torch.eye(3, dtype=C128)).abs().max()) < 1e-13


def test_unitary_keeps_an_assigned_unitary_value_exactly():
    value = ps.Unitary().sample((4, 4), dtype=torch.complex64)
    module = ps.constrain(Holder(value), "value", ps.Unitary())
    assert torch.equal(module.value, value)


@pytest.mark.parametrize("dtype", [torch.float64, C128])
def test_hermitian_forward_and_inverse_match_the_reference(dtype):
    transform = ps.Hermitian()
    x = torch.randn(3, 4, 4, dtype=dtype)
    value = transform(x)
    torch.testing.assert_close(value, references.hermitian(transform, x), rtol=0, atol=1e-15)
    assert torch.equal(value, value.mH), "not exactly Hermitian"
    if dtype.is_complex:
        assert bool((value.diagonal(dim1=-2, dim2=-1).imag == 0).all()), "the diagonal is not real"
    assert torch.equal(transform(transform.right_inverse(value)), value)


def test_membership_uses_the_tolerance_of_the_real_dtype():
    value = ps.Unitary().sample((5, 5), dtype=torch.complex64)
    eps32 = torch.finfo(torch.float32).eps
    assert bool(ps.Unitary().contains(value * (1 + eps32)).all())  # within 10 n eps of float32
    assert not bool(ps.Unitary().contains(value * (1 + 1e-3)).all())
    assert not bool(ps.Unitary().contains(value.to(C128) * (1 + 1e-8)).all())  # float64's is finer


# ------------------------------------------------------------------------------ sample, project
def test_unitary_sample_is_haar_not_biased_by_the_qr_phases():
    """Under the Haar measure every entry has mean 0 and E|u_ij|^2 = 1/n. The Q of a plain QR has
    R's diagonal real positive, which biases the diagonal of Q towards positive real values."""
    draws = ps.Unitary().sample((4000, 3, 3), dtype=C128)
    assert float((draws.mH @ draws - torch.eye(3, dtype=C128)).abs().max()) < 1e-13
    mean = draws.mean(0)
    assert float(mean.abs().max()) < 0.05  # standard error 0.009
    torch.testing.assert_close(
        draws.abs().square().mean(0), torch.full((3, 3), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0
    )
    plain = torch.linalg.qr(_complex_randn(4000, 3, 3)).Q
    # LAPACK's Householder QR leaves R's diagonal real (negative): Q's diagonal is biased.
    assert float(plain.mean(0).diagonal().real.abs().min()) > 0.2, "the check cannot tell a biased sampler"


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)])
def test_unitary_projection_is_the_polar_factor(shape):
    y = _complex_randn(*shape)
    u, _, vh = torch.linalg.svd(y, full_matrices=False)
    projected = ps.Unitary().project(y)
    torch.testing.assert_close(projected, u @ vh, rtol=0, atol=1e-12)
    torch.testing.assert_close(ps.Unitary().project(projected), projected, rtol=0, atol=1e-12)
    # Nearer to y than other unitary matrices.
    others = ps.Unitary().sample((64, *shape), dtype=C128)
    assert float((projected - y).abs().square().sum()) <= float(
        (others - y).abs().square().sum((-2, -1)).min()
    )


def test_hermitian_projection_is_the_hermitian_part_and_nan_stays_nan():
    y = _complex_randn(3, 3)
    torch.testing.assert_close(ps.Hermitian().project(y), (y + y.mH) / 2, rtol=0, atol=0)
    y[0, 1] = complex("nan")
    assert bool(torch.isnan(ps.Hermitian().project(y)[0, 1]))
    assert bool(torch.isnan(ps.Unitary().project(y)).all())


@pytest.mark.parametrize("spec", ["unitary", "hermitian"])
def test_method_project_keeps_a_complex_parameter_in_the_set(spec):
    module = Holder(ps.resolve(spec).sample((4, 4), dtype=torch.complex64))
    ps.constrain(module, "value", spec, method="project")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    target = _complex_randn(4, 4, dtype=torch.complex64)
    for _ in range(5):
        optimizer.zero_grad()
        (module.value - target).abs().square().sum().backward()
        optimizer.step()
        assert bool(ps.resolve(spec).contains(module.value.detach()).all())


def test_penalty_of_a_complex_tensor_is_the_squared_modulus_distance():
    y = _complex_randn(3, 3)
    module = Holder(torch.zeros(3, 3, dtype=C128))
    ps.constrain(module, "value", "hermitian", method="penalty", weight=1.0)
    with torch.no_grad():
        module.value.copy_(y)  # a plain parameter: the optimizer may take it anywhere
    expected = float(((y - y.mH) / 2).abs().square().sum())
    assert abs(float(ps.penalty(module).detach()) - expected) <= 1e-12 * expected


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("transform", [ps.Hermitian(), ps.Unitary(), ps.Unitary(method="cayley")], ids=repr)
def test_gradients_follow_torchs_complex_convention(transform):
    """For a real loss L of a complex stored tensor X, torch's gradient is dL/dRe X + i dL/dIm X;
    checked against central differences of the map along each real and imaginary direction."""
    x = (0.5 * _complex_randn(3, 3)).requires_grad_(True)
    weights = _complex_randn(3, 3, seed=1)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return (transform(z) * weights).sum().real

    loss(x).backward()
    h = 1e-6
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for index in range(9):
            for unit in (1.0, 1j):
                step = torch.zeros(9, dtype=C128)
                step[index] = unit * h
                step = step.reshape(3, 3)
                slope = (loss(x + step) - loss(x - step)) / (2 * h)
                expected.view(-1)[index] += unit * slope
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------ training
def test_a_unitary_layer_learns_a_unitary_map():
    """Fit y = U x for a Haar-random U with Adam on the complex stored tensor: the fit reaches U
    (unique: the data span C^4) and the weight stays unitary at every step."""
    torch.manual_seed(0)
    target = ps.Unitary().sample((4, 4), dtype=torch.complex64)
    layer = ps.constrain(
        nn.Linear(4, 4, bias=False, dtype=torch.complex64), "weight", "unitary", init="sample"
    )
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(64, 4, dtype=torch.complex64)
    for _ in range(300):
        optimizer.zero_grad()
        (layer(x) - x @ target.mT).abs().square().mean().backward()
        optimizer.step()
    weight = layer.weight.detach()
    assert bool(ps.Unitary().contains(weight).all())
    torch.testing.assert_close(weight, target, rtol=0, atol=1e-3)


def test_a_hermitian_matrix_learns_a_target_and_checkpoints_round_trip():
    target = ps.Hermitian().sample((3, 3), dtype=C128)
    module = ps.constrain(Holder(torch.zeros(3, 3, dtype=C128)), "value", "hermitian", init="sample")
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        (module.value - target).abs().square().sum().backward()
        optimizer.step()
    torch.testing.assert_close(module.value.detach(), target, rtol=0, atol=1e-6)
    other = ps.constrain(Holder(torch.zeros(3, 3, dtype=C128)), "value", "hermitian", init="sample")
    other.load_state_dict(module.state_dict())
    assert torch.equal(other.value, module.value)


def test_moves_keep_a_unitary_base_complex():
    module = ps.constrain(Holder(torch.zeros(3, 3, dtype=torch.complex64)), "value", "unitary", init="sample")
    value = module.value.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.double()  # touches floating tensors only: the complex ones stay
    transform = ps.constraints(module)["value"]
    assert transform.base.dtype == torch.complex64
    assert torch.equal(module.value, value)


# ------------------------------------------------------------------------------ unit_norm
def test_unit_norm_of_complex_vectors_is_the_modulus_norm():
    x = _complex_randn(3, 5)
    value = ps.UnitNorm()(x)
    expected = x / x.abs().square().sum(-1, keepdim=True).sqrt()  # sqrt(sum |z_i|^2), written out
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-15)
    assert bool(ps.UnitNorm().contains(value).all())
    assert not bool(ps.UnitNorm().contains(value * (1 + 1e-6)).all())
    assert not bool(ps.UnitNorm().contains(value.real.to(C128)).all()), "the imaginary parts count"


def test_unit_norm_refuses_riemannian_steps_on_complex_tensors_and_changes_nothing():
    module = Holder(ps.UnitNorm()(_complex_randn(2, 3)))
    before = snapshot(module)
    with pytest.raises(ps.ManifoldUnavailableError, match="not available for complex tensors"):
        ps.constrain(module, "value", "unit_norm", method="riemannian")
    assert_unchanged(module, before)


def test_a_complex64_checkpoint_loads_into_a_complex128_model_through_the_checks():
    source = ps.constrain(
        Holder(torch.zeros(3, 3, dtype=torch.complex64)), "value", "hermitian", init="sample"
    )
    target = ps.constrain(Holder(torch.zeros(3, 3, dtype=C128)), "value", "hermitian", init="sample")
    target.load_state_dict(source.state_dict())
    assert target.value.dtype == C128
    torch.testing.assert_close(target.value.detach(), source.value.detach().to(C128), rtol=0, atol=0)
    plain = ps.plain_state_dict(source)
    plain["value"] = plain["value"] + 1j * torch.eye(3)  # an imaginary diagonal: not Hermitian
    before = target.value.detach().clone()
    with pytest.raises(ps.InfeasibleValueError, match="imaginary part"):
        target.load_state_dict(plain)
    assert torch.equal(target.value.detach(), before)
