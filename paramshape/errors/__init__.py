"""The paramshape error hierarchy.

Every error paramshape raises derives from :class:`ParamshapeError`, and also from the builtin
that fits (``ValueError`` for a bad value, ``TypeError`` for a bad kind of object), so code that
already catches ``ValueError`` keeps working. None derives from ``AttributeError``: PyTorch's
``Module.__getattr__`` would swallow it and report a missing attribute instead.

May import: nothing from paramshape; it is the bottom layer. :mod:`~paramshape.errors.report` (how
values, shapes and indices are written in messages) imports only torch.
"""

from __future__ import annotations

__all__ = [
    "CompiledRegionError",
    "ConstraintConflictError",
    "ContractViolation",
    "FusionUnavailableError",
    "InfeasibleValueError",
    "ManifoldUnavailableError",
    "NotAModuleError",
    "ParamshapeError",
    "ParamshapeWarning",
    "SaturationWarning",
    "ProjectionUnavailableError",
    "RegistryError",
    "ShapeMismatchError",
    "SpecError",
    "SpecTypeError",
    "TensorNotFoundError",
    "TiedTensorError",
    "TransformError",
    "UnsupportedTensorError",
]


class ParamshapeError(Exception):
    """Base class of every error raised by paramshape."""


class SpecError(ParamshapeError, ValueError):
    """A constraint spec is malformed, names no registered transform, or has bad arguments."""


class SpecTypeError(SpecError, TypeError):
    """A constraint spec is not a transform, a transform class or a string."""


class RegistryError(ParamshapeError, ValueError):
    """A registration is refused: the name is taken or is not a valid transform name."""


class InfeasibleValueError(ParamshapeError, ValueError):
    """A value lies outside the constrained set (or is NaN or infinite) where it must lie inside."""


class ShapeMismatchError(ParamshapeError, ValueError):
    """A transform's settings do not fit the tensor (bounds do not broadcast, ``dim`` out of range)."""


class TensorNotFoundError(ParamshapeError, ValueError):
    """A dotted name does not lead to a parameter or buffer of the module."""


class TiedTensorError(ParamshapeError, ValueError):
    """The tensor is shared with another module, which would keep reading the raw values."""


class ConstraintConflictError(ParamshapeError, ValueError):
    """The tensor carries a parametrization paramshape did not attach, or has no paramshape one."""


class UnsupportedTensorError(ParamshapeError, TypeError):
    """The tensor has a dtype no transform applies to (integer, boolean or complex)."""


class TransformError(ParamshapeError, RuntimeError):
    """A transform's own code failed (for example with an ``AttributeError``) while computing."""


class ProjectionUnavailableError(ParamshapeError, NotImplementedError):
    """A transform defines no Euclidean projection, which ``method="project"`` needs."""


class ManifoldUnavailableError(ParamshapeError, NotImplementedError):
    """A transform has no Riemannian structure (tangent projection, retraction), which
    ``method="riemannian"`` needs."""


class NotAModuleError(ParamshapeError, TypeError):
    """An argument that must be an ``nn.Module`` is something else."""


class CompiledRegionError(ParamshapeError, RuntimeError):
    """A paramshape call that changes a module ran inside a ``torch.compile`` region."""


class FusionUnavailableError(ParamshapeError, RuntimeError):
    """``ps.set_fusion("on")`` asked for compiled transforms, but ``torch.compile`` failed here."""


class ContractViolation(ParamshapeError, AssertionError):
    """A transform breaks a property of the transform contract (raised by :mod:`paramshape.testing`).

    ``property`` names the property (for example ``"round_trip"``) and ``transform`` the transform's
    repr; the message says both and what went wrong.
    """

    def __init__(self, prop: str, transform: str, detail: str) -> None:
        super().__init__(f"{transform} breaks the contract property {prop!r}: {detail}")
        self.property = prop
        self.transform = transform


class ParamshapeWarning(UserWarning):
    """Something paramshape did on your behalf that you should know about (values moved, for example)."""


class SaturationWarning(ParamshapeWarning):
    """Most of a reparametrised tensor sits where its map is flat, or a fifth of it and growing, so
    those values barely learn and the optimum likely lies on the bound (see
    :func:`~paramshape.saturation`); silenced by ``ps.set_saturation_warning(False)`` or a
    ``warnings`` filter on this category."""
