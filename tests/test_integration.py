"""Integration tests of the strategies, checkpoints and gradients, each against an independent
expectation: several parameter groups and optimizers at once, the penalty against the exact squared
distance, a bad value in the last module of a checkpoint, a saturated value that must come back, and
bounds that require grad through every fusion mode."""

from __future__ import annotations

import math
import pickle
import re

import pytest
import torch
from torch import Tensor, nn

import paramshape as ps

# ------------------------------------------------------------------ project: groups and optimizers


def test_project_acts_on_every_group_of_every_optimizer():
    """Each optimizer's step projects every parameter it holds, in every group (a hook acting on the
    first group only let a second group's weight reach 99 in Box(-1, 1))."""
    first, second, third = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    for layer in (first, second, third):
        ps.constrain(layer, "weight", ps.Box(-1.0, 1.0), method="project", init="project")
    sgd = torch.optim.SGD([{"params": [first.weight]}, {"params": [second.weight], "lr": 10.0}], lr=10.0)
    adam = torch.optim.Adam([{"params": [third.weight], "lr": 5.0}])
    for _ in range(5):
        sgd.zero_grad()
        adam.zero_grad()
        loss = -sum((layer.weight * 50).sum() for layer in (first, second, third))
        loss.backward()
        sgd.step()
        adam.step()
        for layer in (first, second, third):
            assert float(layer.weight.detach().max()) == 1.0, "a group's weight left Box(-1, 1)"
    for layer in (first, second, third):
        torch.testing.assert_close(layer.weight, torch.ones(3, 3), rtol=0, atol=0)


def test_project_acts_on_a_module_that_also_holds_a_penalty_tensor():
    """One module, two methods: the weight projected, the bias penalised. The module's projecting
    tensor must still be clamped after each step (a registry that tracked only modules whose every
    tensor projects left this weight at 51)."""
    layer = nn.Linear(3, 3)
    ps.constrain(layer, "weight", ps.Box(-1.0, 1.0), method="project", init="project")
    ps.constrain(layer, "bias", ps.Box(-1.0, 1.0), method="penalty", init="project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    optimizer.zero_grad()
    (-(layer.weight * 50).sum() - (layer.bias * 50).sum()).backward()
    optimizer.step()
    torch.testing.assert_close(layer.weight, torch.ones(3, 3), rtol=0, atol=0)
    assert float(layer.bias.detach().min()) > 1.0, "the penalised bias was projected"


class _Doubled(nn.Module):
    """A plain torch parametrization (not paramshape's), for a module that holds both kinds."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x

    def right_inverse(self, y: Tensor) -> Tensor:
        return y / 2


def test_a_pickled_module_with_a_torch_parametrization_beside_a_constraint_keeps_its_checks():
    """Unpickling rebuilds every parametrization of a module; paramshape's checks (assignment, the
    getter that notices lost writes) come back when any one of them is paramshape's, not only when
    all are."""
    layer = nn.Linear(2, 2)
    torch.nn.utils.parametrize.register_parametrization(layer, "bias", _Doubled())
    ps.constrain(layer, "weight", ps.Box(-1.0, 1.0))
    restored = pickle.loads(pickle.dumps(layer))
    with pytest.raises(ps.InfeasibleValueError, match="weight"):
        restored.weight = torch.full((2, 2), 5.0)
    restored.weight = torch.full((2, 2), 0.5)
    torch.testing.assert_close(restored.weight, torch.full((2, 2), 0.5))
    with torch.no_grad():
        restored.weight.mul_(2)  # lost: the value is recomputed at the next read, which says so
    with pytest.warns(ps.ParamshapeWarning, match="written in place"):
        _ = restored.weight


# ------------------------------------------------------------------ penalty: the exact distance
def _simplex_projection(v: Tensor) -> Tensor:
    """Euclidean projection of each row onto the probability simplex (sort and threshold, written
    here from the textbook algorithm, not from paramshape)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    support = (u - cumulative / k > 0).sum(-1, keepdim=True)
    theta = cumulative.gather(-1, support - 1) / support
    return (v - theta).clamp_min(0.0)


PROJECTIONS = [
    ("box", lambda: ps.Box(-1.0, 0.5), lambda v: v.clamp(-1.0, 0.5)),
    ("unit_interval", lambda: ps.UnitInterval(), lambda v: v.clamp(0.0, 1.0)),
    ("positive", lambda: ps.Positive(), lambda v: v.clamp_min(0.0)),
    ("greater_than", lambda: ps.GreaterThan(0.25), lambda v: v.clamp_min(0.25)),
    ("less_than", lambda: ps.LessThan(-0.25), lambda v: v.clamp_max(-0.25)),
    ("soft_clip", lambda: ps.SoftClip(-0.5, 0.5), lambda v: v.clamp(-0.5, 0.5)),
    ("simplex", lambda: ps.Simplex(), _simplex_projection),
    ("sum_to_zero", lambda: ps.SumToZero(), lambda v: v - v.mean(-1, keepdim=True)),
    ("symmetric", lambda: ps.Symmetric(), lambda v: (v + v.mT) / 2),
]


@pytest.mark.parametrize(("name", "build", "exact"), PROJECTIONS, ids=[p[0] for p in PROJECTIONS])
def test_penalty_is_the_weighted_squared_distance_and_its_gradient(name, build, exact):
    value = torch.randn(4, 4, dtype=torch.float64) * 2
    module = nn.Module()
    module.w = nn.Parameter(exact(value))  # a member, so init="keep" keeps it
    ps.constrain(module, "w", build(), method="penalty", weight=0.5)
    with torch.no_grad():
        module.w.copy_(value)  # a penalty lets the optimizer leave the set: start outside it
    penalty = ps.penalty(module)
    distance = value - exact(value)
    torch.testing.assert_close(penalty, 0.5 * (distance**2).sum(), rtol=1e-12, atol=1e-12)
    assert float(penalty.detach()) > 0, "the draw was feasible; the comparison is void"
    penalty.backward()
    torch.testing.assert_close(module.w.grad, 2 * 0.5 * distance, rtol=1e-12, atol=1e-12)


def test_penalty_counts_only_the_distance_beyond_the_membership_tolerance():
    """Elementwise, the penalty is (|y - P(y)| - tau)_+^2 with tau four ulps of the bound (the tolerance
    of contains, documented in ps.penalty): a value contains() accepts counts exactly 0, and one past
    it counts its distance minus tau, not the plain distance (which would penalise accepted values
    at the margin and differ by 2 % at 1e-13 past a bound of 1 in float64)."""
    tau = 4 * torch.finfo(torch.float64).eps  # four ulps of the bound 1
    value = torch.tensor([1 + 1e-13, 1 + 2e-12, 1 + tau / 2, 0.5], dtype=torch.float64)
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    ps.constrain(module, "w", ps.Box(-1.0, 1.0), method="penalty", weight=1.0)
    with torch.no_grad():
        module.w.copy_(value)
    assert ps.constraints(module)["w"].contains(value).tolist() == [False, False, True, True]
    gap = (value[:2] - 1) - tau
    penalty = ps.penalty(module)
    torch.testing.assert_close(penalty, (gap**2).sum(), rtol=1e-9, atol=0.0)
    penalty.backward()
    torch.testing.assert_close(module.w.grad[:2], 2 * gap, rtol=1e-9, atol=0.0)
    assert module.w.grad[2:].tolist() == [0.0, 0.0]


# -------------------------------------------------------------- checkpoints: the last module
def test_an_infeasible_value_in_the_last_constrained_module_loads_nothing():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Linear(3, 2))
    for path in ("0.weight", "2.weight", "3.weight"):
        ps.constrain(model, path, ps.Box(-1.0, 1.0), init="project")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    plain = ps.plain_state_dict(model)
    plain = {key: value.clone() for key, value in plain.items()}
    plain["0.weight"].fill_(0.25)
    plain["2.weight"].fill_(0.5)
    plain["3.weight"][-1, -1] = 1.5  # the very last entry of the last constrained module
    with pytest.raises(ps.InfeasibleValueError, match=r"3\.weight"):
        model.load_state_dict(plain)
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed by a refused load"


class _Restorer(nn.Module):
    """A module that loads a checkpoint into its child from one of its own methods, as training
    frameworks do (the call stack then holds a module frame above load_state_dict's)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))

    def restore(self, checkpoint: dict) -> None:
        self.inner.load_state_dict(checkpoint)


def test_a_refused_partial_load_names_a_module_torch_loaded_one_tensor_of():
    """Constrained layer by layer (not from the root), a refused load cannot undo what torch wrote
    before the check ran: the message names the plain modules it loaded, a module counting as loaded
    when the checkpoint holds any one of its tensors (here '0' without its bias, strict=False)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model[1], "weight", ps.Box(-1.0, 1.0), init="sample")
    state = dict(ps.plain_state_dict(model))
    del state["0.bias"]
    state["0.weight"] = torch.full((2, 2), 7.0)
    state["1.weight"] = torch.full((2, 2), 5.0)
    with pytest.raises(
        ps.InfeasibleValueError, match=r"No constrained tensor was loaded\. .*: '0' \(Linear\); constrain"
    ):
        model.load_state_dict(state, strict=False)
    assert torch.equal(model[0].weight.detach(), torch.full((2, 2), 7.0))  # what the message says


def test_a_refused_load_from_the_root_says_nothing_was_loaded():
    model = ps.constrain(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "1.weight", ps.Box(-1.0, 1.0))
    state = dict(ps.plain_state_dict(model))
    state["1.weight"] = torch.full((2, 2), 5.0)
    with pytest.raises(ps.InfeasibleValueError, match=r"Nothing was loaded\.") as info:
        model.load_state_dict(state)
    assert "torch loaded these modules" not in str(info.value)


@pytest.mark.parametrize("method", ["reparam", "project"])
def test_a_checkpoint_entry_that_is_not_a_tensor_gets_torchs_message_naming_the_key(method):
    """paramshape's check passes a non-tensor entry by (it has no shape or values to check), and
    load_state_dict's own error names the key, rather than an AttributeError from inside the check."""
    model = ps.constrain(nn.Sequential(nn.Linear(3, 3)), "0.weight", ps.Box(-0.5, 0.5), method=method)
    state = dict(model.state_dict())
    key = next(key for key in state if "weight" in key)
    state[key] = 0.25
    with pytest.raises(RuntimeError, match=rf'"{re.escape(key)}", expected torch\.Tensor'):
        model.load_state_dict(state)


def test_a_checkpoint_loaded_from_inside_a_module_method_is_checked_as_a_whole():
    holder = _Restorer()
    for path in ("0.weight", "1.weight"):
        ps.constrain(holder.inner, path, ps.Box(-1.0, 1.0), init="project")
    checkpoint = {key: value.clone() for key, value in ps.plain_state_dict(holder.inner).items()}
    checkpoint["0.weight"].fill_(0.5)
    holder.restore(checkpoint)
    assert torch.equal(holder.inner[0].weight, torch.full((2, 2), 0.5))
    before = {key: value.clone() for key, value in holder.inner.state_dict().items()}
    checkpoint["0.weight"].fill_(0.25)
    checkpoint["1.weight"][-1, -1] = 1.5  # refused: nothing may load, 0.weight included
    with pytest.raises(ps.InfeasibleValueError, match=r"1\.weight"):
        holder.restore(checkpoint)
    for key, value in holder.inner.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused load"


def test_a_penalty_checkpoint_with_a_nan_is_refused_by_name():
    """A penalty may leave the set, so its checkpoint values are checked for finiteness only."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ps.constrain(model, "1.weight", ps.Box(-1.0, 1.0), method="penalty")
    checkpoint = {key: value.clone() for key, value in model.state_dict().items()}
    checkpoint["1.weight"][0, 1] = math.nan
    checkpoint["0.weight"].fill_(0.25)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ps.InfeasibleValueError, match=r"'1\.weight' of Sequential .*1 of 4 values are NaN"):
        model.load_state_dict(checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused load"


def test_an_integer_checkpoint_tensor_is_checked_as_the_value_it_loads_as():
    """load_state_dict casts an integer tensor into a float parameter; the check sees the cast value
    (it raised torch.finfo's TypeError on the integer dtype)."""
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1.0, 1.0), method="project")
    checkpoint = dict(layer.state_dict())
    checkpoint["weight"] = torch.tensor([[1, 0], [-1, 0]])
    layer.load_state_dict(checkpoint)
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    checkpoint["weight"] = torch.tensor([[2, 0], [0, 0]])
    with pytest.raises(ps.InfeasibleValueError, match=r"'weight' of Linear"):
        layer.load_state_dict(checkpoint)
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))


# ------------------------------------------------------------ a saturated value comes back
#: (name, transform, outward direction, saturated stored value): 30 units of the map's own scale
#: past the point where it bends (the one-sided maps' softness is 0.25, UnitInterval is sigma(4x),
#: SoftClip's hinges are softness * (high - low) = 0.04 wide).
SATURATING = [
    ("box", lambda: ps.Box(-1.0, 1.0), 1.0, 30.0),
    ("unit_interval", lambda: ps.UnitInterval(), 1.0, 7.5),
    ("positive", lambda: ps.Positive(), -1.0, -7.5),
    ("greater_than", lambda: ps.GreaterThan(0.5), -1.0, -7.5),
    ("less_than", lambda: ps.LessThan(-1.0), 1.0, 7.5),
    ("soft_clip", lambda: ps.SoftClip(-1.0, 1.0), 1.0, 1.0 + 30 * 0.04),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "build", "outward", "start"), SATURATING, ids=[s[0] for s in SATURATING])
def test_a_saturated_value_comes_back_when_the_gradient_reverses(name, build, outward, start, dtype):
    """Push the stored value deep into saturation, then reverse the loss: the value must leave the
    bound (a softplus whose gradient is cut to zero below -20 keeps it there for ever)."""
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(4, dtype=dtype))
    ps.constrain(module, "w", build(), init="sample")
    stored = module.parametrizations.w.original
    with torch.no_grad():
        stored.fill_(start)
    saturated = module.w.detach().clone()
    # Adam's step is lr * m / (sqrt(v) + eps): with eps far below the gradient (1e-13 here) its size
    # does not depend on the gradient's, only on the gradient not being zero.
    optimizer = torch.optim.Adam(module.parameters(), lr=2.0, eps=1e-30)
    for _ in range(20):
        optimizer.zero_grad()
        (outward * module.w).sum().backward()  # minimising pulls the value back inward
        optimizer.step()
    moved = (stored.detach() - start) * outward
    assert bool((moved < -10).all()), f"the stored value moved by {moved.tolist()}"
    assert bool(((module.w.detach() - saturated) * outward < 0).all()), "the value did not come back"


# ------------------------------------------------------ bounds that require grad, every path
def _box_sum(low: float, high: float, x: torch.Tensor) -> float:
    with ps.fusion("off"):
        return float(ps.Box(low, high).double()(x.double()).sum())


@pytest.mark.parametrize("mode", ["off", "on", "auto"])
def test_a_bound_that_requires_grad_gets_its_gradient_in_every_fusion_mode(mode):
    """The bounds' gradients match central differences of the map in the bounds: the fused kernels
    take bounds as constants, so they must not run when a bound requires grad."""
    box = ps.Box(-1.0, 2.0).double()
    box.low.requires_grad_(True)
    box.high.requires_grad_(True)
    x = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)
    with ps.fusion(mode):
        y = box(x)
    y.sum().backward()
    assert box.low.grad is not None, "the lower bound received no gradient"
    assert box.high.grad is not None, "the upper bound received no gradient"
    h = 1e-6
    d_low = (_box_sum(-1.0 + h, 2.0, x) - _box_sum(-1.0 - h, 2.0, x)) / (2 * h)
    d_high = (_box_sum(-1.0, 2.0 + h, x) - _box_sum(-1.0, 2.0 - h, x)) / (2 * h)
    assert abs(float(box.low.grad) - d_low) <= 1e-6 * (1 + abs(d_low))
    assert abs(float(box.high.grad) - d_high) <= 1e-6 * (1 + abs(d_high))
    assert abs(d_low) > 0.1, "the map does not depend on the lower bound; the check is void"
