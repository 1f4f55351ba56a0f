"""paramshape: keep a PyTorch tensor in the shape you need, in one line.

>>> import torch.nn as nn, paramshape as ps
>>> layer = ps.constrain(nn.Linear(10, 5), "weight", ps.Box(-1, 1))
>>> bool(layer.weight.abs().max() <= 1)
True
"""

from paramshape import testing
from paramshape._version import __version__
from paramshape.attach.checkpoint import plain_state_dict
from paramshape.attach.constrain import InitPolicy, constrain, constraint_info, constraints, unconstrain
from paramshape.errors import (
    CompiledRegionError,
    ConstraintConflictError,
    ContractViolation,
    FusionUnavailableError,
    InfeasibleValueError,
    ManifoldUnavailableError,
    NotAModuleError,
    ParamshapeError,
    ParamshapeWarning,
    ProjectionUnavailableError,
    RegistryError,
    SaturationWarning,
    ShapeMismatchError,
    SpecError,
    SpecTypeError,
    TensorNotFoundError,
    TiedTensorError,
    TransformError,
    UnsupportedTensorError,
)
from paramshape.fusion.compiled import Fusable, fusion, get_fusion, set_fusion
from paramshape.interop.distributions import TorchTransform
from paramshape.interop.function import FunctionTransform
from paramshape.outputs.bound import bound_output
from paramshape.outputs.layers import BoundedReLU, HardClamp, TemperatureSoftmax
from paramshape.spec.compose import Compose
from paramshape.spec.resolve import Spec, register, resolve
from paramshape.strategies.methods import ConstraintInfo, penalty, project_
from paramshape.strategies.saturation import SaturationReport, saturation, set_saturation_warning
from paramshape.training.functional import functional_params
from paramshape.training.grad import clip_grad
from paramshape.training.init import init_
from paramshape.training.optim import param_groups
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.affine import Affine
from paramshape.transforms.elementwise.interval import Box, UnitInterval
from paramshape.transforms.elementwise.positive import GreaterThan, LessThan, Positive
from paramshape.transforms.elementwise.softclip import SoftClip
from paramshape.transforms.matrix.cholesky import LowerCholesky, PositiveDefinite
from paramshape.transforms.matrix.correlation import CorrCholesky, CorrMatrix
from paramshape.transforms.matrix.determinant import PositiveDeterminant, SpecialLinear
from paramshape.transforms.matrix.grassmann import Grassmannian
from paramshape.transforms.matrix.hermitian import Hermitian
from paramshape.transforms.matrix.lowrank import LowRank
from paramshape.transforms.matrix.orthogonal import Orthogonal
from paramshape.transforms.matrix.rank import PositiveSemidefinite
from paramshape.transforms.matrix.skew import SkewSymmetric
from paramshape.transforms.matrix.spectral import SpectralBound
from paramshape.transforms.matrix.stochastic import DoublyStochastic
from paramshape.transforms.matrix.symmetric import Symmetric
from paramshape.transforms.matrix.unitary import Unitary
from paramshape.transforms.registry import available
from paramshape.transforms.vector.norms import MaxNorm, MinMaxNorm
from paramshape.transforms.vector.ordered import Ordered, PositiveOrdered
from paramshape.transforms.vector.simplex import Simplex
from paramshape.transforms.vector.sphere import UnitNorm
from paramshape.transforms.vector.sumtozero import SumToZero

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
    "DoublyStochastic",
    "FunctionTransform",
    "Fusable",
    "FusionUnavailableError",
    "Grassmannian",
    "GreaterThan",
    "Hermitian",
    "HardClamp",
    "InfeasibleValueError",
    "InitPolicy",
    "LessThan",
    "LowRank",
    "LowerCholesky",
    "MaxNorm",
    "MinMaxNorm",
    "NotAModuleError",
    "Ordered",
    "Orthogonal",
    "ParamshapeError",
    "ParamshapeWarning",
    "Positive",
    "PositiveDefinite",
    "PositiveDeterminant",
    "PositiveOrdered",
    "PositiveSemidefinite",
    "ManifoldUnavailableError",
    "ProjectionUnavailableError",
    "RegistryError",
    "SaturationReport",
    "SaturationWarning",
    "ShapeMismatchError",
    "Simplex",
    "SkewSymmetric",
    "SoftClip",
    "Spec",
    "SpecError",
    "SpecialLinear",
    "SpectralBound",
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
    "Unitary",
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
    "saturation",
    "set_fusion",
    "set_saturation_warning",
    "testing",
    "unconstrain",
    "__version__",
]
