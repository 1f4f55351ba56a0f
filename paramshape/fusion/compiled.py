"""Fusion of the elementwise transforms into one compiled kernel: :func:`set_fusion`, :func:`fusion`.

A transform family opts in with one class attribute, ``fusable = Fusable(kernel, tensors=...,
settings=...)``, where ``kernel(x, *tensors, *settings)`` is its forward map as a pure function (the
same one its ``forward`` calls). :meth:`Transform.__call__ <paramshape.Transform.__call__>` hands
every call of an opted-in transform to :func:`dispatch`, which runs one of

* the compiled kernel: ``torch.compile`` of ``kernel``, created lazily (never inside
  ``constrain()`` or ``register_parametrization``), with dynamic shapes and its own, raised
  recompile limit, so many shapes, dtypes and grad modes never exhaust dynamo's shared limit; bounds
  are passed as tensors, so changing a bound never recompiles;
* the family's hand-fused eager implementation (``Fusable.eager``), when it has one;
* the plain ``forward`` otherwise.

Inside a ``torch.compile`` region, under ``torch.func`` transforms, with module hooks, for tensor
subclasses and when a tensor setting requires grad, the plain ``forward`` runs, so whole-model
compilation sees ordinary tensor code and fuses it itself.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks
from torch.nn.utils import parametrize

from paramshape.errors import FusionUnavailableError, ParamshapeWarning, SpecError

__all__ = ["Fusable", "FusionMode", "fusion", "get_fusion", "set_fusion"]

#: The settings of :func:`set_fusion`.
FusionMode = Literal["auto", "on", "off"]
_MODES: tuple[str, ...] = get_args(FusionMode)

#: ``"auto"`` compiles only for tensors of at least this many elements, unless the family says
#: otherwise (:attr:`Fusable.auto_min_elements`). Below it the call overhead of a compiled function
#: (guards and the autograd wrapper: about 75 us per forward+backward on the 2-core benchmark machine)
#: eats what fusing saves. ``python benchmarks/run.py --sections threshold`` measures, per kernel, the
#: smallest size from which the fused forward+backward takes at most 0.95 of eager's time at every
#: larger size; this default is Box's: 0.96 at 262,144 elements, 0.72 at 524,288 (docs/performance.md).
AUTO_MIN_ELEMENTS = 1 << 19

#: ``"auto"`` compiles a family's kernel once that family has spent this long (seconds of eager
#: forward time on tensors above its size threshold, in this process): a cold compile takes
#: about this long on a 2-core CPU. Renting (eager) until the rent paid equals the price of buying
#: (compiling) never costs more than twice the better choice in hindsight, so a short script never
#: waits for a compile that would not pay for itself.
AUTO_COMPILE_BUDGET_S = 10.0

#: The recompile limit of each compiled kernel (dynamo's default, shared by all code, is 8): one
#: graph per rank, dtype, grad mode, layout and size-1 pattern of the inputs.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class Fusable:
    r"""How a transform family is fused: its forward map as a pure function of tensors.

    .. math::

        \text{transform}(x) = \text{kernel}(x, t_1, \dots, t_m, s_1, \dots, s_k)

    with :math:`t_i` the transform's tensor settings (buffers such as ``low``, passed as tensors so a
    new bound value never recompiles) and :math:`s_j` its static settings (strings, integers, floats;
    part of the compiled graph). ``kernel`` must be pure tensor code that ``torch.compile(...,
    fullgraph=True)`` traces; it is also the reference the fused result is tested against.

    Args:
        kernel: the forward map, ``kernel(x, *tensors, *settings) -> Tensor``.
        tensors: attribute names of the tensor settings, in the kernel's order.
        settings: attribute names of the static settings, after the tensors.
        eager: optional hand-fused eager implementation with the kernel's signature, used when the
            compiled kernel is not; it returns ``None`` to decline a call (the plain ``forward`` runs).
        auto_min_elements: the smallest tensor ``"auto"`` compiles for: ``"default"`` for
            :data:`AUTO_MIN_ELEMENTS`, ``None`` for never (the eager path is as fast).

    Example:
        >>> import torch, paramshape as ps
        >>> from paramshape.fusion import Fusable
        >>> def _scaled_sigmoid(x, scale):
        ...     return scale * torch.sigmoid(x)
        >>> class ScaledSigmoid(ps.Box):
        ...     fusable = Fusable(_scaled_sigmoid, tensors=("high",))
        ...     def forward(self, x):
        ...         return _scaled_sigmoid(x, self.high)
        >>> ScaledSigmoid(0.0, 2.0)(torch.zeros(2))
        tensor([1., 1.])
    """

    kernel: Callable[..., Tensor]
    tensors: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    eager: Callable[..., Tensor | None] | None = field(default=None, compare=False)
    auto_min_elements: int | Literal["default"] | None = "default"


# ------------------------------------------------------------------------------------ the switch
class _State(threading.local):
    """The switch is per thread, like torch's grad mode; compiled kernels are shared."""

    mode: str = "auto"


_state = _State()
_compiled: dict[Callable[..., Tensor], Callable[..., Tensor]] = {}
_eager_seconds: dict[Callable[..., Tensor], float] = {}
_backend_failure: list[str] = []  # the first compiler error, once one happened
_backend: list[Any] = ["inductor"]  # tests swap in "aot_eager" to exercise dispatch without C++ builds


def set_fusion(mode: FusionMode) -> FusionMode:
    r"""Choose whether the elementwise transforms run as one compiled kernel; returns the previous mode.

    * ``"auto"`` (default): compile where it pays -- for tensors above the family's measured
      size threshold (:data:`AUTO_MIN_ELEMENTS` = 524,288 elements for ``Box``; never for
      ``Simplex``, whose eager softmax is already one kernel), once the family has spent
      :data:`AUTO_COMPILE_BUDGET_S` seconds in eager forwards in this process, and only where the
      compiler works (if it fails, one :class:`~paramshape.ParamshapeWarning` says so and
      everything stays eager);
    * ``"on"``: compile every call of an opted-in transform (``Box``, ``UnitInterval``,
      ``Positive``, ``GreaterThan``, ``LessThan``, ``SoftClip``, ``Simplex``), whatever its size;
      a compiler failure raises :class:`~paramshape.FusionUnavailableError`;
    * ``"off"``: never compile; the eager implementations run.

    The fused kernel computes the same map as the eager one (within 2 ulps, gradients too). It
    supports first derivatives only: for double backward (Hessians, ``create_graph=True`` through a
    constrained tensor) use ``"off"``. The switch is per thread; compilation happens at the first
    call outside ``constrain()``, never during it.

    .. math::

        y = f(x) \text{ in every mode; only how it is computed changes.}

    Args:
        mode: ``"auto"``, ``"on"`` or ``"off"``.

    Returns:
        The mode in force before the call.

    Raises:
        SpecError: ``mode`` is not one of the three.

    Example:
        >>> import paramshape as ps
        >>> previous = ps.set_fusion("off")
        >>> ps.get_fusion()
        'off'
        >>> _ = ps.set_fusion(previous)
    """
    if mode not in _MODES:
        raise SpecError(f"fusion mode must be one of {list(_MODES)}; got {mode!r}.")
    previous = _state.mode
    _state.mode = mode
    return previous  # type: ignore[return-value]  # _state.mode only ever holds a checked FusionMode


def get_fusion() -> FusionMode:
    """The fusion mode in force in this thread (see :func:`set_fusion`).

    Example:
        >>> import paramshape as ps
        >>> ps.get_fusion()
        'auto'
    """
    return _state.mode  # type: ignore[return-value]  # only ever a checked FusionMode


@contextlib.contextmanager
def fusion(mode: FusionMode) -> Iterator[None]:
    """Context manager: :func:`set_fusion` ``(mode)`` inside the block, the previous mode after it.

    Args:
        mode: ``"auto"``, ``"on"`` or ``"off"``.

    Raises:
        SpecError: ``mode`` is not one of the three.

    Example:
        >>> import torch, paramshape as ps
        >>> box = ps.Box(-1.0, 1.0)
        >>> with ps.fusion("off"):
        ...     box(torch.zeros(3))
        tensor([0., 0., 0.])
    """
    previous = set_fusion(mode)
    try:
        yield
    finally:
        _state.mode = previous


# ------------------------------------------------------------------------------------ dispatch
_PLAIN_TENSORS = (Tensor, nn.Parameter)
_functorch_active = torch._C._are_functorch_transforms_active


def dispatch(transform: nn.Module, spec: Fusable, x: Any) -> Tensor | None:
    """Run ``transform`` on ``x`` the fastest safe way, or return ``None`` for the plain
    ``Module.__call__`` path. Called by ``Transform.__call__`` outside compiled regions only.

    This runs at every read of a constrained tensor, so on small tensors its own cost is a visible
    part of a training step: attribute reads go straight to the module's dictionaries, and the
    size and mode tests come before anything that allocates or times."""
    if (
        type(x) not in _PLAIN_TENSORS
        or transform._forward_hooks
        or transform._forward_pre_hooks
        or _module_hooks._global_forward_hooks
        or _module_hooks._global_forward_pre_hooks
        or _functorch_active()
    ):
        return None
    buffers = transform._buffers
    # Checked to be plain tensors just below (anything else takes the plain forward).
    tensors = cast(
        "tuple[Tensor, ...]",
        tuple([buffers[name] if name in buffers else getattr(transform, name) for name in spec.tensors]),
    )
    for tensor in tensors:
        if type(tensor) is not Tensor or tensor.requires_grad:
            return None
    settings = tuple([getattr(transform, name) for name in spec.settings])
    mode = _state.mode
    if mode == "off" or (mode == "auto" and not _large_enough(spec, x)):
        return _run_eager(transform, spec, x, tensors, settings)
    if _compiles(spec, x, mode):
        return _run_compiled(transform, spec, x, tensors, settings, mode)
    if mode == "auto" and not _backend_failure:
        start = time.perf_counter()
        out = _run_eager(transform, spec, x, tensors, settings)
        _eager_seconds[spec.kernel] = _eager_seconds.get(spec.kernel, 0.0) + time.perf_counter() - start
        return out
    return _run_eager(transform, spec, x, tensors, settings)


def _run_eager(
    transform: nn.Module,
    spec: Fusable,
    x: Tensor,
    tensors: tuple[Tensor, ...],
    settings: tuple[Hashable, ...],
) -> Tensor:
    if spec.eager is not None:
        out = spec.eager(x, *tensors, *settings)
        if out is not None:
            return out
    value: Tensor = transform.forward(x)  # a Transform's forward; nn.Module types it Any
    return value


def _compiles(spec: Fusable, x: Tensor, mode: str) -> bool:
    if _backend_failure:
        if mode == "on":
            raise FusionUnavailableError(
                "ps.set_fusion('on') needs a working torch.compile backend, but compiling failed: "
                f"{_backend_failure[0]} Use ps.set_fusion('auto') or 'off'."
            )
        return False
    if mode == "auto" and (
        not _large_enough(spec, x) or _eager_seconds.get(spec.kernel, 0.0) < AUTO_COMPILE_BUDGET_S
    ):
        return False
    return not _registering()


def _large_enough(spec: Fusable, x: Tensor) -> bool:
    """Whether ``"auto"`` would compile for a tensor of ``x``'s size."""
    threshold = AUTO_MIN_ELEMENTS if spec.auto_min_elements == "default" else spec.auto_min_elements
    return threshold is not None and x.numel() >= threshold


def _run_compiled(
    transform: nn.Module,
    spec: Fusable,
    x: Tensor,
    tensors: tuple[Tensor, ...],
    settings: tuple[Hashable, ...],
    mode: str,
) -> Tensor:
    compiled = _compiled.get(spec.kernel)
    if compiled is None:
        compiled = _compiled[spec.kernel] = _compile(spec.kernel)
    # dynamo gives nn.Parameter inputs static shapes (a graph per weight shape, up to the recompile
    # limit); for this call only, they are dynamic like any tensor. (A view of the parameter would
    # do as well, but dynamo reads the .grad of its inputs, which warns for a non-leaf.)
    undo = _dynamic_parameter_shapes() if type(x) is nn.Parameter else None
    try:
        return compiled(x, *tensors, *settings)
    except Exception as error:  # noqa: BLE001 -- any compiler failure falls back to eager, below
        failure = error
    finally:
        if undo is not None:
            undo()
    # The compiler or the input? Eager decides: it raises the input's own error (outside the except
    # block, so the compiler's traceback is not chained to it).
    out = _run_eager(transform, spec, x, tensors, settings)
    _record_failure(failure, mode)
    return out


def _compile(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
    options: dict[str, Any] = {"fullgraph": True, "dynamic": True, "backend": _backend[0]}
    parameters = inspect.signature(torch.compile).parameters
    # Since torch 2.13 a compiled function can have its own recompile limit; before, a shared
    # callable counts against dynamo's global one and silently falls back to eager when it runs out.
    if "recompile_limit" in parameters and "isolate_recompiles" in parameters:
        options.update(recompile_limit=RECOMPILE_LIMIT, isolate_recompiles=True)
    if _backend[0] == "inductor":
        with warnings.catch_warnings():
            # inductor imports torch.utils.mkldnn, which uses the deprecated torch.jit.script_method
            # (torch 2.13): not the user's concern, and fatal under -W error. Imported here, once.
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("torch._inductor.compile_fx")
        # With dynamic shapes the C++ backend emits the training graphs' loops without an OpenMP
        # region (their size is unknown at compile time); this lets OpenMP split them at run time.
        # Measured on 2 cores at 262k elements: forward+backward 0.51 ms -> 0.33 ms, as static.
        options["options"] = {"cpp.dynamic_threads": True}
    return torch.compile(kernel, **options)


def _dynamic_parameter_shapes() -> Callable[[], None]:
    """Set dynamo's ``force_parameter_static_shapes`` to False; return the function that restores it."""
    config = torch._dynamo.config
    patcher = getattr(config, "_make_closure_patcher", None)
    if patcher is not None:  # 2 us a call, where config.patch takes 15
        restore: Callable[[], None] = patcher(force_parameter_static_shapes=False)()
        return restore
    context = config.patch(force_parameter_static_shapes=False)
    context.__enter__()
    return lambda: context.__exit__(None, None, None)


def _record_failure(error: Exception, mode: str) -> None:
    if _backend_failure:
        return
    _backend_failure.append(_summary(error))
    if mode == "on":
        raise FusionUnavailableError(
            "ps.set_fusion('on') needs a working torch.compile backend, but compiling failed: "
            f"{_backend_failure[0]} Use ps.set_fusion('auto') or 'off'."
        ) from error
    warnings.warn(
        "paramshape: torch.compile failed, so the elementwise transforms run eager in this process "
        f"(results are the same, only slower). The compiler said: {_backend_failure[0]} "
        "ps.set_fusion('off') silences this.",
        ParamshapeWarning,
        stacklevel=5,
    )


def _summary(error: BaseException) -> str:
    """``Outer: message`` of the root cause (dynamo wraps the backend's error), at most 300 chars."""
    root = error
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner
    first_line = (str(root).strip().splitlines() or [""])[0][:300]
    prefix = f"{type(error).__name__} " if root is not error else ""
    return f"{prefix}{type(root).__name__}: {first_line}."


# ------------------------------------------------------------------------------------ registration
_REGISTRATION_CODES = frozenset(
    {parametrize.register_parametrization.__code__, parametrize.ParametrizationList.__init__.__code__}
)
_REGISTRATION_MODULES = frozenset({"paramshape.attach.constrain"})
#: How many frames above the transform's call to look for a registration. register_parametrization
#: calls the transform directly, ParametrizationList.__init__ through Module.__call__ and forward.
_FRAMES_TO_SEARCH = 10


def _registering() -> bool:
    """Whether the transform is being called by ``register_parametrization`` or ``ps.constrain``,
    which run it once as a check: compiling there would put seconds into ``constrain()``."""
    frame: FrameType | None = sys._getframe(3)
    for _ in range(_FRAMES_TO_SEARCH):
        if frame is None:
            return False
        if frame.f_code in _REGISTRATION_CODES or frame.f_globals.get("__name__") in _REGISTRATION_MODULES:
            return True
        frame = frame.f_back
    return False


def _reset() -> None:
    """Forget compiled kernels, eager timings and compiler failures (for tests and benchmarks)."""
    _compiled.clear()
    _eager_seconds.clear()
    _backend_failure.clear()
