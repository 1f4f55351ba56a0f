"""The transform contract every paramshape transform follows."""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ._report import format_index, format_scalar, tensor_label
from .errors import InfeasibleValueError, TransformError

__all__ = ["Transform"]

_DEFAULT_HINT = "Assign a value inside the set."


class Transform(nn.Module, abc.ABC):
    r"""Abstract base of every paramshape transform: an invertible map from unconstrained tensors
    onto a constrained set, packaged as an :class:`torch.nn.Module`.

    .. math::

        \text{forward}: \mathbb{R}^{n} \to C, \qquad
        \text{right\_inverse}: C \to \mathbb{R}^{n}, \qquad
        \text{forward}(\text{right\_inverse}(y)) = y \text{ for } y \in C.

    The method names are the ones :mod:`torch.nn.utils.parametrize` calls, so a transform can be
    passed to :func:`paramshape.constrain` (the usual way) or to ``register_parametrization``
    directly, and it is also a layer: ``nn.Sequential(nn.Linear(16, 2), Box(-2, 3))`` bounds an output.

    Subclasses implement:

    * :meth:`forward` -- pure tensor math (no ``.item()``, no Python branching on values), so that
      ``torch.compile(..., fullgraph=True)`` traces it; finite for every finite input;
    * :meth:`inverse` -- the inverse map for values in the closed set, returning finite values even
      on the boundary (it may step one ulp inside);
    * :meth:`to_interior` -- a point strictly inside the set, away from the boundary, for each value;
    * :meth:`_excess` and :meth:`_describe` -- how far values lie outside the set, used by
      :meth:`contains` and by the error messages;
    * :attr:`codomain` -- the set as a :mod:`torch.distributions.constraints` object;
    * :meth:`check_shape` when the transform's settings restrict the tensor's shape.

    :meth:`right_inverse` checks its input with :meth:`validate` and then calls :meth:`inverse`, so
    assigning an infeasible value to a constrained tensor raises :class:`InfeasibleValueError`
    instead of silently storing NaN or a clipped value.

    Tensor-valued settings (bounds) are registered buffers, validated once at construction, so
    ``.to()``, ``.double()``, ``.half()`` and ``state_dict`` carry them. Float16 and bfloat16 inputs
    are computed in float32 and the result is cast back to the input's dtype.

    Example:
        >>> import torch, paramshape as ps
        >>> box = ps.Box(-1.0, 1.0)
        >>> y = box(torch.tensor([-50.0, 0.0, 50.0]))
        >>> bool(box.contains(y).all())
        True
        >>> torch.allclose(box(box.right_inverse(torch.tensor([0.5]))), torch.tensor([0.5]))
        True
    """

    #: Number of trailing dimensions that form one element of the set (0: elementwise).
    event_dim: ClassVar[int] = 0
    #: Whether ``forward`` is a bijection from the domain onto the codomain.
    bijective: ClassVar[bool] = True
    #: What one element of the set is called in messages.
    element_noun: ClassVar[str] = "values"

    def __init__(self) -> None:
        super().__init__()
        # Label of the tensor this transform is attached to, for error messages. Set by constrain().
        self._target: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # An AttributeError escaping here would be swallowed by Module.__getattr__ of the
        # parametrized module and reported as "has no attribute 'weight'" (pytorch#72452).
        try:
            return super().__call__(*args, **kwargs)
        except AttributeError as error:
            raise TransformError(f"{self!r} failed while computing: {error}") from error

    # ---------------------------------------------------------------- the map
    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Map an unconstrained tensor onto the constrained set."""

    @abc.abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """Map a value of the (closed) set back to an unconstrained tensor, without checking it."""

    def right_inverse(self, value: Tensor) -> Tensor:
        """Check that ``value`` lies in the set (:meth:`validate`), then return :meth:`inverse` of it."""
        self.validate(value)
        return self.inverse(value)

    # ---------------------------------------------------------------- the set
    @property
    @abc.abstractmethod
    def codomain(self) -> constraints.Constraint:
        """The constrained set, as a :mod:`torch.distributions.constraints` object."""

    @property
    def domain(self) -> constraints.Constraint:
        """The unconstrained space: the real numbers (or real vectors for event transforms)."""
        if self.event_dim == 0:
            return constraints.real
        return constraints.independent(constraints.real, self.event_dim)

    @abc.abstractmethod
    def _excess(self, y: Tensor) -> Tensor:
        """Non-negative float64 distance of each element (or slice) of ``y`` outside the set, beyond a
        dtype-aware tolerance; 0 inside. Broadcastable against ``y``; NaN marks a NaN input."""

    @abc.abstractmethod
    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        """Say how the element (or slice) of ``y`` at ``index`` of :meth:`_excess` breaks the set."""

    @abc.abstractmethod
    def to_interior(self, y: Tensor) -> Tensor:
        """Move every value of ``y`` to a point strictly inside the set, far enough from the boundary
        that the transform's gradient there is still alive. Non-finite values (NaN, ``inf``) are
        read as 0 first, so the result is finite for any input."""

    def contains(self, y: Tensor) -> Tensor:
        """Boolean tensor, broadcastable against ``y``: which elements (or slices) lie in the set.

        The test is on the closed set with a tolerance of a few ulps of the bounds in ``y``'s dtype,
        because the forward map can round onto a bound. NaN and infinite values are never inside.
        """
        return self._finite_excess(y) == 0

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        """Shape of the constrained value for an unconstrained tensor of ``shape`` (default: the same).

        Transforms whose stored tensor has another shape than the value they produce (a bijective
        simplex stores ``K - 1`` numbers per slice) override this and :meth:`inverse_shape`.
        """
        return torch.Size(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        """Shape of the stored unconstrained tensor for a constrained value of ``shape``."""
        return torch.Size(shape)

    def check_shape(self, shape: torch.Size) -> None:
        """Raise :class:`~paramshape.ShapeMismatchError` if the transform cannot apply to tensors of
        ``shape`` (bounds that do not broadcast, ``dim`` out of range). The default accepts all."""

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the set, of shape ``shape``: the forward map of a standard normal draw."""
        noise = torch.randn(
            self.inverse_shape(torch.Size(shape)), dtype=dtype, device=device, generator=generator
        )
        with torch.no_grad():
            return self.forward(noise)

    # ---------------------------------------------------------------- checking
    def validate(self, value: Tensor, *, hint: str | None = None) -> None:
        """Raise :class:`InfeasibleValueError` unless every element of ``value`` lies in the set.

        The message names the tensor, its shape and dtype, how many elements are outside, and the
        worst one against the bound it breaks.
        """
        excess = self._finite_excess(value)
        outside = excess != 0
        count = int(outside.sum())
        if count == 0:
            return
        flat = int(torch.argmax(excess.reshape(-1)))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), excess.shape))
        detail = self._describe_worst(value, index)
        label = tensor_label(self._target or "value", value)
        raise InfeasibleValueError(
            f"{label}: {count} of {excess.numel()} {self.element_noun} lie outside {self!r}; "
            f"worst: {detail}. {hint or _DEFAULT_HINT}"
        )

    def _finite_excess(self, y: Tensor) -> Tensor:
        excess = self._excess(y)
        if self.event_dim == 0:
            excess = torch.where(torch.isfinite(y), excess, torch.inf)
        return torch.nan_to_num(excess, nan=torch.inf)

    def _describe_worst(self, y: Tensor, index: tuple[int, ...]) -> str:
        if self.event_dim == 0:
            element = y.broadcast_to(torch.broadcast_shapes(y.shape, self._finite_excess(y).shape))
            value = element[index].item()
            if not math.isfinite(value):
                return f"value {format_scalar(value)} at {format_index(index)} is not finite"
        return self._describe(y, index)
