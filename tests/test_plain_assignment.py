"""Assigning numbers, arrays and tensors to a tensor kept plain (``method="project"``, ``"penalty"``,
``"lagrangian"``, ``"riemannian"``): converted by the reparametrised path's rule, checked, copied into
the same ``Parameter``; every refusal a paramshape error that leaves the module exactly as it was."""

from __future__ import annotations

import copy
import io
import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import paramshape as ps

S = 1 / math.sqrt(2)  # each row (1/sqrt 2, 1/sqrt 2) has unit norm
METHODS = ["project", "penalty", "lagrangian", "riemannian"]


def _layer(method: str) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(2, 2)
    if method == "riemannian":
        with torch.no_grad():
            layer.weight.fill_(S)  # on the unit-norm rows already
        return ps.constrain(layer, "weight", ps.UnitNorm(), method=method)
    return ps.constrain(layer, "weight", ps.Box(-1, 1), method=method)


def _inside(method: str) -> float:
    """A number inside the set (every element equal) for this method's constraint."""
    return S if method == "riemannian" else 0.5


def _snapshot(module: nn.Module) -> dict[str, Any]:
    return {
        "class": type(module),
        "class_dict": dict(vars(type(module))),
        "params": [(name, p, p.detach().clone()) for name, p in module._parameters.items()],
        "buffers": [(name, b, None if b is None else b.clone()) for name, b in module._buffers.items()],
        "hooks": [
            dict(getattr(module, key))
            for key in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks")
        ],
        "dict_keys": list(module.__dict__),
        "constraints": {k: (repr(v.transform), v.method) for k, v in ps.constraint_info(module).items()},
    }


def _assert_unchanged(module: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(module)
    assert after["class"] is before["class"]
    assert after["class_dict"] == before["class_dict"]
    assert [n for n, _, _ in after["params"]] == [n for n, _, _ in before["params"]]
    for (_, p_after, _), (_, p_before, v_before) in zip(after["params"], before["params"], strict=True):
        assert p_after is p_before
        assert torch.equal(p_after.detach(), v_before)
    assert [(n, b) for n, b, _ in after["buffers"]] == [(n, b) for n, b, _ in before["buffers"]]
    assert after["hooks"] == before["hooks"]
    assert after["dict_keys"] == before["dict_keys"]
    assert after["constraints"] == before["constraints"]


# ------------------------------------------------------------------------------ accepted values
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda v: v, id="float"),
        pytest.param(lambda v: [[v, v], [v, v]], id="list"),
        pytest.param(lambda v: np.full((2, 2), v), id="numpy-float64"),
        pytest.param(lambda v: torch.tensor(v), id="0-d-tensor"),
        pytest.param(lambda v: torch.tensor([v, v]), id="row-broadcast"),
        pytest.param(lambda v: torch.full((2, 2), v), id="full-tensor"),
        pytest.param(lambda v: torch.full((2, 2), v, dtype=torch.float64), id="float64-tensor"),
    ],
)
def test_value_is_copied_into_the_same_parameter(method: str, make: Any) -> None:
    layer = _layer(method)
    weight = layer.weight
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    value = _inside(method)
    layer.weight = make(value)
    assert layer.weight is weight  # the optimizer's tensor, written in place
    assert weight.dtype == torch.float32
    assert weight.requires_grad
    # Independent reference: the number rounded to float32 once.
    torch.testing.assert_close(
        weight.detach(), torch.full((2, 2), value, dtype=torch.float32), rtol=0, atol=0
    )
    assert optimizer.param_groups[0]["params"][0] is weight


@pytest.mark.parametrize("method", ["project", "penalty", "lagrangian"])
def test_int_and_integer_array_are_converted(method: str) -> None:
    layer = _layer(method)
    layer.weight = 0
    assert torch.equal(layer.weight.detach(), torch.zeros(2, 2))
    layer.weight = np.array([[1, 0], [0, -1]])
    assert torch.equal(layer.weight.detach(), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))


@pytest.mark.parametrize("method", ["penalty", "lagrangian"])
def test_penalty_methods_accept_finite_values_outside_the_set(method: str) -> None:
    layer = _layer(method)
    layer.weight = 3.0  # the penalty pulls it back; only NaN and inf are refused
    assert torch.equal(layer.weight.detach(), torch.full((2, 2), 3.0))


def test_assignment_then_optimizer_step_projects() -> None:
    layer = _layer("project")
    optimizer = torch.optim.SGD(layer.parameters(), lr=10.0)
    layer.weight = 0.9
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert float(layer.weight.detach().abs().max()) <= 1.0


# ------------------------------------------------------------------------------ refused values
REFUSALS = [
    pytest.param(
        torch.zeros(3, 3), ps.ShapeMismatchError, r"has shape \(3, 3\), which does not broadcast", id="shape"
    ),
    pytest.param([1.0, 2.0, 3.0], ps.ShapeMismatchError, r"has shape \(3,\)", id="list-shape"),
    pytest.param("0.5", ps.UnsupportedTensorError, "cannot assign a str", id="string"),
    pytest.param(True, ps.UnsupportedTensorError, "cannot assign a bool", id="bool"),
    pytest.param(0.5 + 1j, ps.UnsupportedTensorError, "cannot assign a complex", id="complex-number"),
    pytest.param(
        torch.full((2, 2), 0.5, dtype=torch.complex64),
        ps.UnsupportedTensorError,
        "complex value",
        id="complex-tensor",
    ),
    pytest.param(
        float("nan"), ps.InfeasibleValueError, r"not finite|NaN or infinite|norm (nan|inf)", id="nan"
    ),
    pytest.param(
        float("inf"), ps.InfeasibleValueError, r"not finite|NaN or infinite|norm (nan|inf)", id="inf"
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("value", "error", "match"), REFUSALS)
def test_refusal_names_the_tensor_and_changes_nothing(
    method: str, value: Any, error: type, match: str
) -> None:
    layer = _layer(method)
    before = _snapshot(layer)
    with pytest.raises(error, match=match) as info:
        layer.weight = value
    assert "'weight' of Linear" in str(info.value)
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("method", ["project", "riemannian"])
def test_value_outside_the_set_is_refused_like_a_parameter(method: str) -> None:
    layer = _layer(method)
    before = _snapshot(layer)
    with pytest.raises(ps.InfeasibleValueError, match=f"method='{method}' is projected only after") as info:
        layer.weight = 2.0
    assert "a value assigned to it must already lie in the set" in str(info.value)
    assert "Nothing was changed." in str(info.value)
    _assert_unchanged(layer, before)


def test_nan_for_penalty_names_the_count() -> None:
    layer = _layer("penalty")
    with pytest.raises(
        ps.InfeasibleValueError, match=r"1 of 4 values of the value assigned are NaN or infinite"
    ):
        layer.weight = [[0.0, float("nan")], [0.0, 0.0]]


@pytest.mark.parametrize("method", METHODS)
def test_none_keeps_torch_behaviour_and_the_constraint_follows(method: str) -> None:
    layer = _layer(method)
    layer.weight = None  # torch allows it for a plain Parameter; paramshape keeps the entry
    assert layer.weight is None
    with pytest.raises(TypeError, match="cannot assign 'float' as parameter 'weight'"):
        layer.weight = 0.5  # no tensor to write into: torch's own message
    replacement = nn.Parameter(torch.full((2, 2), _inside(method)))
    layer.weight = replacement
    layer.weight = _inside(method) / 2 if method != "riemannian" else _inside(method)
    assert layer.weight is replacement
    assert ps.constraint_info(layer)["weight"].method == method


# ------------------------------------------------------------------------------ the class
@pytest.mark.parametrize("method", METHODS)
def test_class_keeps_its_name_and_unconstrain_restores_it(method: str) -> None:
    layer = _layer(method)
    assert type(layer).__name__ == "Linear"
    assert isinstance(layer, nn.Linear)
    assert type(layer) is not nn.Linear
    ps.unconstrain(layer)
    assert type(layer) is nn.Linear
    with pytest.raises(TypeError, match="cannot assign 'float' as parameter 'weight'"):
        layer.weight = 0.5  # torch's own rule again


def test_other_names_and_parameters_keep_torch_behaviour() -> None:
    layer = _layer("project")
    layer.bias = nn.Parameter(torch.zeros(2))  # unconstrained: replaced as torch does
    assert torch.equal(layer.bias.detach(), torch.zeros(2))
    with pytest.raises(TypeError, match="cannot assign 'float' as parameter 'bias'"):
        layer.bias = 0.5
    layer.note = "kept"
    assert layer.note == "kept"


def test_reparam_tensor_beside_a_plain_one() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1), method="project")
    ps.constrain(layer, "bias", ps.Box(-1, 1))
    assert type(layer).__name__ == "ParametrizedLinear"
    layer.weight = 0.25
    layer.bias = 0.5
    assert torch.equal(layer.weight.detach(), torch.full((2, 2), 0.25))
    copied = pickle.loads(pickle.dumps(layer))  # parametrize's class on top of the assignment class
    copied.weight = 0.375
    assert torch.equal(copied.weight.detach(), torch.full((2, 2), 0.375))
    with pytest.raises(ps.InfeasibleValueError):
        copied.weight = 2.0
    ps.unconstrain(layer, "bias")
    layer.weight = 0.125
    assert torch.equal(layer.weight.detach(), torch.full((2, 2), 0.125))
    ps.unconstrain(layer)
    assert type(layer) is nn.Linear


def test_plain_after_reparam_on_the_same_module() -> None:
    layer = ps.constrain(nn.Linear(2, 2), "bias", ps.Box(-1, 1))
    ps.constrain(layer, "weight", ps.Box(-1, 1), method="penalty")
    layer.weight = 0.75
    assert torch.equal(layer.weight.detach(), torch.full((2, 2), 0.75))
    ps.unconstrain(layer, "bias")  # parametrize's class goes; the plain tensor still converts
    layer.weight = 0.5
    assert torch.equal(layer.weight.detach(), torch.full((2, 2), 0.5))
    ps.unconstrain(layer)
    assert type(layer) is nn.Linear


# ------------------------------------------------------------------------------ copies and saving
def test_deepcopy_pickle_and_torch_save_keep_the_behaviour() -> None:
    model = nn.Sequential(_layer("project"), nn.ReLU())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
        torch.load(buffer, weights_only=False),
    ]
    for other in copies:
        assert type(other[0]).__name__ == "Linear"
        other[0].weight = 0.25
        assert torch.equal(other[0].weight.detach(), torch.full((2, 2), 0.25))
        assert not torch.equal(model[0].weight.detach(), torch.full((2, 2), 0.25))
        with pytest.raises(ps.InfeasibleValueError):
            other[0].weight = 2.0
        assert ps.constraint_info(other)["0.weight"].method == "project"


def test_state_dict_moves_and_named_parameters() -> None:
    layer = _layer("project")
    names = [name for name, _ in layer.named_parameters()]
    assert names == ["weight", "bias"]
    state = layer.state_dict()
    fresh = _layer("project")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight.detach(), layer.weight.detach())
    layer.double()
    layer.weight = 0.1
    assert layer.weight.dtype == torch.float64
    assert float(layer.weight.detach()[0, 0]) == 0.1  # converted at the tensor's (new) precision


def test_torch_compile_of_a_module_with_the_assignment_class() -> None:
    torch._dynamo.reset()
    layer = _layer("project")
    compiled = torch.compile(layer, backend="eager")
    x = torch.ones(1, 2)
    torch.testing.assert_close(compiled(x), layer(x))
    layer.weight = 0.25  # through the original module: the compiled one reads the same Parameter
    torch.testing.assert_close(compiled(x), x @ torch.full((2, 2), 0.25) + layer.bias.detach())
