"""constrain(), unconstrain(), constraints(): attaching, replacing, removing, and refusing."""

from __future__ import annotations

import copy
import math
import re
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import paramshape as ps


def snapshot(module: nn.Module) -> tuple:
    """Everything a failed call must leave untouched: class, tensor objects and their values."""
    tensors = {name: (id(t), t.detach().clone()) for name, t in module.state_dict(keep_vars=True).items()}
    classes = [type(m) for m in module.modules()]
    return classes, tensors


def assert_unchanged(module: nn.Module, before: tuple) -> None:
    classes, tensors = snapshot(module)
    assert classes == before[0]
    assert tensors.keys() == before[1].keys()
    for name, (identity, value) in tensors.items():
        assert identity == before[1][name][0], f"{name} is a different tensor object"
        torch.testing.assert_close(
            value, before[1][name][1], rtol=0, atol=0, equal_nan=True, msg=f"{name} changed"
        )


class Mixture(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((2, 3), 1 / 3))
        self.register_buffer("temperature", torch.tensor(0.5))


# ------------------------------------------------------------------------------------- usage
def test_issue_example_end_to_end():
    layer = nn.Linear(10, 5)
    weight_before = layer.weight.detach().clone()
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    ps.constrain(layer, "bias", "positive", init="project")
    torch.testing.assert_close(layer.weight, weight_before, rtol=0, atol=4e-7)
    assert ps.constraints(layer) == {
        "weight": layer.parametrizations.weight[0],
        "bias": layer.parametrizations.bias[0],
    }
    assert repr(ps.constraints(layer)["weight"]) == "Box(low=-1.0, high=1.0)"
    ps.unconstrain(layer)
    assert type(layer) is nn.Linear
    assert ps.constraints(layer) == {}
    torch.testing.assert_close(layer.weight, weight_before, rtol=0, atol=4e-7)


def test_dotted_path_and_constraints_listing():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
    ps.constrain(model, "0.weight", "box(-1, 1)")
    ps.constrain(model, "2.0.bias", ps.GreaterThan(-1.0), init="project")
    assert list(ps.constraints(model)) == ["0.weight", "2.0.bias"]
    assert (model[2][0].bias >= -1).all()


def test_buffers_and_bare_parameters_of_custom_modules():
    mix = Mixture()
    ps.constrain(mix, "logits", ps.Simplex(dim=-1))
    ps.constrain(mix, "temperature", "positive")
    assert "parametrizations.temperature.original" in dict(mix.named_buffers())
    torch.testing.assert_close(mix.logits.sum(-1), torch.ones(2))
    torch.testing.assert_close(mix.temperature, torch.tensor(0.5))


def test_conv_weight_with_per_channel_bounds():
    conv = nn.Conv2d(3, 4, kernel_size=3)
    high = torch.linspace(0.1, 0.4, 4).reshape(4, 1, 1, 1)
    with pytest.warns(ps.ParamshapeWarning, match="init='project' moved"):
        ps.constrain(conv, "weight", ps.Box(-high, high), init="project")
    assert (conv.weight.abs() <= high).all()
    conv(torch.randn(1, 3, 8, 8)).sum().backward()
    assert conv.parametrizations.weight.original.grad is not None


def test_same_parameter_object_keeps_optimizer_working():
    layer = nn.Linear(3, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    weight = layer.weight
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    assert layer.parametrizations.weight.original is weight
    before = layer.weight.detach().clone()
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.weight, before)
    assert (layer.weight.abs() <= 1).all()


def test_transform_instance_is_copied_per_tensor():
    box = ps.Box(-1.0, 1.0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2).double()
    ps.constrain(a, "weight", box)
    ps.constrain(b, "weight", box)
    assert ps.constraints(a)["weight"] is not box
    assert ps.constraints(b)["weight"].low.dtype == torch.float64
    assert box.low.dtype == torch.float32


# ------------------------------------------------------------------------------ init policies
def test_keep_round_trips_within_a_few_ulps():
    layer = nn.Linear(50, 40)
    with torch.no_grad():
        layer.weight.uniform_(-1, 1)
        layer.weight[0, 0] = 1 - 1e-6
    before = layer.weight.detach().clone()
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    assert ((layer.weight - before).abs() <= 4 * torch.finfo(torch.float32).eps).all()


def test_keep_refuses_infeasible_values_and_changes_nothing():
    layer = nn.Linear(10, 5)
    with torch.no_grad():
        layer.weight[2, 3] = 1.7
        layer.weight[4, 1] = -1.2
    before = snapshot(layer)
    with pytest.raises(ps.InfeasibleValueError) as error:
        ps.constrain(layer, "weight", ps.Box(-1, 1))
    message = str(error.value)
    assert "'weight' of Linear" in message
    assert "(shape (5, 10), float32)" in message
    assert "2 of 50 values" in message
    assert "value 1.7 at [2, 3] is above high=1.0" in message
    assert "init='project'" in message
    assert "init='raw'" in message
    assert "init='sample'" in message
    assert_unchanged(layer, before)


def test_project_moves_only_infeasible_values_inside_and_warns():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 2.0, -3.0, 0.0]] * 3))
    with pytest.warns(ps.ParamshapeWarning, match="moved 6 of 12 values"):
        ps.constrain(layer, "weight", ps.Box(-1, 1), init="project")
    row = layer.weight[0].detach()
    assert row[0] == pytest.approx(0.5, abs=1e-7)
    assert row[3] == pytest.approx(0.0, abs=1e-7)
    # Where the slope 1 - t^2 of c + r tanh(x / r) is 1/4: at t = sqrt(3/4) of the half-width.
    assert row[1] == pytest.approx(math.sqrt(3) / 2, abs=1e-6)
    assert row[2] == pytest.approx(-math.sqrt(3) / 2, abs=1e-6)


def test_raw_takes_current_values_as_unconstrained():
    layer = nn.Linear(6, 4)
    raw = layer.weight.detach().clone()
    ps.constrain(layer, "weight", "positive", init="raw")
    assert torch.equal(layer.parametrizations.weight.original.detach(), raw)
    torch.testing.assert_close(layer.weight, 0.25 * torch.log1p(torch.exp(4 * raw)))  # softness 1/4


def test_raw_refuses_non_finite_values():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ps.InfeasibleValueError, match="init='raw' needs finite values, but 1 of 4"):
        ps.constrain(layer, "weight", "positive", init="raw")


def test_sample_draws_a_fresh_feasible_value():
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.fill_(50.0)
    ps.constrain(layer, "weight", ps.Box(0, 1), init="sample")
    assert ((layer.weight > 0) & (layer.weight < 1)).all()
    assert layer.weight.std() > 0


def test_unknown_init_policy():
    with pytest.raises(ps.SpecError, match=r"init must be one of \['keep', 'project', 'raw', 'sample'\]"):
        ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)", init="clip")


# ------------------------------------------------------------------------ replace, not stack
def test_constraining_twice_replaces_instead_of_stacking():
    layer = nn.Linear(3, 3)
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    value = layer.weight.detach().clone()
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    assert len(layer.parametrizations.weight) == 1
    torch.testing.assert_close(layer.weight, value, rtol=0, atol=4e-7)
    ps.constrain(layer, "weight", ps.Box(-2, 2))
    assert ps.constraints(layer) == {"weight": layer.parametrizations.weight[0]}
    assert repr(layer.parametrizations.weight[0]) == "Box(low=-2.0, high=2.0)"
    torch.testing.assert_close(layer.weight, value, rtol=0, atol=1e-6)


def test_failed_replacement_keeps_the_previous_constraint():
    layer = nn.Linear(3, 3)
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    before = snapshot(layer)
    with pytest.raises(ps.InfeasibleValueError):
        ps.constrain(layer, "weight", ps.Box(0.9, 1.0))
    assert_unchanged(layer, before)
    assert repr(ps.constraints(layer)["weight"]) == "Box(low=-1.0, high=1.0)"


def test_foreign_parametrization_is_refused():
    layer = nn.Linear(3, 3)
    torch.nn.utils.parametrizations.orthogonal(layer, "weight")
    before = snapshot(layer)
    with pytest.raises(ps.ConstraintConflictError, match="not attach"):
        ps.constrain(layer, "weight", ps.Box(-1, 1))
    assert_unchanged(layer, before)


# -------------------------------------------------------------------------------- assignment
def test_assignment_stores_feasible_values_exactly():
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    value = torch.tensor([[0.25, -0.5, 0.999999], [-0.999999, 0.0, 1e-6]])
    layer.weight = value
    assert ((layer.weight - value).abs() <= 2 * torch.finfo(torch.float32).eps).all()


def test_infeasible_assignment_raises_and_changes_nothing():
    layer = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-1, 1))
    before = snapshot(layer)
    for bad, worst in (
        (torch.full((2, 3), 2.0), "value 2.0 at [0, 0] is above high=1.0"),
        (torch.tensor([[0.0, float("nan"), 0.0], [0.0] * 3]), "value nan at [0, 1] is not finite"),
    ):
        with pytest.raises(ps.InfeasibleValueError, match=re.escape(f"worst: {worst}")):
            layer.weight = bad
        assert_unchanged(layer, before)


def test_assigning_a_value_on_the_bound_is_accepted():
    layer = ps.constrain(nn.Linear(2, 1), "weight", ps.Box(-1, 1))
    layer.weight = torch.tensor([[1.0, -1.0]])
    assert torch.isfinite(layer.parametrizations.weight.original).all()
    torch.testing.assert_close(layer.weight, torch.tensor([[1.0, -1.0]]))


# ------------------------------------------------------------------------------- tied weights
def test_tied_weights_are_refused_with_explanation():
    model = nn.Module()
    model.embedding = nn.Embedding(10, 4)
    model.decoder = nn.Linear(4, 10, bias=False)
    model.decoder.weight = model.embedding.weight
    before = snapshot(model)
    with pytest.raises(
        ps.TiedTensorError, match=r"'embedding.weight' of Module is shared with 'decoder.weight'"
    ):
        ps.constrain(model, "embedding.weight", ps.Box(-1, 1))
    assert_unchanged(model, before)


def test_shared_memory_is_refused_too():
    model = nn.Module()
    model.a = nn.Linear(3, 3)
    model.b = nn.Linear(3, 3)
    model.b.weight = nn.Parameter(model.a.weight.detach().t())
    with pytest.raises(ps.TiedTensorError, match=re.escape("'b.weight'")):
        ps.constrain(model, "a.weight", "box(-1, 1)")


def test_a_submodule_reached_twice_is_not_a_tie():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    ps.constrain(model, "0.weight", "box(-1, 1)")
    assert (model[2].weight.abs() <= 1).all()


# ------------------------------------------------------------------------------- unconstrain
def test_unconstrain_one_tensor_keeps_values_and_parameter():
    layer = nn.Linear(3, 3)
    ps.constrain(layer, "weight", ps.Box(-1, 1))
    ps.constrain(layer, "bias", ps.Box(-1, 1))
    weight_object = layer.parametrizations.weight.original
    value = layer.weight.detach().clone()
    ps.unconstrain(layer, "weight")
    assert layer.weight is weight_object
    assert torch.equal(layer.weight.detach(), value)
    assert list(ps.constraints(layer)) == ["bias"]


def test_unconstrained_model_can_be_saved_whole(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3))
    ps.constrain(model, "0.weight", "box(-1, 1)")
    x = torch.randn(2, 3)
    expected = model(x)
    ps.unconstrain(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), expected)


def test_unconstrain_of_an_unconstrained_tensor_says_so():
    layer = ps.constrain(nn.Linear(2, 2), "weight", "positive", init="raw")
    with pytest.raises(
        ps.ConstraintConflictError,
        match=re.escape("'bias' of Linear carries no paramshape constraint. Constrained tensors: weight"),
    ):
        ps.unconstrain(layer, "bias")


# ------------------------------------------------------------------------------- bad input
def test_missing_tensor_suggests_close_names():
    model = nn.Sequential(nn.Linear(2, 2))
    before = snapshot(model)
    with pytest.raises(
        ps.TensorNotFoundError,
        match=r"Sequential has no parameter or buffer '0.wieght'. Did you mean '0.weight'",
    ):
        ps.constrain(model, "0.wieght", "positive")
    with pytest.raises(ps.TensorNotFoundError, match=re.escape("'1.weight'")):
        ps.constrain(model, "1.weight", "positive")
    with pytest.raises(ps.TensorNotFoundError):
        ps.constrain(nn.Linear(2, 2, bias=False), "bias", "positive")
    assert_unchanged(model, before)


def test_internal_parametrize_name_is_redirected():
    layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)")
    with pytest.raises(ps.TensorNotFoundError, match=re.escape("name the tensor itself, e.g. 'weight'")):
        ps.constrain(layer, "parametrizations.weight.original", "positive")


def test_non_floating_tensors_are_refused():
    module = nn.Module()
    module.register_buffer("counts", torch.arange(4))
    with pytest.raises(
        ps.UnsupportedTensorError, match=re.escape("has dtype torch.int64; only real floating")
    ):
        ps.constrain(module, "counts", "positive")


def test_not_a_module():
    with pytest.raises(ps.NotAModuleError, match=re.escape("Expected an nn.Module; got Tensor")):
        ps.constrain(torch.zeros(3), "weight", "positive")


def test_bounds_that_do_not_broadcast():
    layer = nn.Linear(4, 3)
    before = snapshot(layer)
    expected = "'low' has shape (5,), which does not broadcast to the tensor's shape (3, 4). "
    with pytest.raises(
        ps.ShapeMismatchError, match=re.escape(expected) + r".*\(3, 1\) for one bound per row"
    ):
        ps.constrain(layer, "weight", ps.Box(torch.full((5,), -1.0), 1.0))
    assert_unchanged(layer, before)


def test_simplex_dim_out_of_range():
    with pytest.raises(
        ps.ShapeMismatchError,
        match=r"Simplex\(dim=2\) is out of range for a tensor of shape \(5, 10\); use a dim in \[-2, 1\]",
    ):
        ps.constrain(nn.Linear(10, 5), "weight", "simplex(dim=2)")


def test_compiled_wrapper_is_unwrapped():
    layer = nn.Linear(2, 2)
    compiled = torch.compile(layer, backend="eager")
    ps.constrain(compiled, "weight", "box(-1, 1)")
    assert list(ps.constraints(layer)) == ["weight"]


class Broken(ps.Transform):
    """A user transform with a typo: its forward reads an attribute that does not exist."""

    def forward(self, x):
        return x * self.scale  # no such attribute

    def inverse(self, y):
        return y

    @property
    def codomain(self):
        return torch.distributions.constraints.real

    def _excess(self, y):
        return torch.zeros_like(y, dtype=torch.float64)

    def _describe(self, y, index):
        return ""

    def to_interior(self, y):
        return y


def test_attribute_error_inside_a_transform_is_not_masked():
    layer = nn.Linear(2, 2)
    before = snapshot(layer)
    with pytest.raises(ps.TransformError, match="'Broken' object has no attribute 'scale'"):
        ps.constrain(layer, "weight", Broken())
    assert_unchanged(layer, before)
    # Attached by hand (bypassing constrain's dry run), the read still names the real cause.
    parametrize.register_parametrization(layer, "weight", Broken(), unsafe=True)
    with pytest.raises(ps.TransformError, match="no attribute 'scale'"):
        _ = layer.weight


def test_deepcopy_of_a_constrained_model():
    model = nn.Sequential(nn.Linear(3, 3))
    ps.constrain(model, "0.weight", "box(-1, 1)")
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone[0].weight, model[0].weight)
    assert clone[0].parametrizations.weight.original is not model[0].parametrizations.weight.original


class LastIsZero(ps.Transform):
    """A shape-changing transform for the machinery tests: stores n - 1 numbers, appends a 0."""

    def forward(self, x):
        return torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)

    def inverse(self, y):
        return y[..., :-1].clone()

    def forward_shape(self, shape):
        return torch.Size((*shape[:-1], shape[-1] + 1))

    def inverse_shape(self, shape):
        return torch.Size((*shape[:-1], shape[-1] - 1))

    @property
    def codomain(self):
        return torch.distributions.constraints.real

    def _excess(self, y):
        return y[..., -1:].double().abs()

    def _describe(self, y, index):
        return f"the last entry of slice {index} is not 0"

    def to_interior(self, y):
        return torch.cat([y[..., :-1], torch.zeros_like(y[..., :1])], dim=-1)


def test_shape_changing_transforms_store_their_own_shape():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[:, -1] = 0
    weight = layer.weight
    before = layer.weight.detach().clone()
    ps.constrain(layer, "weight", LastIsZero())
    assert layer.parametrizations.weight.original is weight
    assert weight.shape == (3, 3)
    assert layer.weight.shape == (3, 4)
    assert torch.equal(layer.weight.detach(), before)
    layer(torch.randn(2, 4)).sum().backward()
    assert weight.grad.shape == (3, 3)
    ps.constrain(layer, "weight", LastIsZero(), init="sample")  # replaces, from the constrained value
    assert layer.weight.shape == (3, 4)
    assert len(layer.parametrizations.weight) == 1
    ps.unconstrain(layer)
    assert layer.weight is weight
    assert layer.weight.shape == (3, 4)


def test_shape_changing_transforms_refuse_raw_init():
    with pytest.raises(
        ps.SpecError, match="init='raw' needs a transform that stores a tensor of the value's shape"
    ):
        ps.constrain(nn.Linear(4, 3), "weight", LastIsZero(), init="raw")


def test_failed_replacement_of_a_shape_changing_transform_restores_it(monkeypatch):
    layer = nn.Linear(4, 3)
    ps.constrain(layer, "weight", LastIsZero(), init="sample")
    before = snapshot(layer)

    class Exploding(LastIsZero):
        def inverse(self, y):
            raise RuntimeError("boom")

    # Skip the dry run so the failure happens half-way through the registration.
    monkeypatch.setattr(sys.modules["paramshape.attach.planning"], "_dry_run", lambda *args: None)
    with pytest.raises(RuntimeError, match="boom"):
        ps.constrain(layer, "weight", Exploding(), init="keep")
    assert_unchanged(layer, before)
    assert type(ps.constraints(layer)["weight"]) is LastIsZero
