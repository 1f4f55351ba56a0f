"""Shared base of the transforms whose elements are slices along one dimension (``dim``)."""

from __future__ import annotations

import torch
from torch import Tensor

from paramshape.errors import ShapeMismatchError, SpecError
from paramshape.errors.report import format_index, format_shape
from paramshape.numerics.precision import widest
from paramshape.transforms.base import Transform

__all__ = ["VectorTransform", "check_dim", "slice_label"]


def check_dim(dim: object, owner: str) -> int:
    """Return ``dim`` if it is an integer (not a bool); raise :class:`SpecError` otherwise."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise SpecError(f"{owner}: dim must be an integer; got {dim!r}.")
    return dim


def slice_label(index: tuple[int, ...], dim: int) -> str:
    """``[0, :, 2]``: the slice along ``dim`` (non-negative) through ``index``."""
    return "[" + ", ".join(":" if i == dim else str(v) for i, v in enumerate(index)) + "]"


class VectorTransform(Transform):
    """A transform acting on slices along ``dim`` (one event per slice), broadcasting over the others.

    Subclasses set :attr:`min_size` when a slice needs more than one entry, and :attr:`size_change`
    when the stored tensor has a different length along ``dim`` than the value (``-1``: the stored
    slice is one shorter, as for a bijective simplex).
    """

    event_dim = 1
    element_noun = "slices"
    slices_independent = True
    #: The smallest length along ``dim`` of the *value* the transform accepts.
    # Not ClassVars: a family may set them per instance (Simplex: by its method).
    min_size: int = 1
    #: Stored length along ``dim`` minus the value's length.
    size_change: int = 0
    #: Why a slice needs :attr:`min_size` entries, for the error message.
    size_reason: str = ""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_dim(dim, type(self).__name__)

    def event_dims(self, ndim: int) -> tuple[int, ...]:
        return (self.dim % ndim,) if ndim else ()

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self._resize(shape, -self.size_change)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self._resize(shape, self.size_change)

    def _slice_at(self, y: Tensor, index: tuple[int, ...]) -> tuple[Tensor, str]:
        """The slice of ``y`` along ``dim`` through ``index`` (an index of :meth:`_excess`), in float64,
        and its label for messages (``[0, :]``)."""
        dim = self.dim % y.dim()
        where: list[int | slice] = list(index)
        where[dim] = slice(None)
        return widest(y)[tuple(where)], slice_label(index, dim)

    def _resize(self, shape: torch.Size, change: int) -> torch.Size:
        if change == 0 or len(shape) == 0:
            return torch.Size(shape)
        sizes = list(shape)
        sizes[self.dim] += change
        return torch.Size(sizes)

    def check_shape(self, shape: torch.Size) -> None:
        name = type(self).__name__
        if len(shape) == 0:
            raise ShapeMismatchError(
                f"{name} needs a tensor with at least one dimension; got a 0-d tensor. Constrain a "
                "vector of weights instead of a scalar."
            )
        if not -len(shape) <= self.dim < len(shape):
            raise ShapeMismatchError(
                f"{self!r} is out of range for a tensor of shape {format_shape(shape)}; "
                f"use a dim in [{-len(shape)}, {len(shape) - 1}]."
            )
        if shape[self.dim] == 0:
            raise ShapeMismatchError(
                f"{self!r}: the tensor of shape {format_shape(shape)} has no entries "
                f"along dim {self.dim} (at {format_index((self.dim,))})."
            )
        if shape[self.dim] < self.min_size:
            raise ShapeMismatchError(
                f"{self!r} needs at least {self.min_size} entries along dim {self.dim}; the tensor "
                f"of shape {format_shape(shape)} has {shape[self.dim]}. {self.size_reason}"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _last(self, tensor: Tensor) -> Tensor:
        """``tensor`` with ``dim`` moved last."""
        return tensor.movedim(self.dim, -1)

    def _back(self, tensor: Tensor) -> Tensor:
        """Undo :meth:`_last`; contiguous, so results can be viewed and stored like any tensor."""
        return tensor.movedim(-1, self.dim).contiguous()
