"""The name ``parametrizations``, under which torch's parametrize keeps a module's parametrizations,
taken by a model for something of its own: a submodule elsewhere in the model never disturbs the
constraints of other tensors (every method, training, checkpoints, copies, moves), and constraining
a tensor under it, or reparametrising a tensor of a module that holds such an attribute, is refused
with a paramshape error that changes nothing (torch would fail inside its own code, or silently
replace the module's attribute)."""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import paramshape as ps
from tests import module_snapshot


class _Net(nn.Module):
    def __init__(self, own: Any) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.parametrizations = own
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.parametrizations(out) if isinstance(self.parametrizations, nn.Linear) else out


_OWN = {
    "a layer": lambda: nn.Linear(3, 3),
    "a ModuleDict of layers": lambda: nn.ModuleDict({"inner": nn.Linear(3, 3)}),
}
_METHODS = [
    {"method": "reparam"},
    {"method": "reparam", "fold": True},
    {"method": "project"},
    {"method": "penalty"},
]


@pytest.mark.parametrize("options", _METHODS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("own", list(_OWN))
def test_a_submodule_of_that_name_leaves_other_constraints_working(own: str, options: dict[str, Any]) -> None:
    model = _Net(_OWN[own]())
    ps.constrain(model, "body.*", ps.Box(-1.0, 1.0), **options)
    assert set(ps.constraints(model)) == {"body.weight", "body.bias"}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.SaturationWarning)
        for _ in range(3):
            optimizer.zero_grad()
            (model(torch.randn(4, 3)).sum() + ps.penalty(model)).backward()
            optimizer.step()
    if options["method"] != "penalty":
        assert model.body.weight.abs().max() <= 1.0
    state = model.state_dict()
    model.load_state_dict(state)
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (copied, loaded):
        assert set(ps.constraints(other)) == {"body.weight", "body.bias"}
        torch.testing.assert_close(other.body.weight, model.body.weight)
    model.double()
    ps.saturation(model)
    ps.unconstrain(model)
    assert ps.constraints(model) == {}
    assert type(model.parametrizations).__name__ in ("Linear", "ModuleDict")  # the model's own, untouched


@pytest.mark.parametrize("own", list(_OWN))
def test_a_tensor_under_a_submodule_of_that_name_is_refused_by_name(own: str) -> None:
    model = _Net(_OWN[own]())
    ps.constrain(model, "body.weight", ps.Box(-1.0, 1.0))
    before = module_snapshot.take(model)
    name = "parametrizations.weight" if own == "a layer" else "parametrizations.inner.weight"
    for target in (name, "*"):
        with pytest.raises(
            ps.ConstraintConflictError,
            match=rf"'{name}' of _Net: a submodule named 'parametrizations' holds it.*Rename that submodule",
        ):
            ps.constrain(model, target, ps.Box(-1.0, 1.0), init="project")
    module_snapshot.assert_same(before, module_snapshot.take(model))


class _ClassAttribute(nn.Linear):
    parametrizations = None


def _instance_attribute() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.__dict__["parametrizations"] = {"mine": 1}
    return layer


def _buffer() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.register_buffer("parametrizations", torch.zeros(1))
    return layer


def _submodule() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.parametrizations = nn.ModuleDict({"weight": nn.Identity()})
    return layer


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (lambda: _ClassAttribute(2, 2), "NoneType"),
        (_instance_attribute, "dict"),
        (_buffer, "Tensor"),
        (_submodule, "ModuleDict"),
    ],
    ids=["class attribute", "instance attribute", "buffer", "ModuleDict of its own"],
)
def test_reparametrising_a_module_that_holds_the_name_is_refused(build: Any, kind: str) -> None:
    layer = build()
    with torch.no_grad():
        layer.weight.uniform_(-0.5, 0.5)
    before = module_snapshot.take(layer)
    with pytest.raises(
        ps.ConstraintConflictError,
        match=rf"'weight' of \w+: \w+ has an attribute 'parametrizations' of its own \(a {kind}\)",
    ):
        ps.constrain(layer, "weight", ps.Box(-1.0, 1.0))
    module_snapshot.assert_same(before, module_snapshot.take(layer))
    own = layer.__dict__.get("parametrizations", getattr(layer, "parametrizations", None))
    ps.constrain(layer, "weight", ps.Box(-1.0, 1.0), method="project")  # the tensor stays plain
    assert getattr(layer, "parametrizations", None) is own
