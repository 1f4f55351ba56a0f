"""The registry and spec resolution."""

from __future__ import annotations

import math
import re

import pytest
import torch

import paramshape as ps
from paramshape.transforms import registry


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtin_names():
    assert {"box", "unit_interval", "positive", "greater_than", "less_than", "simplex"} <= set(ps.available())
    assert list(ps.available()) == sorted(ps.available())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("positive", "Positive()"),
        ("positive(method='exp')", "Positive(method='exp')"),
        ("box(-1, 1)", "Box(low=-1.0, high=1.0)"),
        (" box( low=-2.5 , high=+3 ) ", "Box(low=-2.5, high=3.0)"),
        ("box(0, inf)", "Box(low=0.0, high=inf)"),
        ("box(-inf, 1e-3)", "Box(low=-inf, high=0.001)"),
        ("box([0, 1], [2, 3])", "Box(low=Tensor(shape=(2,)), high=Tensor(shape=(2,)))"),
        ("simplex(dim=0)", "Simplex(dim=0)"),
        ("greater_than(0.5)", "GreaterThan(low=0.5)"),
        ("less_than(high=-1, method='exp')", "LessThan(high=-1.0, method='exp')"),
        ("unit_interval", "UnitInterval()"),
    ],
)
def test_spec_strings(spec, expected):
    assert repr(ps.resolve(spec)) == expected


def test_instances_and_classes_resolve():
    box = ps.Box(-1, 1)
    assert ps.resolve(box) is box
    assert repr(ps.resolve(ps.Positive)) == "Positive()"


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(
        ps.SpecError,
        match=r"Unknown transform 'postive'. Did you mean 'positive'\? Registered names: affine, box, ",
    ):
        ps.resolve("postive")


@pytest.mark.parametrize(
    "spec",
    [
        "box(-1, ",
        "box(1)(2)",
        "box.low",
        "1 + 2",
        "box(*args)",
        "box(**kw)",
        "box(x)",
        "box(-1, 2 * 3)",
        "__import__('os').system('echo pwned')",
        "box(low=(lambda: 1)())",
        "",
    ],
)
def test_malformed_specs_are_rejected_without_evaluation(spec):
    with pytest.raises(ps.SpecError, match="constraint spec"):
        ps.resolve(spec)


def test_bad_arguments_name_the_class():
    with pytest.raises(ps.SpecError, match=r"Cannot build Box from spec 'box\(1\)'"):
        ps.resolve("box(1)")
    with pytest.raises(
        ps.SpecError, match=r"Positive: method must be one of \['softplus', 'exp'\]; got 'relu'"
    ):
        ps.resolve("positive(method='relu')")
    with pytest.raises(ps.SpecError, match="dim must be an integer"):
        ps.resolve("simplex(dim='last')")


def test_spec_of_the_wrong_type():
    with pytest.raises(ps.SpecTypeError, match="got int") as error:
        ps.resolve(3)
    assert isinstance(error.value, TypeError)


def test_register_as_decorator_and_call(clean_registry):
    @ps.register("negative_values")
    class Negative(ps.LessThan):
        def __init__(self) -> None:
            super().__init__(0.0)

    assert "negative_values" in ps.available()
    assert (ps.resolve("negative_values")(torch.tensor([5.0])) < 0).all()

    class Other(ps.GreaterThan):
        pass

    assert ps.register("other_values", Other) is Other
    assert repr(ps.resolve("other_values(2)")) == "Other(low=2.0)"


def test_duplicate_names_are_rejected(clean_registry):
    class Mine(ps.Positive):
        pass

    with pytest.raises(
        ps.RegistryError,
        match=r"'box' is already registered to paramshape.transforms.elementwise.interval.Box",
    ):
        ps.register("box", Mine)


def test_re_registering_the_same_class_replaces_it(clean_registry):
    """A notebook cell defining and registering a class can be run twice."""

    def define():
        class Rerun(ps.Positive):
            pass

        return Rerun

    first, second = define(), define()
    ps.register("rerun", first)
    ps.register("rerun", second)
    assert registry.registered_class("rerun") is second


@pytest.mark.parametrize("name", ["Box2", "my-box", "2box", "", "class", "inf", "has space"])
def test_invalid_names(clean_registry, name):
    with pytest.raises(ps.RegistryError):
        ps.register(name, ps.Positive)


def test_only_transforms_register(clean_registry):
    with pytest.raises(ps.RegistryError, match=re.escape("needs a subclass of paramshape.Transform")):
        ps.register("not_a_transform", dict)


def test_spec_numbers_are_literal():
    box = ps.resolve("box(-inf, inf)")
    assert math.isinf(box.low.item())
    assert math.isinf(box.high.item())
