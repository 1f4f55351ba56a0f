"""constrain() builds each parametrization itself (paramshape.attach.registration) instead of calling
torch's register_parametrization: the module must be indistinguishable from the one torch builds
(class, tables and their order, hooks, state_dict, reads, cached(), removal, copies, pickling), the
global registration hooks must see the same calls, a failure half-way must leave nothing, and the
fallback to torch's function must work when its private helpers change."""

from __future__ import annotations

import copy
import inspect
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.nn.utils import parametrize

import paramshape as ps
from paramshape.attach import registration
from tests.module_snapshot import assert_same, take


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 0.5))
        self.register_buffer("shift", torch.full((2,), 0.25), persistent=False)
        self.extra = nn.Parameter(torch.full((4,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale + self.shift + self.extra.sum()


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), _WithBuffers(), nn.Linear(2, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    model[2].extra.requires_grad_(False)  # a frozen parameter stays frozen
    return model


def _build(constrain: Callable[[nn.Module], object]) -> tuple[nn.Module, list[nn.Parameter | torch.Tensor]]:
    model = _model()
    before = [*model.parameters(), *model.buffers()]
    constrain(model)
    return model, before


def _batched(model: nn.Module) -> None:
    ps.constrain(model, "*", ps.Box(-1.0, 1.0))


def _one_by_one(model: nn.Module) -> None:
    for name in [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]:
        ps.constrain(model, name, ps.Box(-1.0, 1.0))


def _describe(model: nn.Module) -> list[Any]:
    """Everything observable about the structure of a module tree, without object identities."""
    out: list[Any] = []
    for path, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        out.append(
            (
                path,
                cls.__name__,
                cls.__qualname__,
                [base.__name__ for base in cls.__mro__],
                parametrize.type_before_parametrizations(module).__name__,
                parametrize.is_parametrized(module),
                sorted(vars(cls)),
                list(module.__dict__),
                {k: type(v).__name__ for k, v in module.__dict__.items()},
                list(module._parameters),
                list(module._buffers),
                sorted(module._non_persistent_buffers_set),
                list(module._modules),
                module.training,
                [
                    (key, len(value))
                    for key, value in module.__dict__.items()
                    if key.endswith(("hooks", "hooks_with_kwargs"))
                ],
            )
        )
        if isinstance(module, parametrize.ParametrizationList):
            out.append((path, module.unsafe, module.is_tensor, module.ntensors))
    out.append([(n, p.shape, p.requires_grad) for n, p in model.named_parameters()])
    out.append([(n, b.shape) for n, b in model.named_buffers()])
    return out


def _assert_same_values(one: nn.Module, other: nn.Module) -> None:
    a, b = one.state_dict(), other.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("constrain", [_batched, _one_by_one], ids=["batched", "one_by_one"])
def test_built_as_torch_builds_it(
    constrain: Callable[[nn.Module], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, fast_before = _build(constrain)
    monkeypatch.setattr(registration, "_module_state", lambda: None)
    slow, slow_before = _build(constrain)
    monkeypatch.undo()

    assert _describe(fast) == _describe(slow)
    _assert_same_values(fast, slow)
    # The stored tensors are the very objects the module held (an optimizer keeps working).
    fast_stored = [
        chain.original
        for _, module in fast.named_modules()
        if parametrize.is_parametrized(module)
        for chain in module.parametrizations.values()
    ]
    assert sorted(map(id, fast_stored)) == sorted(map(id, fast_before))
    assert len(fast_stored) == len(slow_before) == 9
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    out_fast, out_slow = fast(x), slow(x)
    assert torch.equal(out_fast, out_slow)
    out_fast.square().sum().backward()
    out_slow.square().sum().backward()
    for (name, p), (_, q) in zip(fast.named_parameters(), slow.named_parameters(), strict=True):
        if p.grad is None or q.grad is None:  # the frozen one
            assert p.grad is None, name
            assert q.grad is None, name
            assert not p.requires_grad, name
        else:
            assert torch.equal(p.grad, q.grad), name
    for model in (fast, slow):
        layer = model[0]
        with parametrize.cached():
            assert layer.weight is layer.weight  # parametrize's own cache serves both
        assert layer.weight is not layer.weight


def test_removal_copies_and_pickling_match(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = _build(_batched)
    monkeypatch.setattr(registration, "_module_state", lambda: None)
    slow, _ = _build(_batched)
    monkeypatch.undo()

    copies = copy.deepcopy(fast), copy.deepcopy(slow)
    assert _describe(copies[0]) == _describe(copies[1])
    _assert_same_values(*copies)
    loaded = pickle.loads(pickle.dumps(fast)), pickle.loads(pickle.dumps(slow))
    assert _describe(loaded[0]) == _describe(loaded[1])
    _assert_same_values(*loaded)

    for model in (fast, slow):
        parametrize.remove_parametrizations(model[0], "weight", leave_parametrized=True)
        parametrize.remove_parametrizations(model[0], "bias", leave_parametrized=False)
        parametrize.remove_parametrizations(model[3], "weight", leave_parametrized=False)
    assert _describe(fast) == _describe(slow)
    _assert_same_values(fast, slow)
    assert type(fast[0]) is nn.Linear
    assert type(fast[3]).__name__ == "ParametrizedLinear"


def test_pickle_refusal_of_torch_is_kept() -> None:
    """Without paramshape's reducer, the class is torch's: it refuses pickling with torch's message."""
    model, _ = _build(_batched)
    layer = model[0]
    del type(layer).__reduce_ex__  # paramshape's reducer, installed on the class after registering
    with pytest.raises(
        RuntimeError, match="Serialization of parametrized modules is only supported through state_dict"
    ):
        pickle.dumps(layer)


def test_global_registration_hooks_see_the_same_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    def record(calls: list[tuple[str, str, str]], kind: str) -> Callable[..., None]:
        def hook(module: nn.Module, name: str, value: object) -> None:
            calls.append((kind, type(module).__name__, name))

        return hook

    seen: list[list[tuple[str, str, str]]] = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(registration, "_module_state", lambda: None)
        calls: list[tuple[str, str, str]] = []
        model = _model()
        handles = [
            module_globals.register_module_module_registration_hook(record(calls, "module")),
            module_globals.register_module_parameter_registration_hook(record(calls, "parameter")),
            module_globals.register_module_buffer_registration_hook(record(calls, "buffer")),
        ]
        try:
            _batched(model)
        finally:
            for handle in handles:
                handle.remove()
        seen.append(calls)
    assert seen[0] == seen[1]
    assert ("module", "ParametrizedLinear", "parametrizations") in seen[0]
    assert ("buffer", "ParametrizationList", "original") in seen[0]


@pytest.mark.parametrize("fail_at", [1, 4, 9])
def test_failure_half_way_leaves_the_model_as_it_was(fail_at: int) -> None:
    """A KeyboardInterrupt from a registration hook in the middle of the fast path: nothing changed."""
    model = _model()
    before = take(model)
    count = [0]

    def hook(module: nn.Module, name: str, value: object) -> None:
        count[0] += 1
        if count[0] == fail_at:
            raise KeyboardInterrupt

    handle = module_globals.register_module_module_registration_hook(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            _batched(model)
    finally:
        handle.remove()
    assert_same(before, take(model))
    _batched(model)  # and the model still takes the constraint
    assert len(ps.constraints(model)) == 9


def _spy_on_torch_registration(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names torch's ``register_parametrization`` is called for from now on (the list fills)."""
    calls: list[str] = []
    torch_register = parametrize.register_parametrization

    def spy(module: nn.Module, name: str, *args: Any, **kwargs: Any) -> nn.Module:
        calls.append(name)
        return torch_register(module, name, *args, **kwargs)

    monkeypatch.setattr(parametrize, "register_parametrization", spy)
    return calls


def test_the_fast_path_is_taken_and_torch_is_not_called(monkeypatch: pytest.MonkeyPatch) -> None:
    assert registration.fast_registration_available()
    calls = _spy_on_torch_registration(monkeypatch)
    _batched(_model())
    assert calls == []


def test_changed_torch_helpers_fall_back_to_register_parametrization(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose private helper takes other arguments: torch's public function builds it all."""
    inject = parametrize._inject_property

    def changed(module: nn.Module, tensor_name: str, cache: bool = True) -> None:
        inject(module, tensor_name)

    assert tuple(inspect.signature(changed).parameters) != ("module", "tensor_name")
    fast, _ = _build(_batched)
    monkeypatch.setattr(parametrize, "_inject_property", changed)
    assert not registration.fast_registration_available()
    calls = _spy_on_torch_registration(monkeypatch)
    slow, _ = _build(_batched)
    assert len(calls) == 9
    assert _describe(fast) == _describe(slow)
    _assert_same_values(fast, slow)


@pytest.mark.parametrize("helper", ["_inject_new_class", "_maybe_set"])
def test_missing_helper_disables_the_fast_path(helper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(parametrize, helper)
    assert not registration.fast_registration_available()


def test_a_module_with_its_own_setattr_goes_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    class Logged(nn.Linear):
        def __setattr__(self, name: str, value: Any) -> None:
            self.__dict__.setdefault("_log", []).append(name) if name == "parametrizations" else None
            super().__setattr__(name, value)

    torch.manual_seed(0)
    layer = Logged(2, 2)
    with torch.no_grad():
        layer.weight.uniform_(-0.5, 0.5)
        layer.bias.uniform_(-0.5, 0.5)
    ps.constrain(layer, "*", ps.Box(-1.0, 1.0))
    assert layer.__dict__["_log"] == ["parametrizations"]  # torch's own assignment ran
    assert type(layer).__name__ == "ParametrizedLogged"
    assert set(ps.constraints(layer)) == {"weight", "bias"}


def test_lookup_is_parametrized_agrees_with_torch() -> None:
    """paramshape reads is_parametrized and type_before_parametrizations from the submodule table."""
    from paramshape.lookup.modules import is_parametrized, type_before_parametrizations

    model = _model()
    ps.constrain(model, "0.weight", ps.Box(-1.0, 1.0))
    nn.utils.parametrizations.orthogonal(model[3], "weight")  # foreign
    parametrize.register_parametrization(model[2].lin, "bias", nn.Identity())
    parametrize.remove_parametrizations(model[2].lin, "bias")  # registered and removed again
    for module in model.modules():
        assert type_before_parametrizations(module) is parametrize.type_before_parametrizations(module)
        assert is_parametrized(module) == parametrize.is_parametrized(module)
        for name in ("weight", "bias", "scale", "missing"):
            assert is_parametrized(module, name) == parametrize.is_parametrized(module, name), (module, name)
    assert is_parametrized(model[0], "weight")
    assert not is_parametrized(model[0], "bias")
    assert is_parametrized(model[3], "weight")


def test_the_collector_is_paused_for_the_call_only() -> None:
    """constrain() pauses Python's cyclic collector while it registers, and gives it back as it found
    it, after a refused call too."""
    import gc

    seen: list[bool] = []

    def hook(module: nn.Module, name: str, value: object) -> None:
        seen.append(gc.isenabled())

    models = [_model() for _ in range(3)]  # built before the hook: it sees constrain's calls only
    handle = module_globals.register_module_module_registration_hook(hook)
    try:
        assert gc.isenabled()
        _batched(models[0])
        assert gc.isenabled()
        assert seen
        assert not any(seen)  # paused while registering
        with pytest.raises(ps.TensorNotFoundError, match="missing"):
            ps.constrain(models[1], "missing", ps.Box(-1.0, 1.0))
        assert gc.isenabled()
        gc.disable()
        try:
            _batched(models[2])
            assert not gc.isenabled()  # a caller's own pause is left as it is
        finally:
            gc.enable()
    finally:
        handle.remove()


def test_a_model_on_meta_is_built_as_torch_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred initialisation: no values, the same structure."""

    def build() -> nn.Module:
        with torch.device("meta"):
            model = nn.Sequential(nn.Linear(3, 3), _WithBuffers())
        _batched(model)
        return model

    fast = build()
    monkeypatch.setattr(registration, "_module_state", lambda: None)
    slow = build()
    assert _describe(fast) == _describe(slow)
    assert all(p.device.type == "meta" for p in fast.parameters())


@pytest.mark.parametrize(
    "spec", [ps.Box(-1.0, 1.0), ps.Compose(ps.Box(-1.0, 1.0), ps.Affine(0.0, 2.0))], ids=repr
)
def test_an_owner_in_eval_mode_gives_every_part_of_the_transform_its_mode(
    spec: ps.Transform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """register_parametrization puts the transform, and each of its parts, in the module's mode:
    built without it, an owner in eval() mode gets the same modes down to a composition's parts."""

    def build() -> nn.Module:
        model = _model().eval()
        ps.constrain(model, "*", spec)
        return model

    fast = build()
    monkeypatch.setattr(registration, "_module_state", lambda: None)
    slow = build()
    assert _describe(fast) == _describe(slow)
    # (torch leaves its own ModuleDict and ParametrizationList in training mode: so does the fast path.)
    parts = [
        module
        for module in fast.modules()
        if isinstance(module, (ps.Transform, nn.ModuleList))
        and not isinstance(module, parametrize.ParametrizationList)
    ]
    assert len(parts) >= 9
    assert not any(part.training for part in parts)


def _probed_helpers() -> list[Any]:
    """The helpers of parametrize that registration._module_state hands to the probe."""
    return [getattr(parametrize, helper) for helper in (*registration._HELPERS, "_maybe_set")]


@pytest.mark.parametrize(
    "extra",
    [{"_counter": 1.5}, {"_table": {"key": 1}}],
    ids=["an attribute of another type", "a table that is not empty"],
)
def test_a_module_state_of_another_shape_disables_the_fast_path(
    extra: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch whose Module.__init__ sets more than empty tables, flags and None: the fast path,
    which copies that state into the modules it builds, is off (torch's function builds them)."""
    helpers = _probed_helpers()
    assert registration._probe(helpers) is not None
    init = nn.Module.__init__

    def patched(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.__dict__.update(copy.deepcopy(extra))

    monkeypatch.setattr(nn.Module, "__init__", patched)
    assert registration._probe(helpers) is None


def test_a_module_dictionary_with_state_of_its_own_disables_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A torch whose ModuleDict sets an attribute Module does not: the fast path, which builds the
    dictionary from Module's state alone, is off."""
    helpers = _probed_helpers()
    init = nn.ModuleDict.__init__

    def patched(self: nn.ModuleDict, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.__dict__["_ordered"] = True

    monkeypatch.setattr(nn.ModuleDict, "__init__", patched)
    assert registration._probe(helpers) is None
