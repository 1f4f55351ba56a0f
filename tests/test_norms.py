"""MaxNorm and MinMaxNorm beyond the shared contract: the map against a plain float64 reference,
Keras's projection rule, several dims (conv kernels), the log-det-Jacobian in closed form, settings
and shapes refused with paramshape errors, and training that keeps every slice in its ball."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import paramshape as ps


def reference_map(x: torch.Tensor, low: float, high: float, dims: tuple[int, ...]) -> torch.Tensor:
    """The documented map, written plainly in float64: x / |x| * (low + w tanh(|x| / w))."""
    x = x.double()
    norm = x.pow(2).sum(dims, keepdim=True).sqrt()
    width = high - low
    return x / norm * (low + width * torch.tanh(norm / width))


def keras_rule(w: torch.Tensor, low: float, high: float, dims: tuple[int, ...]) -> torch.Tensor:
    """keras.constraints.MinMaxNorm(low, high, rate=1) without its epsilon, in float64."""
    w = w.double()
    norms = w.pow(2).sum(dims, keepdim=True).sqrt()
    return w * (norms.clamp(low, high) / norms)


@pytest.mark.parametrize(
    ("transform", "low", "high", "shape", "dims"),
    [
        (ps.MaxNorm(2.0), 0.0, 2.0, (3, 5), (1,)),
        (ps.MaxNorm(0.5, dim=0), 0.0, 0.5, (4, 6), (0,)),
        (ps.MaxNorm(3.0, dim=(1, 2, 3)), 0.0, 3.0, (4, 2, 3, 3), (1, 2, 3)),
        (ps.MinMaxNorm(0.5, 1.5, dim=(0, 2)), 0.5, 1.5, (3, 4, 5), (0, 2)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_map_matches_the_plain_reference(transform, low, high, shape, dims, dtype):
    x = 1.5 * torch.randn(shape, dtype=torch.float64)
    expected = reference_map(x, low, high, dims)
    got = transform.to(dtype)(x.to(dtype)).double()
    tolerance = 8 * torch.finfo(dtype).eps * high
    assert (got - expected).abs().max() <= tolerance
    if dtype == torch.float64:  # and back (in float32 artanh near 1 amplifies the value's rounding)
        norm = expected.pow(2).sum(dims, keepdim=True).sqrt()
        stored = expected / norm * (high - low) * torch.atanh((norm - low) / (high - low))
        assert torch.allclose(transform.right_inverse(expected), stored, rtol=1e-9, atol=0)


def test_small_slices_are_barely_changed_and_the_jacobian_at_zero_is_the_identity():
    t = ps.MaxNorm(1.0).double()
    x = torch.tensor([1e-3, -2e-3, 5e-4], dtype=torch.float64)
    assert torch.allclose(t(x), x, rtol=1e-5, atol=0)
    jacobian = torch.autograd.functional.jacobian(t, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(jacobian, torch.eye(3, dtype=torch.float64))


def test_huge_and_tiny_entries_neither_overflow_nor_underflow():
    t = ps.MaxNorm(1.0)
    y = t(torch.tensor([[3e30, 4e30], [3e-30, 4e-30]]))
    assert torch.allclose(y[0], torch.tensor([0.6, 0.8]))
    assert torch.allclose(y[1], torch.tensor([3e-30, 4e-30]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("low", [0.0, 0.5])
def test_projection_is_the_keras_rule(low):
    t = ps.MinMaxNorm(low, 2.0, dim=(1, 2))
    w = 3 * torch.randn(6, 3, 4, dtype=torch.float64)
    w[0] *= 1e-3  # below low
    assert torch.allclose(t.project(w), keras_rule(w, low, 2.0, (1, 2)), rtol=1e-12, atol=0)


def test_a_zero_slice_projects_to_the_centre_of_the_shell():
    t = ps.MinMaxNorm(1.0, 2.0)
    assert torch.allclose(t.project(torch.zeros(4)), torch.full((4,), 0.5))


def test_log_abs_det_jacobian_in_closed_form_matches_a_finite_difference_jacobian():
    t = ps.MaxNorm(1.5).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    ldj = t.log_abs_det_jacobian(x, t(x))
    for row in range(3):
        step = 1e-6
        columns = []
        for k in range(4):
            e = torch.zeros(4, dtype=torch.float64)
            e[k] = step
            columns.append((t(x[row] + e) - t(x[row] - e)) / (2 * step))
        jacobian = torch.stack(columns, dim=1)
        assert math.isclose(float(ldj[row]), float(torch.linalg.slogdet(jacobian).logabsdet), rel_tol=1e-7)


def test_a_shell_is_not_bijective():
    t = ps.MinMaxNorm(0.5, 1.0)
    assert not t.bijective
    assert ps.MinMaxNorm(0.0, 1.0).bijective
    with pytest.raises(NotImplementedError, match="not a bijection"):
        t.log_abs_det_jacobian(torch.ones(3), t(torch.ones(3)))


def test_spec_strings_take_several_dims():
    t = ps.resolve("max_norm(2.0, dim=(1, 2, 3))")
    assert isinstance(t, ps.MaxNorm)
    assert t.dim == (1, 2, 3)
    assert repr(t) == "MaxNorm(2.0, dim=(1, 2, 3))"
    assert repr(ps.resolve("min_max_norm(0.5, 1)")) == "MinMaxNorm(0.5, 1.0, dim=-1)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ps.MaxNorm(0.0), "max_value must be a finite positive number"),
        (lambda: ps.MaxNorm(math.inf), "max_value must be a finite positive number"),
        (lambda: ps.MaxNorm("2"), "max_value must be a number"),
        (lambda: ps.MinMaxNorm(-1.0, 1.0), "min_value must be a finite non-negative number"),
        (lambda: ps.MinMaxNorm(2.0, 1.0), "lower norm 2.0 must be below the upper one 1.0"),
        (lambda: ps.MaxNorm(1.0, dim=()), "dim must be an integer or a non-empty tuple"),
        (lambda: ps.MaxNorm(1.0, dim=1.5), "dim must be an integer or a non-empty tuple"),
    ],
)
def test_bad_settings_raise_spec_errors(build, message):
    with pytest.raises(ps.SpecError, match=message):
        build()


def test_bad_dims_raise_shape_errors_and_leave_the_module_alone():
    layer = nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    with pytest.raises(ps.ShapeMismatchError, match="out of range"):
        ps.constrain(layer, "weight", ps.MaxNorm(1.0, dim=(1, 2)))
    with pytest.raises(ps.ShapeMismatchError, match="names a dimension twice"):
        ps.constrain(layer, "weight", ps.MaxNorm(1.0, dim=(1, -1)))
    assert not hasattr(layer, "parametrizations")
    assert torch.equal(layer.weight, before)


def test_assigning_a_long_slice_names_it_and_its_norm():
    layer = ps.constrain(nn.Conv1d(2, 3, 2), "weight", ps.MaxNorm(1.0, dim=(1, 2)))
    value = torch.zeros(3, 2, 2)
    value[1, 0, 0] = 5.0
    with pytest.raises(
        ps.InfeasibleValueError, match=r"1 of 3 slices .* the slice \[1, :, :\] has norm 5.0 \(at most 1.0\)"
    ):
        layer.weight = value


@pytest.mark.parametrize("method", ["reparam", "project"])
def test_training_keeps_every_output_channel_in_its_ball(method):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    with pytest.warns(
        ps.ParamshapeWarning, match=r"init='project' moved \d of 4 slices (onto|inside) MaxNorm"
    ):
        ps.constrain(conv, "weight", ps.MaxNorm(0.5, dim=(1, 2, 3)), method=method, init="project")
    optimizer = torch.optim.SGD(conv.parameters(), lr=1.0)
    x = torch.randn(8, 1, 6, 6)
    direction = torch.randn(8, 4, 4, 4)
    for _ in range(20):
        optimizer.zero_grad()
        (-(conv(x) * direction).sum()).backward()  # a linear loss: it pushes the weights outward
        optimizer.step()
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert (norms <= 0.5 * (1 + 1e-5)).all()
    assert norms.min() > 0.45  # the loss did push every channel to the sphere
