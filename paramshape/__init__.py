"""paramshape: keep a PyTorch tensor in the shape you need, in one line.

>>> import torch.nn as nn, paramshape as ps
>>> layer = ps.constrain(nn.Linear(10, 5), "weight", ps.Box(-1, 1))
>>> bool(layer.weight.abs().max() <= 1)
True
"""

from ._version import __version__
from .constrain import InitPolicy, constrain, constraints, unconstrain
from .errors import (
    CompiledRegionError,
    ConstraintConflictError,
    InfeasibleValueError,
    NotAModuleError,
    ParamshapeError,
    ParamshapeWarning,
    RegistryError,
    ShapeMismatchError,
    SpecError,
    SpecTypeError,
    TensorNotFoundError,
    TiedTensorError,
    TransformError,
    UnsupportedTensorError,
)
from .interval import Box, UnitInterval
from .output import bound_output
from .positive import GreaterThan, LessThan, Positive
from .registry import Spec, available, register, resolve
from .simplex import Simplex
from .transform import Transform

__all__ = [
    "Box",
    "CompiledRegionError",
    "ConstraintConflictError",
    "GreaterThan",
    "InfeasibleValueError",
    "InitPolicy",
    "LessThan",
    "NotAModuleError",
    "ParamshapeError",
    "ParamshapeWarning",
    "Positive",
    "RegistryError",
    "ShapeMismatchError",
    "Simplex",
    "Spec",
    "SpecError",
    "SpecTypeError",
    "TensorNotFoundError",
    "TiedTensorError",
    "Transform",
    "TransformError",
    "UnitInterval",
    "UnsupportedTensorError",
    "__version__",
    "available",
    "bound_output",
    "constrain",
    "constraints",
    "register",
    "resolve",
    "unconstrain",
]
