"""Whole-model ``torch.compile``: a model constrained with every registered transform traces in one
graph (``fullgraph=True``), and stays compiled -- no recompilation -- through value assignment,
``train()``/``eval()`` switches and optimizer steps.

Graphs are counted with a counting backend around ``aot_eager`` (no C++ toolchain needed, and it
runs AOTAutograd, so the backward is traced too); the inductor tests are marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import paramshape as ps

from .transform_cases import CASES, COMPLEX_CASES


def _first_case_of_each_registered_name():
    seen: dict[str, object] = {}
    for case in CASES + COMPLEX_CASES:
        if case.registered and case.name not in seen:
            seen[case.name] = case
    return list(seen.values())


REGISTERED = _first_case_of_each_registered_name()


class Holder(nn.Module):
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(shape, dtype=dtype))


class EveryTransform(nn.Module):
    """One constrained tensor per registered transform, plus a constrained Linear layer; the output
    mixes every constrained value, so each transform is in the traced graph and in its backward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        ps.constrain(self.linear, "weight", ps.Box(-1, 1), init="project")
        self.holders = nn.ModuleDict()
        for case in REGISTERED:
            # A set of complex tensors only (Unitary) holds a complex64 tensor.
            holder = Holder(case.shape, case.dtypes[0] if torch.float32 not in case.dtypes else torch.float32)
            ps.constrain(holder, "value", case.build(), init="sample")
            self.holders[case.name] = holder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x).sum()
        for holder in self.holders.values():
            value = holder.value
            term = (value * torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)).sum()
            out = out + (term.real if term.is_complex() else term)  # a real loss of a complex value
        return out


def test_every_registered_transform_is_in_the_model():
    assert {case.name for case in REGISTERED} == set(ps.available())


@pytest.fixture
def model():
    torch.manual_seed(0)
    return EveryTransform()


def _train_step(compiled, optimizer, x):
    optimizer.zero_grad()
    loss = compiled(x)
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_whole_model_traces_without_graph_breaks(model):
    torch.compiler.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(4, 6))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_fullgraph_compile_matches_eager_values_and_gradients(model):
    torch.compiler.reset()
    reference = copy.deepcopy(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(4, 6)
    out, expected = compiled(x), reference(x)
    torch.testing.assert_close(out, expected)
    out.backward()
    expected.backward()
    for (name, param), (_, ref_param) in zip(
        model.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(param.grad, ref_param.grad, msg=name)
    assert counter.frame_count == 1


def test_no_recompile_over_steps_assignment_and_mode_switches(model):
    torch.compiler.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 6)
    # Warm-up: one training step and one evaluation without gradients, the two graphs a loop needs.
    _train_step(compiled, optimizer, x)
    model.eval()
    with torch.no_grad():
        compiled(x)
    model.train()
    warm = counter.frame_count

    for _ in range(3):
        _train_step(compiled, optimizer, x)
    # Assign a fresh feasible value to every constrained tensor (the constrained value, read eagerly).
    with torch.no_grad():
        model.linear.weight = torch.full_like(model.linear.weight, 0.25)
        for holder in model.holders.values():
            holder.value = holder.value.detach().clone()
    _train_step(compiled, optimizer, x)
    for _ in range(2):
        model.eval()
        with torch.no_grad():
            evaluated = compiled(x)
        model.train()
        _train_step(compiled, optimizer, x)
    assert counter.frame_count == warm, f"recompiled {counter.frame_count - warm} times"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
        assert evaluated.isfinite()


def test_changing_a_bound_buffer_does_not_recompile():
    """Bounds are buffers, inputs of the graph: a new bound value is picked up without a recompile."""
    torch.compiler.reset()
    layer = ps.constrain(nn.Linear(4, 3), "weight", ps.Box(-1.0, 1.0), init="project")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    x = torch.randn(2, 4)
    compiled(x)
    box = ps.constraints(layer)["weight"]
    with torch.no_grad():
        box.high.fill_(2.0)
    torch.testing.assert_close(compiled(x), layer(x))
    assert counter.frame_count == 1


def test_cached_reads_compile_in_one_graph():
    """parametrize.cached() inside the compiled forward: one graph, the weight computed once."""
    torch.compiler.reset()
    cell = ps.constrain(nn.Linear(5, 5), "weight", ps.Box(-1.0, 1.0), init="project")

    def unrolled(h: torch.Tensor) -> torch.Tensor:
        with torch.nn.utils.parametrize.cached():
            for _ in range(4):
                h = torch.tanh(cell(h))
        return h

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(unrolled, backend=counter, fullgraph=True)
    h = torch.randn(2, 5)
    torch.testing.assert_close(compiled(h), unrolled(h))
    assert counter.frame_count == 1


@pytest.mark.slow
# torch 2.13's inductor warns about its own deprecated internals (torch.jit.script_method when
# importing torch.utils.mkldnn, torch._prims_common.check when lowering diagonal); the suite turns
# warnings into errors.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
@pytest.mark.filterwarnings("ignore::FutureWarning:torch")
# The model holds a Unitary (complex64) tensor: inductor runs complex operators eagerly and says so.
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_inductor_whole_model_training_matches_eager(model):
    """The real compiler: a few Adam steps of the compiled model track the eager model."""
    torch.compiler.reset()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    x = torch.randn(4, 6)
    for _ in range(3):
        loss = _train_step(compiled, optimizer, x)
        expected = _train_step(reference, reference_optimizer, x)
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    for name, tensor in ps.constraints(model).items():
        assert name in ps.constraints(reference)
        assert isinstance(tensor, ps.Transform)
