"""Bad input: one test per row of the table in docs/errors.md, plus a fuzz test.

Every row must raise a paramshape error (a ValueError/TypeError/RuntimeError subclass) whose message names what is
wrong and what to do, and must leave the module exactly as it was.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import paramshape as ps

from .test_constrain import assert_unchanged, snapshot


def linear() -> nn.Module:
    return nn.Linear(4, 3)


def _linear_with_own_parametrizations() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.__dict__["parametrizations"] = {"own": 1}
    with torch.no_grad():
        layer.weight.uniform_(-0.5, 0.5)
    return layer


def _model_with_a_parametrizations_submodule() -> nn.Module:
    model = nn.Sequential()
    model.add_module("parametrizations", nn.Linear(2, 2))
    return model


def _small_sparse_embedding() -> nn.Module:
    embedding = nn.Embedding(4, 2, sparse=True)
    with torch.no_grad():
        embedding.weight.uniform_(-0.5, 0.5)
    return embedding


def with_nan() -> nn.Module:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[1, 1] = math.nan
    return layer


def counter() -> nn.Module:
    module = nn.Module()
    module.register_buffer("count", torch.zeros(3, dtype=torch.int64))
    return module


def tied() -> nn.Module:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    return model


def spectral() -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(4, 3))


def poisoned_bound() -> nn.Module:
    """A constrained layer whose bound was written in place (NaN) after constrain: the next read
    must refuse it."""
    layer = ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)")
    ps.constraints(layer)["weight"].low.fill_(math.nan)
    return layer


def tied_plain() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight
    return model


def constrained_pair() -> nn.Module:
    """Constrained layer by layer (each layer is its own root), one reparam and one project."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    ps.constrain(model[0], "weight", ps.Box(-1, 1))
    ps.constrain(model[1], "weight", ps.Box(-1, 1), method="project")
    return model


def checkpoint(model: nn.Module, **changes: torch.Tensor) -> dict:
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    state.update(changes)
    return state


class OffInverse(ps.Box):
    """A user transform whose inverse is off by 0.1."""

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return super().inverse(y) + 0.1


def fill_buffers(module: nn.Module) -> None:
    for buffer in module.buffers(recurse=False):
        buffer.fill_(math.nan)


def covariance(value: torch.Tensor) -> nn.Module:
    module = nn.Module()
    module.p = nn.Parameter(value)
    return module


def lagrangian_holder() -> nn.Module:
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(3))
    return ps.constrain(module, "w", "box(-1, 1)", method="lagrangian")


def large_exponent() -> nn.Module:
    """A plain layer, then a PositiveDeterminant weight whose exponent (norm 3) is beyond float16's
    cap (1.73): moving to float16 would change its value."""
    layer = ps.constrain(nn.Linear(3, 3), "weight", "positive_determinant", init="sample")
    with torch.no_grad():
        stored = layer.parametrizations.weight.original
        stored.copy_(torch.eye(3) * (3.0 / math.sqrt(3.0)))
    return nn.Sequential(nn.Linear(3, 3), layer)


@dataclass(frozen=True)
class Row:
    what: str
    build: Callable[[], nn.Module]
    call: Callable[[nn.Module], object]
    error: type[Exception]
    message: str


def _nan_into_stored(module: nn.Module) -> None:
    """A blanket init function that reaches parametrize's stored tensors (apply recurses there)."""
    if hasattr(module, "original"):
        with torch.no_grad():
            module.original.fill_(math.nan)


def _nan_into_bounds(module: nn.Module) -> None:
    if isinstance(module, ps.Box):
        with torch.no_grad():
            for tensor in module.parameters(recurse=False):
                tensor.fill_(math.nan)


ROWS = [
    Row(
        "non-floating tensor",
        counter,
        lambda m: ps.constrain(m, "count", "positive"),
        ps.UnsupportedTensorError,
        "'count' of Module has dtype torch.int64; only real floating point",
    ),
    Row(
        "complex tensor",
        lambda: nn.Linear(2, 2, dtype=torch.complex64),
        lambda m: ps.constrain(m, "weight", "positive"),
        ps.UnsupportedTensorError,
        "has dtype torch.complex64",
    ),
    Row(
        "NaN in the current value",
        with_nan,
        lambda m: ps.constrain(m, "weight", "box(-10, 10)"),
        ps.InfeasibleValueError,
        "worst: value nan at [1, 1] is not finite",
    ),
    Row(
        "NaN with init='raw'",
        with_nan,
        lambda m: ps.constrain(m, "weight", "positive", init="raw"),
        ps.InfeasibleValueError,
        "init='raw' needs finite values, but 1 of 12 are NaN or infinite",
    ),
    Row(
        "NaN in a bound",
        linear,
        lambda m: ps.constrain(
            m,
            "weight",
            ps.Box(torch.tensor([0.0, math.nan]).reshape(2, 1)[0:1], 1.0) if False else ps.Box(math.nan, 1.0),
        ),
        ps.SpecError,
        "'low' is NaN at []; bounds must be numbers",
    ),
    Row(
        "bounds that do not broadcast",
        linear,
        lambda m: ps.constrain(m, "weight", ps.Box(torch.zeros(5), 1.0)),
        ps.ShapeMismatchError,
        "'low' has shape (5,), which does not broadcast to the tensor's shape (3, 4)",
    ),
    Row(
        "low >= high",
        linear,
        lambda m: ps.constrain(m, "weight", "box(1, -1)"),
        ps.SpecError,
        "Box needs low < high everywhere",
    ),
    Row(
        "unknown name",
        linear,
        lambda m: ps.constrain(m, "weight", "boxx(-1, 1)"),
        ps.SpecError,
        "Unknown transform 'boxx'. Did you mean 'box'?",
    ),
    Row(
        "malformed spec string",
        linear,
        lambda m: ps.constrain(m, "weight", "box(-1, 1"),
        ps.SpecError,
        "Malformed constraint spec 'box(-1, 1'",
    ),
    Row(
        "spec that is not a spec",
        linear,
        lambda m: ps.constrain(m, "weight", 3.0),
        ps.SpecTypeError,
        "A constraint spec must be a paramshape.Transform",
    ),
    Row(
        "missing attribute",
        linear,
        lambda m: ps.constrain(m, "wieght", "positive"),
        ps.TensorNotFoundError,
        "Linear has no parameter or buffer 'wieght'. Did you mean 'weight'?",
    ),
    Row(
        "dim out of range",
        linear,
        lambda m: ps.constrain(m, "weight", "simplex(dim=3)"),
        ps.ShapeMismatchError,
        "Simplex(dim=3) is out of range for a tensor of shape (3, 4); use a dim in [-2, 1]",
    ),
    Row(
        "tied weights",
        tied,
        lambda m: ps.constrain(m, "0.weight", "box(-5, 5)"),
        ps.TiedTensorError,
        "'0.weight' of Sequential is shared with '1.weight'",
    ),
    Row(
        "unknown init policy",
        linear,
        lambda m: ps.constrain(m, "weight", "positive", init="clamp"),
        ps.SpecError,
        "init must be one of ['keep', 'project', 'raw', 'sample']",
    ),
    Row(
        "value outside the set",
        linear,
        lambda m: ps.constrain(m, "weight", "box(2, 3)"),
        ps.InfeasibleValueError,
        "12 of 12 values lie outside Box(low=2.0, high=3.0)",
    ),
    Row(
        "foreign parametrization",
        spectral,
        lambda m: ps.constrain(m, "weight", "box(-9, 9)"),
        ps.ConstraintConflictError,
        "'weight' of Linear already carries parametrizations paramshape did not attach (_SpectralNorm)",
    ),
    Row(
        "tied tensors named twice",
        tied_plain,
        lambda m: ps.constrain(m, {"0.weight": "box(-1, 1)", "1.weight": "box(-2, 2)"}, method="project"),
        ps.SpecError,
        "'0.weight' and '1.weight' name the same tensor (or tied tensors sharing memory)",
    ),
    Row(
        "inverse that does not round-trip",
        linear,
        lambda m: ps.constrain(m, "weight", OffInverse(-1, 1)),
        ps.TransformError,
        "does not give the value back: forward(inverse(y)) is",
    ),
    Row(
        "checkpoint value outside the set",
        constrained_pair,
        lambda m: m.load_state_dict(checkpoint(m, **{"1.weight": torch.full((3, 3), 2.0)})),
        ps.InfeasibleValueError,
        "'1.weight' of Sequential (shape (3, 3), float32): 9 of 9 values lie outside Box(low=-1.0, high=1.0)",
    ),
    Row(
        "checkpoint with NaN stored values",
        constrained_pair,
        lambda m: m.load_state_dict(
            checkpoint(m, **{"0.parametrizations.weight.original": torch.full((3, 3), math.nan)})
        ),
        ps.InfeasibleValueError,
        "9 of 9 stored unconstrained values are NaN or infinite, so every read of the constrained tensor",
    ),
    Row(
        "checkpoint with a NaN bound",
        constrained_pair,
        lambda m: m.load_state_dict(
            checkpoint(m, **{"0.parametrizations.weight.0.low": torch.tensor(math.nan)})
        ),
        ps.SpecError,
        "Checkpoint keys under '0.parametrizations.weight.0.'",
    ),
    Row(
        "checkpoint tensor of another shape",
        constrained_pair,
        lambda m: m.load_state_dict(
            checkpoint(m, **{"0.parametrizations.weight.original": torch.zeros(2, 3)})
        ),
        ps.ShapeMismatchError,
        "has shape (2, 3); the tensor it loads into needs (3, 3). Nothing was loaded.",
    ),
    Row(
        "init function that poisons the bounds",
        constrained_pair,
        lambda m: m.apply(fill_buffers),
        ps.SpecError,
        "the call wrote into the settings of its constraint Box(low=-1.0, high=1.0)",
    ),
    Row(
        "riemannian on a set without a manifold",
        linear,
        lambda m: ps.constrain(m, "weight", "box(-1, 1)", method="riemannian"),
        ps.ManifoldUnavailableError,
        "'weight' of Linear: method='riemannian' is not available for Box: its set has no Riemannian "
        "structure in paramshape (Transform.riemannian_grad, retract). Use method='reparam', 'project' "
        "(if it defines a projection), 'penalty' or 'lagrangian'.",
    ),
    Row(
        "riemannian from a singular covariance",
        lambda: covariance(torch.zeros(3, 3)),
        lambda m: ps.constrain(m, "p", ps.PositiveDefinite(), method="riemannian"),
        ps.InfeasibleValueError,
        "'p' of Module (shape (3, 3), float32): method='riemannian' cannot step from this value of "
        "PositiveDefinite(): it lies on the boundary of the manifold",
    ),
    Row(
        "lagrangian without a projection",
        lambda: nn.Linear(3, 3),
        lambda m: ps.constrain(m, "weight", ps.Orthogonal(), method="lagrangian", init="sample"),
        ps.ProjectionUnavailableError,
        "'weight' of Linear: method='project' is not available for Orthogonal",
    ),
    Row(
        "lagrangian with rho 0",
        linear,
        lambda m: ps.constrain(m, "weight", "box(-1, 1)", method="lagrangian", weight=0.0),
        ps.SpecError,
        "weight (rho) of method='lagrangian' must be > 0; got 0.",
    ),
    Row(
        "multiplier of the wrong shape in a checkpoint",
        lagrangian_holder,
        lambda m: m.load_state_dict({"w": torch.zeros(3), "w_lagrange_multiplier": torch.zeros(2)}),
        ps.ShapeMismatchError,
        "checkpoint key 'w_lagrange_multiplier': the Lagrange multiplier of 'w' must have shape (3,); got (2,).",
    ),
    # Issue 10, part A: values entering by assignment, spec strings, direct use.
    Row(
        "assignment of another shape",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: setattr(m, "weight", torch.zeros(3, 3)),
        ps.ShapeMismatchError,
        "'weight' of Linear (shape (2, 2), float32): the value assigned has shape (3, 3), which does not "
        "broadcast to (2, 2); a constrained tensor never changes shape.",
    ),
    Row(
        "assignment of None",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: setattr(m, "weight", None),
        ps.UnsupportedTensorError,
        "'weight' of Linear (shape (2, 2), float32): cannot assign None to a constrained tensor.",
    ),
    Row(
        "spec string of unbounded cost",
        linear,
        lambda m: ps.constrain(m, "weight", "box(" + "-" * 1000 + "1, 2)"),
        ps.SpecError,
        "more than 2 signs in a row.",
    ),
    Row(
        "repeated keyword in a spec",
        linear,
        lambda m: ps.constrain(m, "weight", "box(low=2, high=3, low=-1)"),
        ps.SpecError,
        "Malformed constraint spec 'box(low=2, high=3, low=-1)': keyword 'low' is given twice.",
    ),
    Row(
        "bound written in place behind the transform",
        poisoned_bound,
        lambda m: m.weight,
        ps.SpecError,
        "'weight' of Linear (shape (2, 2), float32): a bound of Box(low=nan, high=1.0) ('low' () float32, "
        "'high' () float32) was written in place behind the transform's back and is no longer valid",
    ),
    Row(
        "bound assigned out of order",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: setattr(ps.constraints(m)["weight"], "low", 2.0),
        ps.SpecError,
        "'weight' of Linear (shape (2, 2), float32): assigning 'low' of Box(low=-1.0, high=1.0): Box needs "
        "low < high everywhere",
    ),
    Row(
        "Parameter of another shape assigned",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: setattr(m, "weight", nn.Parameter(torch.zeros(3, 3))),
        ps.ShapeMismatchError,
        "'weight' of Linear (shape (2, 2), float32): the value assigned has shape (3, 3)",
    ),
    Row(
        "None registered under a constrained name",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: m.register_parameter("weight", None),
        ps.ConstraintConflictError,
        "'weight' of Linear is constrained; it cannot be registered as None. Call ps.unconstrain",
    ),
    Row(
        "matrix transform on a non-matrix",
        linear,
        lambda m: ps.Symmetric()(torch.rand(1, 3)),
        ps.ShapeMismatchError,
        "Symmetric() needs square matrices in the last two dimensions; the tensor of shape (1, 3) holds 1 x 3 ones.",
    ),
    Row(
        "Parameter outside the set assigned under method='project'",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)", method="project"),
        lambda m: setattr(m, "weight", nn.Parameter(torch.full((2, 2), 5.0))),
        ps.InfeasibleValueError,
        "'weight' of Linear (shape (2, 2), float32): 4 of 4 values lie outside Box(low=-1.0, high=1.0)",
    ),
    Row(
        "move that would change a PositiveDeterminant value",
        large_exponent,
        lambda m: m.half(),
        ps.SpecError,
        "'weight' of Linear: a move to torch.float16 would change PositiveDeterminant()'s value, not only "
        "round it: the matrix has an exponent of Frobenius norm 3",
    ),
    Row(
        "meta tensor assigned",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: setattr(m, "weight", torch.zeros(2, 2, device="meta")),
        ps.UnsupportedTensorError,
        "'weight' of Linear (shape (2, 2), float32): the value assigned is on the meta device, which holds no values",
    ),
    Row(
        "checkpoint with both key formats for one tensor",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: m.load_state_dict({**m.state_dict(), "weight": torch.zeros(2, 2)}),
        ps.ConstraintConflictError,
        "Checkpoint for 'weight' of Linear (shape (2, 2), float32): it holds both the constrained value 'weight' "
        "and the stored unconstrained tensor 'parametrizations.weight.original'",
    ),
    Row(
        "init function that writes NaN into the stored tensor",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", "box(-1, 1)"),
        lambda m: m.apply(_nan_into_stored),
        ps.InfeasibleValueError,
        "'weight' of Linear (shape (2, 2), float32): the call wrote NaN or infinity into its stored tensor "
        "'parametrizations.weight.original'",
    ),
    Row(
        "init function that poisons learnable bounds",
        lambda: ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1, learnable=True)),
        lambda m: m.apply(_nan_into_bounds),
        ps.SpecError,
        "'weight' of Linear: the call wrote into the settings of its constraint Box(low=-1.0, high=1.0, "
        "learnable=True) (a bound became NaN or infinite)",
    ),
    Row(
        "module that makes sparse gradients, default mode",
        _small_sparse_embedding,
        lambda m: ps.constrain(m, "weight", "box(-1, 1)"),
        ps.UnsupportedTensorError,
        "'weight' of Embedding (shape (4, 2), float32): Embedding(sparse=True) makes sparse gradients, which "
        "cannot flow back through the map of Box(low=-1.0, high=1.0)",
    ),
    Row(
        "module attribute named parametrizations",
        _linear_with_own_parametrizations,
        lambda m: ps.constrain(m, "weight", "box(-1, 1)"),
        ps.ConstraintConflictError,
        "'weight' of Linear: Linear has an attribute 'parametrizations' of its own (a dict), the name under "
        "which torch's parametrize, used by method='reparam', keeps a module's parametrizations.",
    ),
    Row(
        "tensor under a submodule named parametrizations",
        _model_with_a_parametrizations_submodule,
        lambda m: ps.constrain(m, "parametrizations.weight", "box(-1, 1)", init="project"),
        ps.ConstraintConflictError,
        "'parametrizations.weight' of Sequential: a submodule named 'parametrizations' holds it, the name under "
        "which torch's parametrize keeps a module's parametrizations",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.what for row in ROWS])
def test_bad_input_row(row):
    module = row.build()
    before = snapshot(module)
    with pytest.raises(row.error, match=re.escape(row.message)):
        row.call(module)
    assert_unchanged(module, before)
    # RuntimeError covers NotImplementedError (a strategy the transform lacks: projection, manifold
    # structure) and TransformError (the transform's own code failed).
    assert isinstance(row.error("x"), (ValueError, TypeError, RuntimeError))


def test_the_docs_table_has_a_row_for_every_case():
    table = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for row in ROWS:
        assert f"| {row.what} |" in table, f"docs/errors.md lacks a bad-input row for {row.what!r}"


# ------------------------------------------------------------------------------------ fuzz
NAMES = [*ps.available(), "boxx", "", "Box"]
ARGUMENTS = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.just("'exp'"), st.just("dim=5")
    ),
    max_size=3,
)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.bool]


def spec_text(name: str, arguments: list) -> str:
    rendered = [a if isinstance(a, str) else repr(a) for a in arguments]
    return f"{name}({', '.join(rendered)})" if arguments else name


@given(
    name=st.sampled_from(NAMES),
    arguments=ARGUMENTS,
    shape=st.lists(st.integers(0, 4), max_size=3),
    dtype=st.sampled_from(DTYPES),
    init=st.sampled_from(["keep", "project", "raw", "sample", "clip"]),
    scale=st.sampled_from([1e-3, 1.0, 1e4, math.inf]),
)
def test_fuzz_constrain_either_works_or_fails_cleanly(name, arguments, shape, dtype, init, scale):
    module = nn.Module()
    values = torch.randn(shape) * scale if scale != math.inf else torch.full(shape, math.inf)
    module.register_parameter("value", nn.Parameter(values.to(dtype), requires_grad=dtype.is_floating_point))
    before = snapshot(module)
    failure = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.ParamshapeWarning)
            ps.constrain(module, "value", spec_text(name, arguments), init=init)
    except ps.ParamshapeError as error:
        failure = error
    if failure is not None:
        assert isinstance(failure, (ValueError, TypeError, RuntimeError))
        assert len(str(failure)) < 1000, "messages stay short: no tensor dumps"
        assert_unchanged(module, before)
        return
    transform = ps.constraints(module)["value"]
    with torch.no_grad():
        assert transform.contains(module.value).all()


def test_running_statistics_of_batch_norm_are_refused():
    norm = nn.BatchNorm1d(3)
    before = snapshot(norm)
    with pytest.raises(ps.ConstraintConflictError, match="BatchNorm1d updates 'running_var' in place"):
        ps.constrain(norm, "running_var", "positive")
    assert_unchanged(norm, before)


def test_raw_init_is_refused_where_the_value_depends_on_state():
    layer = nn.Linear(3, 3)
    before = snapshot(layer)
    with pytest.raises(ps.SpecError, match="init='raw' is not available for Orthogonal"):
        ps.constrain(layer, "weight", "orthogonal", init="raw")
    assert_unchanged(layer, before)


def test_constraining_inside_a_compiled_region():
    """Without fullgraph the call runs eagerly at a graph break and works; with fullgraph Dynamo's
    error carries paramshape's message."""
    for fullgraph in (False, True):
        layer = nn.Linear(2, 2)

        def inner(x, layer=layer):
            ps.constrain(layer, "weight", "box(-1, 1)")
            return x + 1

        torch.compiler.reset()
        compiled = torch.compile(inner, backend="eager", fullgraph=fullgraph)
        if fullgraph:
            # Dynamo reports the paramshape error it observed as its own Unsupported (a RuntimeError).
            with pytest.raises(
                torch._dynamo.exc.Unsupported, match=r"cannot happen inside a torch\.compile region"
            ):
                compiled(torch.zeros(1))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dynamo's graph-break log
                compiled(torch.zeros(1))
            assert list(ps.constraints(layer)) == ["weight"]
