r"""Per-tensor gradient clipping through tensor hooks: :func:`clip_grad`."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import UnsupportedTensorError
from paramshape.lookup.modules import TensorRef, locate, refuse_inside_compile, unwrap
from paramshape.lookup.patterns import is_pattern, match_names
from paramshape.strategies.state import GradClip, check_limit, discard_state_if_empty, state_of, stored_tensor

__all__ = ["clip_grad"]


def clip_grad(
    module: nn.Module, name: str, max_norm: float | None = None, max_value: float | None = None
) -> nn.Module:
    r"""Clip the gradient of one tensor every time it is computed, by a hook on the tensor.

    With ``max_value`` each entry is clipped to :math:`[-v, v]`; with ``max_norm`` the whole
    gradient is then rescaled to a Euclidean norm of at most :math:`m`:

    .. math::

        g \leftarrow \operatorname{clamp}(g, -v, v), \qquad
        g \leftarrow g \cdot \min\Bigl(1, \frac{m}{\lVert g \rVert_2}\Bigr)

    Clipping bounds the *step*, not the value: it tames exploding gradients but does not keep a
    tensor in a set (combine it with :func:`~paramshape.constrain` for that; the two compose).

    **Which tensor.** The hook sits on the tensor the optimizer updates. For a tensor constrained with
    ``method="reparam"`` that is the stored unconstrained tensor
    (``module.parametrizations.<name>.original``), so what is clipped is the gradient with respect to
    the *unconstrained* values, after it went back through the transform. Constraining before or after
    ``clip_grad`` makes no difference: parametrize keeps the same ``Parameter`` object. For plain,
    ``"project"`` and ``"penalty"`` tensors it is the parameter itself.

    **How it differs from** :func:`torch.nn.utils.clip_grad_norm_`. ``clip_grad_norm_(params, m)``
    computes one norm over *all* the parameters given and scales them all by the same factor, once,
    on the accumulated ``.grad`` just before ``optimizer.step()``; it must be called in the loop.
    ``clip_grad`` clips each tensor on its own (its own norm), automatically, on the gradient of each
    ``backward()`` as it arrives, before it is added to ``.grad``: with gradient accumulation over
    several backward passes, each pass is clipped separately. ``clip_grad_norm_([p], m)`` for a single
    tensor ``p`` and ``clip_grad(..., max_norm=m)`` agree when there is one backward per step;
    ``max_value`` matches :func:`torch.nn.utils.clip_grad_value_` per tensor.

    Calling it again on the same tensor replaces the clipping; with both limits ``None`` it removes
    it. Deep copies and pickles of the module keep it.

    Args:
        module: any ``nn.Module``.
        name: a parameter (or gradient-requiring buffer) of ``module``, a dotted path to one, or an
            fnmatch pattern (``"*.weight"``) for each matching tensor, clipped on its own.
        max_norm: the largest Euclidean norm of the tensor's gradient, or ``None``.
        max_value: the largest absolute value of each gradient entry, or ``None``.

    Returns:
        ``module``.

    Raises:
        TensorNotFoundError: ``name`` is not a tensor of ``module``, or a pattern matches none.
        SpecError: a limit is not a positive finite number.
        UnsupportedTensorError: the tensor does not require gradients.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = ps.clip_grad(nn.Linear(4, 1), "weight", max_norm=1.0)
        >>> (1000 * layer(torch.ones(2, 4))).sum().backward()
        >>> round(float(layer.weight.grad.norm()), 4)
        1.0
    """
    refuse_inside_compile("clip_grad")
    module = unwrap(module)
    max_norm = check_limit(max_norm, "max_norm", "clip_grad")
    max_value = check_limit(max_value, "max_value", "clip_grad")
    if is_pattern(name):
        hits = match_names(module, name)
        for dotted in hits:  # check every match before changing any
            _clip_target(module, locate(module, dotted), max_norm, max_value)
        for dotted in hits:
            clip_grad(module, dotted, max_norm, max_value)
        return module
    ref = locate(module, name)
    if max_norm is None and max_value is None:
        state = state_of(ref.owner)
        if state is not None:
            state.set_clip(ref.name, None, None)
            discard_state_if_empty(ref.owner)
        return module
    tensor = _clip_target(module, ref, max_norm, max_value)
    state = state_of(ref.owner, create=True)
    state.set_clip(ref.name, GradClip(max_norm, max_value), tensor)  # type: ignore[union-attr]
    return module


def _clip_target(
    module: nn.Module, ref: TensorRef, max_norm: float | None, max_value: float | None
) -> Tensor:
    """The tensor that gets the hook; :class:`UnsupportedTensorError` if it has no gradient."""
    tensor = stored_tensor(ref.owner, ref.name)
    if (max_norm is not None or max_value is not None) and (tensor is None or not tensor.requires_grad):
        raise UnsupportedTensorError(
            f"'{ref.path}' of {parametrize.type_before_parametrizations(module).__name__} does not "
            "require gradients, so it has none to clip; clip a parameter instead."
        )
    return tensor  # type: ignore[return-value]
