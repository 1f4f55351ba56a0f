"""Initialising constrained tensors by their constrained value.

``nn.init.uniform_(layer.weight)`` on a constrained ``weight`` writes into a temporary tensor
computed by the transform and changes nothing (a silent no-op in PyTorch). :func:`init_` applies an
``nn.init`` function to the constrained value and stores the result through the transform's
inverse, with the usual check that it lies in the set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from paramshape.lookup.modules import locate, paramshape_transform

__all__ = ["init_"]


def init_(module: nn.Module, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> nn.Module:
    """Initialise the tensor ``name`` of ``module`` by its *constrained* value: ``fn(value, *args,
    **kwargs)`` (an in-place ``nn.init`` function) runs on a copy of the current value, which is then
    assigned (and so checked against the set).

    Works on plain tensors too, so one loop can initialise a whole model.

    Returns:
        ``module``.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``.
        InfeasibleValueError: the initialised value lies outside the set; nothing is changed.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.constrain(nn.Linear(4, 3), "weight", ps.Box(-1, 1))
        >>> _ = ps.init_(layer, "weight", nn.init.constant_, 0.25)
        >>> layer.weight.unique()
        tensor([0.2500], grad_fn=<Unique2Backward0>)
    """
    ref = locate(module, name)
    with torch.no_grad():
        if paramshape_transform(ref.owner, ref.name) is None:
            fn(getattr(ref.owner, ref.name), *args, **kwargs)
            return module
        value: Tensor = getattr(ref.owner, ref.name).detach().clone()
        fn(value, *args, **kwargs)
        setattr(ref.owner, ref.name, value)
    return module
