"""Fuzz: every way a value enters a constrained module either works or changes nothing.

Extends the ``constrain`` fuzz of ``tests/test_bad_input.py`` to pattern dicts with a failure
injected at every step, assignment, checkpoint loads (both key formats, ``strict``/``assign``) and
dtype moves. After a failure the module is compared with a full snapshot taken before
(``tests/module_snapshot.py``): classes, parameter identities and order, values, persistence,
hooks, parametrizations and paramshape's state.
"""

from __future__ import annotations

import math
import warnings
from unittest import mock

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import paramshape as ps
from paramshape.attach import applying

from .module_snapshot import assert_same, take

SPECS = ["box(-1, 1)", "box(0, 2)", "positive", "box(-0.1, 0.1)", "greater_than(5)", "box(0, 1e5)"]
TARGETS = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]


def build(existing: list[tuple[str, str, str]]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(0.01, 0.09)
    for target, spec, method in existing:
        ps.constrain(model, target, spec, method=method)
    return model


EXISTING = st.lists(
    st.tuples(st.sampled_from(TARGETS), st.sampled_from(SPECS[:4]), st.sampled_from(["reparam", "project"])),
    max_size=3,
    unique_by=lambda t: t[0],
)


def works_or_changes_nothing(model: nn.Module, operation) -> Exception | None:
    before = take(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.ParamshapeWarning)
            operation()
    except (ps.ParamshapeError, KeyboardInterrupt) as error:
        failure = error
    else:
        failure = None
    if failure is not None:
        assert len(str(failure)) < 1500, "messages stay short: no tensor dumps"
        assert_same(before, take(model))
        return failure
    for path, transform in ps.constraints(model).items():
        owner, _, name = path.rpartition(".")
        value = getattr(model.get_submodule(owner), name)
        with torch.no_grad():
            assert bool(torch.isfinite(value).all()), path
            info = ps.constraint_info(model)[path]
            if info.method != "penalty":
                assert bool(transform.contains(value).all()), path
    return None


@given(
    existing=EXISTING,
    targets=st.dictionaries(st.sampled_from(TARGETS), st.sampled_from(SPECS), min_size=1, max_size=4),
    method=st.sampled_from(["reparam", "project"]),
    init=st.sampled_from(["keep", "project"]),
    fail_at=st.one_of(st.none(), st.integers(0, 3)),
)
def test_fuzz_pattern_dicts_with_a_failure_injected_at_every_step(existing, targets, method, init, fail_at):
    model = build(existing)
    real = applying._apply_one
    calls = []

    def flaky(root, plan):
        real(root, plan)
        calls.append(plan)
        if fail_at is not None and len(calls) == fail_at + 1:
            raise KeyboardInterrupt

    with mock.patch.object(applying, "_apply_one", flaky):
        works_or_changes_nothing(model, lambda: ps.constrain(model, targets, init=init, method=method))


@given(
    existing=EXISTING,
    target=st.sampled_from(TARGETS),
    fill=st.sampled_from([0.05, 0.5, -0.5, 3.0, 1e6, math.nan, math.inf]),
    kind=st.sampled_from(["same", "scalar", "wrong shape"]),
)
def test_fuzz_assignment(existing, target, fill, kind):
    model = build(existing)
    owner_path, _, name = target.rpartition(".")
    owner = model.get_submodule(owner_path)
    constrained = (
        target in ps.constraint_info(model) and ps.constraint_info(model)[target].method == "reparam"
    )
    shape = getattr(owner, name).shape
    value = {
        "same": torch.full(shape, fill),
        "scalar": torch.full(shape, fill)[0],
        "wrong shape": torch.full((5,), fill),
    }[kind]
    if not constrained:
        return  # plain tensors are torch's business
    works_or_changes_nothing(model, lambda: setattr(owner, name, value))


@given(
    existing=EXISTING,
    plain_keys=st.booleans(),
    spoil=st.sampled_from(["none", "nan", "outside", "shape", "nan bound"]),
    spoil_at=st.sampled_from(TARGETS),
    strict=st.booleans(),
    assign=st.booleans(),
)
def test_fuzz_checkpoint_loads(existing, plain_keys, spoil, spoil_at, strict, assign):
    model = build(existing)
    source = ps.plain_state_dict(model) if plain_keys else model.state_dict()
    checkpoint = {key: value.detach().clone() for key, value in source.items()}
    owner_path, _, name = spoil_at.rpartition(".")
    stored = f"{owner_path}.parametrizations.{name}.original"
    key = stored if stored in checkpoint else spoil_at
    if spoil == "nan":
        checkpoint[key].view(-1)[0] = math.nan
    elif spoil == "outside":
        checkpoint[key].fill_(1e6)
    elif spoil == "shape":
        checkpoint[key] = torch.zeros(7)
    elif spoil == "nan bound":
        bound = f"{owner_path}.parametrizations.{name}.0.low"
        if bound in checkpoint:
            checkpoint[bound] = torch.tensor(math.nan)
    if spoil == "shape" and key not in {*ps.constraints(model), stored}:
        return  # a plain tensor of the wrong shape: torch's own error, after earlier tensors loaded
    error = works_or_changes_nothing(
        model, lambda: model.load_state_dict(checkpoint, strict=strict, assign=assign)
    )
    if spoil == "none":
        assert error is None


@given(
    existing=EXISTING,
    overflow=st.booleans(),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float64]),
)
def test_fuzz_dtype_moves(existing, overflow, dtype):
    model = build(existing)
    if overflow:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.ParamshapeWarning)
            ps.constrain(model, "0.weight", "box(0, 1e5)", init="project")
    # Plain modules before the first constrained one are converted before paramshape can check
    # (docs/pitfalls.md); keep the first module constrained so the check covers the whole model.
    if "0.weight" not in ps.constraints(model):
        ps.constrain(model, "0.weight", "box(-1, 1)")
    error = works_or_changes_nothing(model, lambda: model.to(dtype))
    assert (error is not None) == (overflow and dtype == torch.float16)


# --------------------------------------------------------------- round 2's paths (issue 10, round 3)
# One tensor per family that round 2 added or changed: fold=True, learnable bounds, a complex set,
# LowRank's factored store, the manifolds, Sinkhorn; each entry point drawn with its spoilers.
FAMILIES = {
    "fold": (lambda: ps.Box(-1, 1), (3, 3), torch.float32, {"fold": True}),
    "learnable": (lambda: ps.Box(-1, 1, learnable=True), (3,), torch.float32, {}),
    "unitary": (lambda: ps.Unitary(), (3, 3), torch.complex64, {}),
    "low_rank": (lambda: ps.LowRank(rank=1), (4, 3), torch.float32, {}),
    "grassmannian": (lambda: ps.Grassmannian(), (4, 2), torch.float32, {}),
    "special_linear": (lambda: ps.SpecialLinear(), (3, 3), torch.float32, {}),
    "doubly_stochastic": (lambda: ps.DoublyStochastic(), (3, 3), torch.float32, {}),
}


def build_family(family: str) -> nn.Module:
    make, shape, dtype, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(shape, dtype=dtype))
    module.b = nn.Parameter(torch.rand(2))  # a plain sibling, loaded by torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        return ps.constrain(module, "w", make(), init="project", **kwargs)


def spoiled(value: torch.Tensor, spoil: str) -> torch.Tensor:
    value = value.detach().clone()
    if spoil == "nan":
        value.view(-1)[0] = math.nan
    elif spoil == "scaled":
        value = value * 3.0
    elif spoil == "shape":
        value = torch.zeros(7, dtype=value.dtype)
    return value


def assert_outcome(spoil: str, error: Exception | None) -> None:
    """An unspoiled value enters; a NaN or a wrong shape is refused; a scaled one either way (it may
    still lie in the set), which works_or_changes_nothing has checked already."""
    if spoil == "none":
        assert error is None
    if spoil in ("nan", "shape"):
        assert error is not None


@given(
    family=st.sampled_from(sorted(FAMILIES)),
    spoil=st.sampled_from(["none", "nan", "scaled", "shape"]),
    entry=st.sampled_from(["attribute", "parameter", "register_parameter"]),
)
def test_fuzz_assignment_of_round_two_families(family, spoil, entry):
    module = build_family(family)
    value = spoiled(module.w, spoil)
    operation = {
        "attribute": lambda: setattr(module, "w", value),
        "parameter": lambda: setattr(module, "w", nn.Parameter(value)),
        "register_parameter": lambda: module.register_parameter("w", nn.Parameter(value)),
    }[entry]
    error = works_or_changes_nothing(module, operation)
    assert_outcome(spoil, error)


@given(
    family=st.sampled_from(sorted(FAMILIES)),
    plain_keys=st.booleans(),
    spoil=st.sampled_from(["none", "nan", "scaled", "shape"]),
    strict=st.booleans(),
    assign=st.booleans(),
)
def test_fuzz_checkpoint_loads_of_round_two_families(family, plain_keys, spoil, strict, assign):
    module = build_family(family)
    source = ps.plain_state_dict(module) if plain_keys else module.state_dict()
    checkpoint = {key: value.detach().clone() for key, value in source.items()}
    key = "w" if plain_keys else "parametrizations.w.original"
    checkpoint[key] = spoiled(checkpoint[key], spoil if plain_keys or spoil != "scaled" else "none")
    error = works_or_changes_nothing(
        module, lambda: module.load_state_dict(checkpoint, strict=strict, assign=assign)
    )
    assert_outcome(spoil, error)


@given(
    family=st.sampled_from(sorted(FAMILIES)),
    dtype=st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.complex128]),
    back=st.booleans(),
)
def test_fuzz_dtype_moves_of_round_two_families(family, dtype, back):
    module = build_family(family)
    start = module.w.dtype

    def move() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Complex modules are a new feature", UserWarning)  # torch's
            module.to(dtype)
            if back:
                module.to(start)

    error = works_or_changes_nothing(module, move)
    # A move is refused only where it would change the kind of set (complex to real or back).
    assert (error is not None) == (start.is_complex != dtype.is_complex)
