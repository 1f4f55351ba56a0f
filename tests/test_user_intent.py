"""Calls that should do what their user means (issue 16): patterns over models with BatchNorm,
parameter groups for weight decay, output bounds and checkpoints, log-probabilities from Simplex."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import paramshape as ps


def bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


PARAMETERS = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


# ------------------------------------------------------------------ patterns skip what cannot be constrained
@pytest.mark.parametrize("method", ["project", "penalty"])
def test_star_pattern_with_a_plain_method_takes_every_parameter_and_no_buffer(method):
    model = bn_model()
    ps.constrain(model, "*", ps.Box(-1, 1), method=method, init="project")
    assert list(ps.constraint_info(model)) == PARAMETERS
    assert {info.method for info in ps.constraint_info(model).values()} == {method}
    # The model still trains, and BatchNorm still updates its running statistics.
    before = model[1].running_mean.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    loss = model(torch.randn(16, 3) + 2).square().mean()
    (loss + ps.penalty(model)).backward()
    optimizer.step()
    assert not torch.equal(model[1].running_mean, before)
    if method == "project":
        for name in PARAMETERS:
            assert model.get_parameter(name).abs().max() <= 1, name


def test_star_pattern_mapping_form_skips_buffers_too():
    model = bn_model()
    ps.constrain(model, {"*": "box(-1, 1)"}, method="project", init="project")
    assert list(ps.constraints(model)) == PARAMETERS


def test_star_pattern_with_reparam_skips_the_running_statistics():
    model = bn_model()
    ps.constrain(model, "*", ps.Box(-2, 2))
    assert list(ps.constraints(model)) == PARAMETERS
    model(torch.randn(8, 3))  # BatchNorm updates running_mean in place: still works


def test_a_named_buffer_with_project_raises_without_suggesting_a_fix_that_fails():
    model = bn_model()
    with pytest.raises(ps.UnsupportedTensorError, match=r"'1\.running_mean'.*no method can constrain it"):
        ps.constrain(model, "1.running_mean", ps.Box(-1, 1), method="project")
    # Before: the message said to use method='reparam', which raises another error.
    with pytest.raises(ps.ConstraintConflictError, match="in place"):
        ps.constrain(model, "1.running_mean", ps.Box(-1, 1))
    assert ps.constraints(model) == {}


def test_a_pattern_matching_only_what_the_method_cannot_take_raises_as_the_name_would():
    model = bn_model()
    with pytest.raises(ps.UnsupportedTensorError, match=r"'1\.running_mean'.*no method can constrain it"):
        ps.constrain(model, "*running*", ps.Box(-1, 1), method="project")
    with pytest.raises(ps.ConstraintConflictError, match="updates 'running_mean' in place"):
        ps.constrain(model, {"1.running_*": "positive"})
    with pytest.raises(ps.TensorNotFoundError, match=r"'\*nothing\*' matches no.*0\.weight"):
        ps.constrain(model, "*nothing*", ps.Box(-1, 1), method="project")
    assert ps.constraints(model) == {}


def test_an_ordinary_buffer_is_still_matched_by_a_pattern_under_reparam():
    holder = nn.Module()
    holder.register_buffer("scale", torch.tensor([0.5, 0.25]))
    ps.constrain(holder, "sc*", "positive")
    assert list(ps.constraints(holder)) == ["scale"]


# ------------------------------------------------------------------ param_groups
def ids(group):
    return {id(p) for p in group["params"]}


def test_param_groups_keep_projected_tensors_out_of_weight_decay_when_asked():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    ps.constrain(model, "0.weight", ps.Box(-1, 1), method="project", init="project")
    ps.constrain(model, "2.weight", ps.Box(-1, 1))
    default = ps.param_groups(model, weight_decay=0.1)
    # By default a projected parameter is decayed like a plain one: it holds its real value.
    assert id(model[0].weight) in ids(default[0])
    assert default[0]["weight_decay"] == 0.1
    groups = ps.param_groups(model, weight_decay=0.1, projected={"weight_decay": 0.0})
    assert [len(g["params"]) for g in groups] == [4, 1, 1]
    assert ids(groups[1]) == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0
    stored = model[2].parametrizations.weight.original
    assert ids(groups[2]) == {id(stored)}
    assert groups[2]["weight_decay"] == 0.0
    # Every trainable parameter is in exactly one group.
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    # With a zero loss only decay acts: the projected weight does not move, the plain one does.
    projected_before = model[0].weight.detach().clone()
    plain_before = model[2].bias.detach().clone()
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        (0 * model(torch.randn(2, 3)).sum()).backward()
        optimizer.step()
    assert torch.equal(model[0].weight.detach(), projected_before)
    assert not torch.equal(model[2].bias.detach(), plain_before)


def test_param_groups_decay_1d_false_moves_biases_and_norm_gains_out_of_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    ps.constrain(model, "2.bias", "positive", init="raw")  # a constrained bias follows its constraint
    groups = ps.param_groups(model, weight_decay=0.1, decay_1d=False)
    assert ids(groups[0]) == {id(model[0].weight), id(model[2].weight)}
    assert groups[0]["weight_decay"] == 0.1
    assert ids(groups[1]) == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert groups[1]["weight_decay"] == 0.0
    assert ids(groups[2]) == {id(model[2].parametrizations.bias.original)}
    # The default decays them, as model.parameters() would.
    assert len(ps.param_groups(model, weight_decay=0.1)[0]["params"]) == 5


# ------------------------------------------------------------------ bound_output and checkpoints
def test_a_checkpoint_of_the_hand_written_model_loads_strictly_into_the_bounded_one():
    torch.manual_seed(0)
    hand_written = nn.Linear(4, 2)
    bounded = ps.bound_output(nn.Linear(4, 2), ps.Box(-1, 1))
    assert list(bounded.state_dict()) == ["weight", "bias"]
    bounded.load_state_dict(hand_written.state_dict(), strict=True)
    x = 10 * torch.randn(6, 4)
    torch.testing.assert_close(bounded(x), ps.Box(-1, 1)(hand_written(x)))


def test_a_bound_changed_in_code_wins_over_an_old_checkpoint_with_a_warning():
    old = {**nn.Linear(4, 2).state_dict(), "output_bound.low": torch.tensor(-1.0)}
    old["output_bound.high"] = torch.tensor(1.0)
    model = ps.bound_output(nn.Linear(4, 2), ps.Box(-3, 3))
    with pytest.warns(ps.ParamshapeWarning, match=r"output_bound\.low.*checkpoint -1\.0, code -3\.0"):
        model.load_state_dict(old, strict=True)
    assert model.output_bound.low.item() == -3.0
    assert model.output_bound.high.item() == 3.0
    # Equal bounds in an old checkpoint load silently.
    same = ps.bound_output(nn.Linear(4, 2), ps.Box(-1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(old, strict=True)


def test_bounds_stay_out_of_the_state_dict_after_copy_pickle_and_rebounding():
    model = ps.bound_output(nn.Linear(4, 2), ps.Box(-1, 1))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert list(clone.state_dict()) == ["weight", "bias"]
        assert clone.output_bound.high.item() == 1.0
    ps.bound_output(model, ps.Box(0, 2))
    assert len(model._load_state_dict_pre_hooks) == 1
    ps.bound_output(model, None)
    assert not model._load_state_dict_pre_hooks
    assert list(model.state_dict()) == ["weight", "bias"]


def test_learned_state_of_an_output_layer_stays_in_the_state_dict():
    temperature = ps.bound_output(nn.Linear(3, 4), ps.TemperatureSoftmax(bounds=(0.1, 10.0)))
    assert list(temperature.state_dict()) == [
        "weight",
        "bias",
        "output_bound.parametrizations.temperature.original",
    ]
    normed = ps.bound_output(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert "output_bound.running_mean" in normed.state_dict()


# ------------------------------------------------------------------ Simplex(log=True)
@pytest.mark.parametrize("method", ["softmax", "ilr"])
def test_simplex_log_returns_the_log_of_the_probabilities(method):
    x = torch.randn(5, 3 if method == "ilr" else 4, dtype=torch.float64)
    probabilities = ps.Simplex(method=method)(x)
    logs = ps.Simplex(method=method, log=True)(x)
    torch.testing.assert_close(logs, probabilities.log())


def test_simplex_log_stays_finite_where_a_probability_underflows():
    logits = torch.tensor([[0.0, -200.0, 200.0]])
    logs = ps.Simplex(log=True)(logits)
    assert torch.isfinite(logs).all()
    assert ps.Simplex()(logits)[0, 1] == 0  # its log would be -inf


def test_simplex_log_as_an_output_layer_feeds_nll_loss():
    torch.manual_seed(0)
    head = ps.bound_output(nn.Linear(4, 3), ps.Simplex(log=True))
    x, target = torch.randn(8, 4), torch.randint(0, 3, (8,))
    logits = nn.functional.linear(x, head.weight, head.bias)
    torch.testing.assert_close(nn.NLLLoss()(head(x), target), nn.CrossEntropyLoss()(logits, target))
    assert repr(head.output_bound) == "Simplex(dim=-1, log=True)"


@pytest.mark.parametrize("spec", [ps.Simplex(log=True), "simplex(log=True)"])
def test_simplex_log_cannot_constrain_a_tensor(spec):
    model = nn.Linear(3, 3)
    with pytest.raises(ps.SpecError, match=r"log-probabilities.*outputs only"):
        ps.constrain(model, "weight", spec)
    assert ps.constraints(model) == {}


def test_simplex_log_rejects_a_non_bool():
    with pytest.raises(ps.SpecError, match="log must be True or False"):
        ps.Simplex(log=1)
