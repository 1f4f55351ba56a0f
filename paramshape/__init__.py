"""paramshape: keep a PyTorch tensor in the shape you need, in one line.

>>> import torch.nn as nn, paramshape as ps
>>> layer = ps.constrain(nn.Linear(10, 5), "weight", ps.Box(-1, 1))
>>> bool(layer.weight.abs().max() <= 1)
True
"""

from . import testing
from ._version import __version__
from .affine import Affine
from .checkpoint import plain_state_dict
from .cholesky import LowerCholesky, PositiveDefinite
from .compose import Compose
from .constrain import InitPolicy, constrain, constraint_info, constraints, unconstrain
from .correlation import CorrCholesky, CorrMatrix
from .errors import (
    CompiledRegionError,
    ConstraintConflictError,
    ContractViolation,
    FusionUnavailableError,
    InfeasibleValueError,
    NotAModuleError,
    ParamshapeError,
    ParamshapeWarning,
    ProjectionUnavailableError,
    RegistryError,
    ShapeMismatchError,
    SpecError,
    SpecTypeError,
    TensorNotFoundError,
    TiedTensorError,
    TransformError,
    UnsupportedTensorError,
)
from .function import FunctionTransform
from .functional import functional_params
from .fusion import Fusable, fusion, get_fusion, set_fusion
from .grad import clip_grad
from .init import init_
from .interop import TorchTransform
from .interval import Box, UnitInterval
from .layers import BoundedReLU, HardClamp, TemperatureSoftmax
from .optim import param_groups
from .ordered import Ordered, PositiveOrdered
from .orthogonal import Orthogonal
from .output import bound_output
from .positive import GreaterThan, LessThan, Positive
from .registry import Spec, available, register, resolve
from .simplex import Simplex
from .softclip import SoftClip
from .sphere import UnitNorm
from .strategies import ConstraintInfo, penalty, project_
from .sumtozero import SumToZero
from .symmetric import Symmetric
from .transform import Transform

__all__ = [
    "Affine",
    "BoundedReLU",
    "Box",
    "CompiledRegionError",
    "Compose",
    "ConstraintConflictError",
    "ContractViolation",
    "ConstraintInfo",
    "CorrCholesky",
    "CorrMatrix",
    "FunctionTransform",
    "Fusable",
    "FusionUnavailableError",
    "GreaterThan",
    "HardClamp",
    "InfeasibleValueError",
    "InitPolicy",
    "LessThan",
    "LowerCholesky",
    "NotAModuleError",
    "Ordered",
    "Orthogonal",
    "ParamshapeError",
    "ParamshapeWarning",
    "Positive",
    "PositiveDefinite",
    "PositiveOrdered",
    "ProjectionUnavailableError",
    "RegistryError",
    "ShapeMismatchError",
    "Simplex",
    "SoftClip",
    "Spec",
    "SpecError",
    "SpecTypeError",
    "SumToZero",
    "Symmetric",
    "TemperatureSoftmax",
    "TensorNotFoundError",
    "TiedTensorError",
    "TorchTransform",
    "Transform",
    "TransformError",
    "UnitInterval",
    "UnitNorm",
    "UnsupportedTensorError",
    "available",
    "bound_output",
    "clip_grad",
    "constrain",
    "constraint_info",
    "constraints",
    "functional_params",
    "fusion",
    "get_fusion",
    "init_",
    "param_groups",
    "penalty",
    "plain_state_dict",
    "project_",
    "register",
    "resolve",
    "set_fusion",
    "testing",
    "unconstrain",
    "__version__",
]
