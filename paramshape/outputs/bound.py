"""Bounding the output of an existing module: :func:`bound_output`."""

from __future__ import annotations

import copy
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn

from paramshape.errors import ParamshapeWarning, UnsupportedTensorError
from paramshape.lookup.modules import refuse_inside_compile, unwrap
from paramshape.spec.resolve import Spec, resolve

__all__ = ["OUTPUT_BOUND_NAME", "bound_output"]

#: The attribute under which :func:`bound_output` stores the transform on the module.
OUTPUT_BOUND_NAME = "output_bound"


def bound_output(module: nn.Module, spec: Spec | nn.Module | None) -> nn.Module:
    """Pass every output of ``module`` through a transform or an output layer, so its outputs lie in
    the set.

    The transform (or layer) is copied and stored as the submodule ``module.output_bound`` (so
    ``.to()`` moves its bounds and ``module.parameters()`` includes a learnable temperature) and
    applied by a forward hook. Calling again replaces it; ``spec=None`` removes it.

    The bounds belong to the code, not to checkpoints: the buffers of paramshape's transforms and
    output layers (``low``, ``high``, a temperature's bounds) are left out of ``state_dict``, so a
    checkpoint saved from the module before it was bounded loads with ``strict=True``, and a bound
    changed in the code is what the loaded model uses. A checkpoint that still holds
    ``output_bound.*`` bounds (saved by an older paramshape) loads too; where its bounds differ from
    the code's, a :class:`~paramshape.ParamshapeWarning` names them and the code's are kept.
    Learned state stays in ``state_dict``: a learnable temperature, and the buffers of a layer
    that is not paramshape's (``nn.BatchNorm1d`` as the output layer keeps its running statistics).

    Every way of bounding an output fits here; they differ in their gradients:

    * smooth, a transform: ``ps.Box(low, high)`` (scaled sigmoid; the gradient fades near the
      bounds but never vanishes), ``ps.SoftClip(low, high)`` (the identity inside, bending smoothly
      at the edges), ``ps.Positive()`` (softplus: positive without ReLU's dead zone),
      ``ps.Simplex(dim)`` (softmax);
    * hard: ``ps.HardClamp(low, high)`` (zero gradient beyond a bound), with
      ``straight_through=True`` (the gradient passes as if unclamped), ``ps.BoundedReLU(high)``;
    * ``ps.TemperatureSoftmax(...)``: probabilities with a learnable, bounded temperature;
    * any other ``nn.Module`` that maps a tensor to a tensor (``nn.Tanh()``).

    Writing the layer last is equivalent: ``nn.Sequential(nn.Linear(16, 2), ps.Box(-2, 3))``.

    Args:
        module: a module whose ``forward`` returns one tensor.
        spec: a transform, registered name or spec string (see :func:`resolve`), an output layer
            (any ``nn.Module``), or ``None``.

    Returns:
        ``module``, for chaining.

    Raises:
        UnsupportedTensorError: at call time, if the module's output is not a tensor.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> policy = ps.bound_output(nn.Linear(4, 2), ps.Box(-1, 1))
        >>> bool(policy(100 * torch.randn(8, 4)).abs().max() <= 1)
        True
        >>> _ = ps.bound_output(policy, ps.HardClamp(-1, 1, straight_through=True))
        >>> policy.output_bound
        HardClamp(low=-1.0, high=1.0, straight_through=True)
    """
    refuse_inside_compile("bound_output")
    module = unwrap(module)
    for key in [key for key, hook in module._forward_hooks.items() if hook is _apply_output_bound]:
        del module._forward_hooks[key]
    for key in [
        key
        for key, hook in module._load_state_dict_pre_hooks.items()
        if getattr(hook, "hook", None) is _keep_code_bounds
    ]:
        del module._load_state_dict_pre_hooks[key]
    if OUTPUT_BOUND_NAME in module._modules:
        delattr(module, OUTPUT_BOUND_NAME)
    if spec is None:
        return module
    layer = copy.deepcopy(spec if isinstance(spec, nn.Module) else resolve(spec))
    dtype = _module_dtype(module)
    if dtype is not None:
        # A number bound means that number at the outputs' precision: Box(1e-4, 1) on a float64
        # module holds 1e-4, not float32's 9.99999997e-05 (the move rebuilds each bound from it).
        layer.to(dtype)
    for owner, name in _code_bounds(layer):
        owner._non_persistent_buffers_set.add(name)
    module.add_module(OUTPUT_BOUND_NAME, layer)
    module.register_forward_hook(_apply_output_bound)
    module._register_load_state_dict_pre_hook(_keep_code_bounds, with_module=True)  # type: ignore[no-untyped-call]
    return module


def _module_dtype(module: nn.Module) -> torch.dtype | None:
    """The real floating dtype of ``module``'s parameters (or buffers), if they share one."""
    dtypes = {t.dtype for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _code_bounds(layer: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, buffer name) of every buffer of a paramshape module inside ``layer``: settings written
    in the code (bounds), not state learned or accumulated in training."""
    found: list[tuple[nn.Module, str]] = []
    for owner in layer.modules():
        if type(owner).__module__.startswith("paramshape."):
            found.extend((owner, name) for name, buffer in owner._buffers.items() if buffer is not None)
    return found


def _keep_code_bounds(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook: drop the output bounds an older checkpoint holds, warning where they
    differ from the code's, so they neither fail a strict load nor override the code."""
    layer = module._modules.get(OUTPUT_BOUND_NAME)
    if layer is None:
        return
    paths = {id(owner): path for path, owner in layer.named_modules()}
    differing = []
    for owner, name in _code_bounds(layer):
        relative = f"{paths[id(owner)]}.{name}" if paths[id(owner)] else name
        key = f"{prefix}{OUTPUT_BOUND_NAME}.{relative}"
        if key not in state_dict:
            continue
        saved, current = state_dict.pop(key), cast(Tensor, owner._buffers[name])
        if (
            not isinstance(saved, Tensor)
            or saved.shape != current.shape
            or not torch.equal(saved.to(device=current.device, dtype=current.dtype), current)
        ):
            differing.append(f"'{key}': checkpoint {_short(saved)}, code {_short(current)}")
    if differing:
        warnings.warn(
            f"The checkpoint's output bounds of {type(module).__name__} differ from the code's; the "
            f"code's are kept (bounds are part of the model's definition): {'; '.join(differing)}. "
            "To use the checkpoint's, pass them to ps.bound_output.",
            ParamshapeWarning,
            stacklevel=2,
        )


def _short(value: Any) -> str:
    if isinstance(value, Tensor) and value.numel() <= 4:
        return str(value.tolist())
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _apply_output_bound(module: nn.Module, args: Any, output: Any) -> Tensor:
    layer: nn.Module = getattr(module, OUTPUT_BOUND_NAME)
    if not isinstance(output, Tensor):
        raise UnsupportedTensorError(
            f"bound_output: {type(module).__name__} returned {type(output).__name__}, not a tensor; "
            "bound the tensor you need instead, e.g. by adding the transform as a layer after it."
        )
    return cast(Tensor, layer(output))
