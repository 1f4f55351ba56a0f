"""Bounding the output of an existing module: :func:`bound_output`."""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from paramshape.errors import UnsupportedTensorError
from paramshape.lookup.modules import refuse_inside_compile, unwrap
from paramshape.spec.resolve import Spec, resolve

__all__ = ["OUTPUT_BOUND_NAME", "bound_output"]

#: The attribute under which :func:`bound_output` stores the transform on the module.
OUTPUT_BOUND_NAME = "output_bound"


def bound_output(module: nn.Module, spec: Spec | nn.Module | None) -> nn.Module:
    """Pass every output of ``module`` through a transform or an output layer, so its outputs lie in
    the set.

    The transform (or layer) is copied and stored as the submodule ``module.output_bound`` (so
    ``.to()`` moves its bounds, ``state_dict`` holds them under ``output_bound.*`` and
    ``module.parameters()`` includes a learnable temperature) and applied by a forward hook. Calling
    again replaces it; ``spec=None`` removes it.

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
    if OUTPUT_BOUND_NAME in module._modules:
        delattr(module, OUTPUT_BOUND_NAME)
    if spec is None:
        return module
    layer = spec if isinstance(spec, nn.Module) else resolve(spec)
    module.add_module(OUTPUT_BOUND_NAME, copy.deepcopy(layer))
    module.register_forward_hook(_apply_output_bound)
    return module


def _apply_output_bound(module: nn.Module, args: Any, output: Any) -> Tensor:
    layer: nn.Module = getattr(module, OUTPUT_BOUND_NAME)
    if not isinstance(output, Tensor):
        raise UnsupportedTensorError(
            f"bound_output: {type(module).__name__} returned {type(output).__name__}, not a tensor; "
            "bound the tensor you need instead, e.g. by adding the transform as a layer after it."
        )
    return layer(output)
