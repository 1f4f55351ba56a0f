"""Formatting for error messages: short numbers, shapes, indices and tensor descriptions.

Messages name what is wrong without ever printing a whole tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["format_index", "format_scalar", "format_setting", "format_shape", "tensor_label"]

_MAX_DIGITS = {torch.float16: 5, torch.bfloat16: 4, torch.float32: 9, torch.float64: 17}


def format_scalar(value: float, dtype: torch.dtype = torch.float64) -> str:
    """The shortest decimal that reads back as ``value`` in ``dtype``, always with a decimal point
    or exponent (``1.0``, ``-0.25``, ``inf``, ``1e-06``)."""
    if not math.isfinite(value):
        return repr(value)
    text = repr(value)
    for digits in range(1, _MAX_DIGITS.get(dtype, 17) + 1):
        candidate = f"{value:.{digits}g}"
        if torch.tensor(float(candidate), dtype=dtype).item() == value:
            # repr of the short decimal: '100.0' rather than '1e+02', '1e-06' kept as is.
            text = repr(float(candidate))
            break
    return text


def format_setting(value: Tensor) -> str:
    """A transform setting for a repr: the number for a 0-d tensor, else only its shape."""
    if value.dim() == 0:
        return format_scalar(value.item(), value.dtype)
    return f"Tensor(shape={format_shape(value.shape)})"


def format_shape(shape: torch.Size | tuple[int, ...]) -> str:
    """``(5, 10)``; a 1-d shape keeps its tuple comma: ``(3,)``."""
    return str(tuple(shape))


def format_index(index: tuple[int, ...]) -> str:
    """``[2, 3]`` for an element index, ``[]`` for a 0-d tensor."""
    return "[" + ", ".join(str(i) for i in index) + "]"


def tensor_label(subject: str, tensor: Tensor) -> str:
    """``'encoder.0.weight' of Sequential (shape (5, 10), float32)``."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    return f"{subject} (shape {format_shape(tensor.shape)}, {dtype})"
