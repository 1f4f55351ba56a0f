"""The contract suite: every registered transform goes through the same checks.

The cases come from ``transform_cases.CASES``; a meta-test fails when a registered name has none, so
a new transform is covered as soon as it is registered and given an example.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.registry import registered_class

from .transform_cases import CASES, DTYPES, Case, case_params

# Unconstrained inputs from -1e4 to 1e4, with 0 and values on both sides of each regime switch.
EXTREMES = [-1e4, -1e3, -100.0, -30.0, -13.8, -1.0, -1e-3, 0.0, 1e-3, 1.0, 13.8, 30.0, 100.0, 1e3, 1e4]


class Holder(nn.Module):
    """A custom module with one bare parameter, the simplest thing to constrain."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


def build(case: Case, dtype: torch.dtype) -> ps.Transform:
    transform = case.build().to(dtype)
    transform.check_shape(torch.Size(case.shape))
    return transform


def extreme_inputs(case: Case, dtype: torch.dtype) -> list[torch.Tensor]:
    numel = torch.Size(case.shape).numel()
    cycled = torch.tensor(EXTREMES)[torch.arange(numel) % len(EXTREMES)].reshape(case.shape)
    shuffled = cycled.flatten()[torch.randperm(numel)].reshape(case.shape)
    return [
        tensor.to(dtype)
        for tensor in (
            cycled,
            shuffled,
            torch.zeros(case.shape),
            torch.full(case.shape, 1e4),
            torch.full(case.shape, -1e4),
        )
    ]


def feasible_values(case: Case, transform: ps.Transform, dtype: torch.dtype) -> torch.Tensor:
    """Values inside the set: images of moderate inputs and of +-13.8, which land within about
    1e-6 (relative to the set's scale) of a bound."""
    x = 3 * torch.randn(case.shape)
    x.view(-1)[::3] = 13.8
    x.view(-1)[1::3] = -13.8
    with torch.no_grad():
        return transform(x.to(dtype))


def round_trip_tolerance(transform: ps.Transform, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """What forward(right_inverse(y)) may differ from y by, derived rather than chosen:

    * a few ulps of the value and of the bounds it is computed from (``low + w * s`` carries the
      rounding of ``low``);
    * the change in the forward map when the stored unconstrained value moves by its own rounding
      (one ulp of ``u``), measured in float64: storing ``u`` in the tensor's dtype cannot do better.
    """
    eps = torch.finfo(y.dtype).eps
    bound_scale = max(
        [float(b.double().abs().nan_to_num(posinf=0.0, neginf=0.0).max()) for b in transform.buffers()],
        default=0.0,
    )
    reference = transform.to(torch.float64)
    u64 = u.double()
    signs = torch.where(torch.rand(u.shape) < 0.5, -1.0, 1.0).double()
    step = eps * u64.abs().clamp_min(torch.finfo(torch.float64).tiny) * signs
    with torch.no_grad():
        sensitivity = (reference(u64 + step) - reference(u64)).abs()
    transform.to(y.dtype)
    size_factor = y.shape[getattr(transform, "dim", -1)] if transform.event_dim else 1
    return 8 * eps * (y.double().abs() * size_factor + bound_scale) + 4 * sensitivity


def test_every_registered_transform_has_a_case():
    covered = {case.name for case in CASES}
    missing = sorted(set(ps.available()) - covered)
    assert not missing, f"registered transforms without a contract case in transform_cases.py: {missing}"


@pytest.mark.parametrize("case", case_params())
def test_cases_build_the_registered_class(case):
    assert type(case.build()) is registered_class(case.name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", case_params())
class TestContract:
    def test_extreme_inputs_land_in_the_set_with_finite_values(self, case, dtype):
        transform = build(case, dtype)
        for x in extreme_inputs(case, dtype):
            y = transform(x)
            assert y.dtype == dtype
            assert y.shape == x.shape
            assert torch.isfinite(y).all(), f"{transform!r} produced non-finite values"
            assert transform.contains(y).all(), f"{transform!r} left the set"

    def test_gradients_are_finite_for_extreme_inputs(self, case, dtype):
        transform = build(case, dtype)
        for x in extreme_inputs(case, dtype):
            x = x.clone().requires_grad_(True)
            weights = torch.randn(case.shape).to(dtype)
            (transform(x) * weights).sum().backward()
            assert torch.isfinite(x.grad).all(), f"{transform!r} produced non-finite gradients"

    def test_round_trip_keeps_feasible_values(self, case, dtype):
        transform = build(case, dtype)
        y = feasible_values(case, transform, dtype)
        u = transform.right_inverse(y)
        assert u.dtype == dtype
        assert u.shape == y.shape
        assert torch.isfinite(u).all()
        error = (transform(u).double() - y.double()).abs()
        tolerance = round_trip_tolerance(transform, y, u)
        worst = int(torch.argmax(error - tolerance))
        assert (error <= tolerance).all(), (
            f"{transform!r}: round trip error {error.flatten()[worst]:.3g} > "
            f"{tolerance.flatten()[worst]:.3g} at y={y.flatten()[worst].item():.9g}"
        )

    def test_values_on_the_boundary_have_a_finite_inverse(self, case, dtype):
        transform = build(case, dtype)
        for x in extreme_inputs(case, dtype):
            on_or_near_boundary = transform(x)
            u = transform.right_inverse(on_or_near_boundary)
            assert torch.isfinite(u).all()
            assert transform.contains(transform(u)).all()

    def test_to_interior_is_strictly_inside_and_keeps_gradients_alive(self, case, dtype):
        transform = build(case, dtype)
        wild = torch.tensor([float("nan"), float("inf"), -float("inf"), -1e30, 1e30, 0.0, -5.0, 5.0])
        values = wild[torch.arange(torch.Size(case.shape).numel()) % len(wild)].reshape(case.shape)
        inside = transform.to_interior(values.to(dtype))
        assert inside.dtype == dtype
        assert torch.isfinite(inside).all()
        assert transform.contains(inside).all()
        u = transform.right_inverse(inside).detach().requires_grad_(True)
        assert torch.isfinite(u).all()
        if transform.event_dim == 0:
            # The slope where values were moved is at least 1e-4 of the slope at the set's centre
            # (the image of 0): the value can still move.
            transform(u).sum().backward()
            centre = torch.zeros(case.shape, dtype=dtype, requires_grad=True)
            transform(centre).sum().backward()
            assert (u.grad.double() >= 1e-4 * centre.grad.double()).all(), (
                f"{transform!r}: dead gradient after to_interior"
            )

    def test_sample_lies_in_the_set(self, case, dtype):
        transform = build(case, dtype)
        value = transform.sample(case.shape, dtype=dtype)
        assert value.dtype == dtype
        assert transform.contains(value).all()

    def test_nan_and_inf_are_never_members(self, case, dtype):
        transform = build(case, dtype)
        value = transform.sample(case.shape, dtype=dtype)
        for bad in (float("nan"), float("inf")):
            broken = value.clone()
            broken.view(-1)[0] = bad
            assert not transform.contains(broken).all()
            with pytest.raises(ps.InfeasibleValueError, match="outside"):
                transform.right_inverse(broken)

    def test_settings_follow_the_dtype(self, case, dtype):
        transform = build(case, dtype)
        assert all(buffer.dtype == dtype for buffer in transform.buffers())
        x = torch.randn(case.shape).to(dtype)
        assert transform(x).dtype == dtype

    def test_state_dict_round_trip(self, case, dtype):
        source = Holder(torch.zeros(case.shape, dtype=dtype))
        ps.constrain(source, "value", case.build(), init="sample")
        target = Holder(torch.zeros(case.shape, dtype=dtype))
        ps.constrain(target, "value", case.build(), init="sample")
        assert not torch.equal(source.value, target.value)
        target.load_state_dict(source.state_dict())
        assert torch.equal(source.value, target.value)

    def test_optimizer_steps_pushing_outward_stay_feasible(self, case, dtype):
        module = Holder(torch.zeros(case.shape, dtype=dtype))
        ps.constrain(module, "value", case.build(), init="sample")
        transform = ps.constraints(module)["value"]
        direction = torch.where(torch.rand(case.shape) < 0.5, -1.0, 1.0).to(dtype)
        # Adam's default eps (1e-8) is 0 in float16, which makes its step 0/0; use one the dtype holds.
        optimizer = torch.optim.Adam(module.parameters(), lr=1.0, eps=torch.finfo(dtype).eps)
        for _ in range(20):
            optimizer.zero_grad()
            (-(module.value * direction).sum()).backward()
            optimizer.step()
            with torch.no_grad():
                value = module.value
                assert torch.isfinite(value).all()
                assert transform.contains(value).all()
                assert torch.isfinite(module.parametrizations.value.original).all()


@pytest.mark.parametrize("case", case_params())
def test_gradcheck_float64(case):
    transform = build(case, torch.float64)
    x = (2 * torch.randn(case.shape, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(transform, (x,))
    # Well inside the set: near a bound the inverse's curvature exceeds finite differences' reach.
    y = transform(0.5 * torch.randn(case.shape, dtype=torch.float64)).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(transform.inverse, (y,))


@pytest.mark.parametrize("case", case_params())
def test_torch_codomain_accepts_interior_values(case):
    transform = build(case, torch.float64)
    y = transform(2 * torch.randn(case.shape, dtype=torch.float64))
    if transform.event_dim:
        y = y.movedim(transform.dim, -1)
    assert transform.codomain.check(y).all()
    assert transform.domain.check(torch.randn(case.shape, dtype=torch.float64)).all()


@pytest.mark.parametrize("case", case_params())
def test_repr_names_settings_without_dumping_tensors(case):
    text = repr(case.build())
    assert text.startswith(type(case.build()).__name__ + "(")
    assert "tensor(" not in text


@pytest.mark.parametrize("case", case_params())
def test_compiles_with_no_graph_break(case):
    module = Holder(torch.zeros(case.shape))
    ps.constrain(module, "value", case.build(), init="sample")
    torch.compiler.reset()  # every case reuses this code object; start each from a clean cache
    compiled = torch.compile(lambda: module.value * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(), module.value * 2)
