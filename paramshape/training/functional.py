"""``torch.func`` with constrained models: the parameter dictionary ``functional_call`` needs.

``functional_call(model, {"weight": w}, x)`` on a constrained ``weight`` goes through the
parametrization's setter, which stores ``w`` under ``no_grad``: the output looks right but no
gradient reaches ``w``. The stored tensors are named ``parametrizations.weight.original``;
:func:`functional_params` builds a dictionary with those names, optionally from constrained values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from paramshape.errors import ConstraintConflictError
from paramshape.lookup.modules import locate, paramshape_transform

__all__ = ["functional_params"]


def functional_params(
    module: nn.Module, constrained: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The tensors :func:`torch.func.functional_call` should receive for ``module``.

    Without ``constrained``: ``dict(module.named_parameters())``, whose constrained entries are the
    stored unconstrained tensors (``"0.parametrizations.weight.original"``). With ``constrained``
    (``{"0.weight": value}``, values inside each set): those entries are replaced by the transform's
    inverse of the value, computed *with* autograd, so gradients flow back to ``value``.

    Raises:
        TensorNotFoundError: a key of ``constrained`` is not a tensor of ``module``.
        ConstraintConflictError: a key names a tensor without a paramshape constraint.
        InfeasibleValueError: a value lies outside its set.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> from torch.func import functional_call
        >>> model = ps.constrain(nn.Linear(2, 1), "weight", ps.Box(-1, 1))
        >>> w = torch.tensor([[0.5, -0.5]], requires_grad=True)
        >>> out = functional_call(model, ps.functional_params(model, {"weight": w}), (torch.ones(1, 2),))
        >>> out.sum().backward()
        >>> w.grad
        tensor([[1., 1.]])
    """
    params: dict[str, Tensor] = dict(module.named_parameters())
    for name, value in (constrained or {}).items():
        ref = locate(module, name)
        transform = paramshape_transform(ref.owner, ref.name)
        if transform is None:
            raise ConstraintConflictError(
                f"'{name}' carries no paramshape constraint; pass its tensor under its own name."
            )
        transform.validate(value.detach())
        stem = ref.path[: len(ref.path) - len(ref.name)]
        with torch.enable_grad():
            params[f"{stem}parametrizations.{ref.name}.original"] = transform.inverse(value)
    return params
