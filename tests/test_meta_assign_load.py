"""Loading with ``assign=True`` into a constrained model built on the meta device (the deferred
initialisation path of large models): the model's own checkpoint format is taken as is, bounds
included; a plain (constrained-value) checkpoint is refused by name instead of leaving meta tensors."""

import pytest
import torch
from torch import nn

import paramshape as ps


def _meta_constrained(spec: str) -> nn.Linear:
    with torch.device("meta"):
        layer = nn.Linear(3, 2)
    ps.constrain(layer, "weight", spec)
    return layer


@pytest.mark.parametrize("spec", ["box(-1, 1)", "greater_than(0.5)", "positive"])
def test_the_models_own_checkpoint_loads_with_assign_into_a_meta_model(spec: str) -> None:
    source = ps.constrain(nn.Linear(3, 2), "weight", spec, init="sample")
    layer = _meta_constrained(spec)
    layer.load_state_dict(source.state_dict(), assign=True)
    assert layer.weight.device.type == "cpu"
    torch.testing.assert_close(layer.weight, source.weight, rtol=0, atol=0)
    assert ps.constraints(layer)["weight"].contains(layer.weight).all()


def test_bounds_from_the_checkpoint_replace_the_meta_ones() -> None:
    source = ps.constrain(nn.Linear(3, 2), "weight", ps.Box(-2.0, 3.0), init="sample")
    layer = _meta_constrained("box(-2, 3)")
    layer.load_state_dict(source.state_dict(), assign=True)
    box = ps.constraints(layer)["weight"]
    assert box.low.device.type == "cpu"
    assert float(box.low) == -2.0
    assert float(box.high) == 3.0


def test_a_plain_checkpoint_with_assign_into_a_meta_model_is_refused_by_name() -> None:
    source = ps.constrain(nn.Linear(3, 2), "weight", "box(-1, 1)", init="sample")
    layer = _meta_constrained("box(-1, 1)")
    with pytest.raises(ps.UnsupportedTensorError, match=r"'weight' of Linear .*assign=True .*meta device"):
        layer.load_state_dict(ps.plain_state_dict(source), assign=True)
    assert layer.parametrizations.weight.original.device.type == "meta"
