"""The transform contract every paramshape transform follows."""

from __future__ import annotations

import abc
import contextlib
import copy
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from paramshape.errors import (
    InfeasibleValueError,
    ManifoldUnavailableError,
    ParamshapeWarning,
    ProjectionUnavailableError,
    ShapeMismatchError,
    SpecError,
    TransformError,
    UnsupportedTensorError,
)
from paramshape.errors.report import format_index, format_scalar, format_shape, tensor_label
from paramshape.fusion.compiled import Fusable, dispatch
from paramshape.numerics import torch_typed

__all__ = ["Transform", "coerce_value"]

_DEFAULT_HINT = "Assign a value inside the set."
#: How many input shapes a transform remembers as checked (a layer sees few; a cap bounds memory).
_MAX_SHAPES_CHECKED = 32
#: Entries per block when an elementwise membership check runs a block of rows at a time: 2 MB of
#: float64 per temporary, so a check needs a few MB beyond the tensor whatever its size.
_BLOCK_ELEMENTS = 1 << 18


#: nn.Module's own public instance attributes (``training``, set by ``train()``/``eval()``): not settings.
_MODULE_ATTRIBUTES = frozenset(name for name in vars(nn.Module()) if not name.startswith("_"))


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
    #: Whether ``forward`` is a bijection from the domain onto the codomain. A class attribute by
    #: default; a transform whose bijectivity depends on its settings (``Simplex(method=...)``) sets
    #: it per instance. Only bijective transforms have a :meth:`log_abs_det_jacobian`.
    bijective: bool = True
    #: What one element of the set is called in messages.
    element_noun: ClassVar[str] = "values"
    #: Whether the stored tensor alone determines the value, so ``constrain(..., init="raw")`` can
    #: store the current values as the unconstrained ones. False for transforms with state that
    #: their inverse sets (Orthogonal's base).
    supports_raw_init: ClassVar[bool] = True
    #: How the family runs as one fused kernel (see :mod:`paramshape.fusion`); ``None``: not fusable.
    #: A subclass that overrides ``forward`` without setting its own ``fusable`` is not fused.
    fusable: ClassVar[Fusable | None] = None
    #: Whether the set is a Riemannian manifold this transform knows the geometry of: it implements
    #: :meth:`riemannian_grad`, :meth:`retract` (and may override :meth:`transport`), which
    #: ``ps.constrain(..., method="riemannian")`` uses to step on the set itself.
    manifold: ClassVar[bool] = False
    #: Whether the map acts on each event (a slice along :meth:`event_dims`) on its own, with no
    #: state shared across events: then membership checks and the inverse run a block of rows at a
    #: time (:meth:`_row_blocks`). Vector transforms set it; elementwise ones need not.
    slices_independent: ClassVar[bool] = False
    #: Buffers that :meth:`inverse` sets, one slice per event along the block axis (Orthogonal's
    #: base): the inverse of a batch then runs a block at a time too, each block on a copy of the
    #: transform, and the blocks' buffers are gathered into the transform's own at the end.
    block_state: ClassVar[tuple[str, ...]] = ()
    #: Whether each element is checked and mapped on its own, whatever its position and the
    #: tensor's shape (an elementwise map whose settings are scalars): :func:`~paramshape.constrain`
    #: then checks the values of many small tensors that share one spec in one flat pass
    #: (:mod:`paramshape.attach.batched`) instead of one pass per tensor. A subclass that overrides
    #: ``forward``, ``inverse``, ``_excess`` or ``validate`` without setting it gets False.
    flat_checks: ClassVar[bool] = False
    #: Whether the set is one of complex tensors: :func:`~paramshape.constrain` admits a complex
    #: tensor only for such a transform (:meth:`check_dtype`), and assigned complex values pass
    #: :meth:`admit`. Every transform of real sets leaves it False, so a complex tensor is refused
    #: with a message naming the tensor, the set and the dtype, never silently mapped as real.
    supports_complex: ClassVar[bool] = False
    #: Whether the set holds complex tensors only (:class:`~paramshape.Unitary`): a real tensor is
    #: then refused by :meth:`check_dtype`, pointing to the real counterpart.
    complex_only: ClassVar[bool] = False
    #: The dtype that the map's dtype-dependent constants (the jitter of PositiveDefinite and
    #: CorrMatrix) are sized for: the tensor's dtype when :func:`paramshape.constrain` bound the
    #: transform, kept through later dtype moves so that a move rounds the value but never changes
    #: the map; ``None`` for a transform used on its own (each input's own dtype).
    _map_dtype: torch.dtype | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # An inherited kernel would silently replace the subclass's own forward.
        if "forward" in cls.__dict__ and "fusable" not in cls.__dict__:
            cls.fusable = None
        # Likewise, inherited clamp bounds would silently replace the subclass's own projection.
        if "project" in cls.__dict__ and "clamp_bounds" not in cls.__dict__:
            cls.clamp_bounds = Transform.clamp_bounds  # type: ignore[method-assign]  # on purpose, see above
        # And an inherited flat check would batch a map that may no longer act element by element.
        overrides = ("forward", "inverse", "_excess", "validate", "_finite_excess")
        if any(name in cls.__dict__ for name in overrides) and "flat_checks" not in cls.__dict__:
            cls.flat_checks = False

    def __init__(self) -> None:
        super().__init__()
        # Label of the tensor this transform is attached to, for error messages. Set by constrain().
        self._target: str | None = None
        # The shape of the value it produces there, and an empty tensor of its dtype and device
        # (converted by _apply with the module, so it follows .double() and .to(device)). Set by
        # _bind; None for a transform used on its own.
        self._value_shape: torch.Size | None = None
        self._value_like: Tensor | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # A constrained transform's settings (slope, softness, method, rank, ...) are plain
        # attributes the map reads at every call: rewriting one would silently change every value
        # (and leave fold=True's cache stale). Bounds are tensors, checked on assignment instead.
        if (
            not name.startswith("_")
            and name not in _MODULE_ATTRIBUTES
            and self.__dict__.get("_target") is not None
            and name in self.__dict__
        ):
            raise SpecError(
                f"{self._target}: the setting '{name}' of {self!r} is fixed once the transform is "
                f"constrained (it would change every value read). Constrain the tensor again with a new "
                f"transform: ps.constrain(module, name, {type(self).__name__}(..., {name}={value!r}))."
            )
        super().__setattr__(name, value)

    def __deepcopy__(self, memo: dict[int, Any]) -> Transform:
        """A deep copy, as ``copy.deepcopy`` makes one of any module, minus its slow part: a module
        holds a dozen hook and state dictionaries, nearly always empty, and deepcopy reduces each
        through ``copyreg`` (a third of ``constrain()``'s time for 200 small tensors, which copies
        the transform once per tensor). Empty built-in containers are made anew; everything else is
        deep-copied as usual. A subclass with its own pickling state takes the usual path."""
        cls = type(self)
        if (
            cls.__getstate__ is not nn.Module.__getstate__
            or cls.__setstate__ is not nn.Module.__setstate__
            or cls.__reduce_ex__ is not object.__reduce_ex__
        ):
            return _plain_deepcopy(self, memo)  # type: ignore[no-any-return]  # a copy of self: a Transform
        new = cls.__new__(cls)
        memo[id(self)] = new
        state = new.__dict__
        atomic, empty_kinds = _ATOMIC, _EMPTY_KINDS  # locals: read 24 times per copy of a Box
        for key, value in self.__dict__.items():
            kind = type(value)
            if kind in atomic or (kind is tuple and all(type(item) in atomic for item in value)):
                state[key] = value  # what copy.deepcopy returns as is, without its dispatch per value
            elif kind in empty_kinds and not value:
                state[key] = kind()
            elif kind is OrderedDict or kind is dict:
                # The buffer table: its plain tensors cloned directly (Tensor.__deepcopy__ is
                # Python, several times a clone's cost); anything else deep-copied as usual.
                table = kind()
                for name, item in value.items():
                    table[name] = _copy_plain_tensor(item, memo)
                state[key] = table
            else:
                state[key] = _copy_plain_tensor(value, memo)
        return new

    def _bind(self, target: str, value: Tensor) -> None:
        """Remember the tensor this transform is attached to (by :func:`paramshape.constrain`): its
        label for messages, and the shape, dtype and device an assigned value is held to."""
        # Plain attributes, written straight into the instance (Module.__setattr__ and the
        # transforms' own checks cost more than the rest of a bind, 200 times per constrain call);
        # the names are never parameters, buffers or submodules.
        self.__dict__.update(
            _target=target,
            _value_shape=torch.Size(value.shape),
            _value_like=torch.empty(0, dtype=value.dtype, device=value.device),
        )
        # A transform without submodules (nearly all) is the only part: no walk of modules().
        for part in self.modules() if self._modules else (self,):
            if isinstance(part, Transform):
                part.__dict__["_map_dtype"] = value.dtype

    def map_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the map's constants are sized for when it acts on a tensor of ``dtype``: the
        dtype the transform was constrained in (see :attr:`_map_dtype`), else ``dtype`` itself.

        Example:
            >>> import torch, paramshape as ps
            >>> ps.PositiveDefinite().map_dtype(torch.float16)
            torch.float16
        """
        fixed = self._map_dtype
        return dtype if fixed is None else fixed

    def _apply(self, fn: Any, recurse: bool = True) -> Transform:
        if self.supports_complex:
            fn = _complex_kept(fn)
        like = getattr(self, "_value_like", None)
        converted = fn(like) if like is not None else None
        result: Transform = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # unannotated in torch
        if converted is not None:
            self._value_like = converted
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # An AttributeError escaping here would be swallowed by Module.__getattr__ of the
        # parametrized module and reported as "has no attribute 'weight'" (pytorch#72452).
        try:
            compiling = torch.compiler.is_compiling()
            if len(args) == 1 and isinstance(args[0], Tensor) and not compiling:
                self._check_input_shape(args[0].shape)
            # The fused or hand-fused kernel; inside a compiled region dynamo traces forward itself.
            fusable = self.fusable
            if fusable is not None and len(args) == 1 and not kwargs and not compiling:
                out = dispatch(self, fusable, args[0])
                if out is not None:
                    return out
            return super().__call__(*args, **kwargs)
        except AttributeError as error:
            raise TransformError(f"{self!r} failed while computing: {error}") from error

    def _check_input_shape(self, shape: torch.Size) -> None:
        """Raise :class:`~paramshape.ShapeMismatchError` when the map cannot apply to a stored tensor
        of ``shape`` (a 1 x 3 "matrix" for Symmetric, one entry for SumToZero, bounds that do not
        broadcast), instead of a silently reshaped value or a raw error from inside the map. A shape
        that passed once is remembered (settings that decide it change only by loading a state dict,
        which forgets them), so a constrained tensor's every read pays a set lookup only."""
        checked = self.__dict__.get("_shapes_checked")
        if checked is not None and shape in checked:
            return
        self.check_shape(self.forward_shape(shape))
        if checked is None or len(checked) >= _MAX_SHAPES_CHECKED:
            checked = self.__dict__["_shapes_checked"] = set()
        checked.add(shape)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        self.__dict__.pop("_shapes_checked", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ---------------------------------------------------------------- the map
    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Map an unconstrained tensor onto the constrained set."""

    @abc.abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """Map a value of the (closed) set back to an unconstrained tensor, without checking it."""

    def right_inverse(self, value: Any) -> Tensor:
        """Admit ``value`` (:meth:`admit`: converted, shape-checked, checked to lie in the set), then
        return :meth:`inverse` of it. ``layer.weight = value`` on a constrained tensor calls this.

        parametrize calls this under ``no_grad`` when a value is assigned, so a value that requires
        grad is stored without its history: that is what ``torch.func.functional_call`` does with a
        constrained name, silently dropping the gradient. A :class:`ParamshapeWarning` says so.
        """
        prepared = _PREPARED[0]
        if prepared is not None and value is prepared[0]:
            # constrain() registering the tensor it planned: the plan admitted the value and its
            # dry run computed the inverse (kept for small tensors), so neither is done twice.
            return prepared[1] if prepared[1] is not None else self.inverse_in_blocks(value)
        # A Parameter is parametrize registering the tensor itself, not a value being assigned.
        if (
            isinstance(value, Tensor)
            and value.requires_grad
            and not torch.is_grad_enabled()
            and not isinstance(value, nn.Parameter)
        ):
            _warn_gradient_dropped(self._target)
        return self.inverse_in_blocks(self.admit(value))

    def inverse_in_blocks(self, value: Tensor) -> Tensor:
        """:meth:`inverse`, computed a block of rows at a time for an elementwise transform, so its
        temporaries cost a few MB instead of several times the tensor (the same numbers: the map is
        elementwise). What storing a value (assignment, checkpoint, ``constrain``) runs."""
        if value.device.type == "meta":
            # No values to invert (deferred initialisation), only a shape: matrix inverses read
            # scalars (a norm, a determinant's sign) that meta tensors cannot give.
            return value.new_empty(self.inverse_shape(value.shape))
        blocks = iter(self._row_blocks(value))
        start, part, transform = next(blocks)
        first = transform.inverse(part)
        if start is None:
            return first
        axis = self._block_axis(value)
        shape = list(first.shape)  # a shape-changing inverse (ILR) changes the events' sizes only
        shape[axis] = value.shape[axis]
        out = first.new_empty(shape)
        out.narrow(axis, 0, first.shape[axis]).copy_(first)
        del first
        state: dict[str, Tensor] = {}
        self._gather_state(state, transform, 0, value.shape[axis], axis)
        for start, part, transform in blocks:
            assert start is not None  # only a single block has no start, returned above
            out.narrow(axis, start, part.shape[axis]).copy_(transform.inverse(part))
            self._gather_state(state, transform, start, value.shape[axis], axis)
        for name, tensor in state.items():
            setattr(self, name, tensor)
        if state:
            self.__dict__.pop("_shapes_checked", None)  # the shapes the map accepts follow the state
        return out

    def _gather_state(
        self, state: dict[str, Tensor], block: Transform, start: int, rows: int, axis: int
    ) -> None:
        """Copy the :attr:`block_state` buffers ``block``'s inverse set into ``state``'s full-size
        tensors, at the block's rows."""
        for name in self.block_state:
            piece = block._buffers.get(name)
            if piece is None:
                continue
            full = state.get(name)
            if full is None:
                shape = list(piece.shape)
                shape[axis] = rows
                full = state[name] = piece.new_empty(shape)
            full.narrow(axis, start, piece.shape[axis]).copy_(piece)

    def admit(self, value: Any, *, hint: str | None = None, broadcast: bool = True) -> Tensor:
        """``value`` as a tensor of the constrained tensor's shape, dtype and device, checked to lie
        in the set: the one gate every value entering a constrained tensor passes (assignment,
        :func:`~paramshape.init_`, a checkpoint's plain keys).

        * Python numbers, (nested) lists and NumPy arrays are converted, as are integer tensors and
          floating tensors of another dtype or device (rounding to the tensor's dtype, as
          ``Tensor.copy_`` does).
        * The shape rule: a value must have the tensor's shape, or broadcast to it without changing
          it (``0.01`` or ``torch.tensor(0.01)`` for a shape-``(1,)`` tensor, a row for every row);
          the stored tensor never changes shape. ``broadcast=False`` asks for the exact shape (as
          ``load_state_dict`` does).
        * ``None``, booleans, complex numbers and non-numeric objects are refused.

        Without :func:`~paramshape.constrain` (a transform used on its own) only the conversion and the
        transform's own :meth:`check_shape` apply, in the default dtype for numbers.

        Returns:
            A tensor that may share memory with ``value``; broadcast values are materialised.

        Raises:
            UnsupportedTensorError: ``value`` is None, boolean, complex or not numeric.
            ShapeMismatchError: ``value`` does not fit the tensor's shape.
            InfeasibleValueError: ``value`` lies outside the set (or is NaN or infinite).

        Example:
            >>> import torch, torch.nn as nn, paramshape as ps
            >>> layer = ps.constrain(nn.Linear(2, 2), "weight", ps.Box(-1, 1))
            >>> layer.weight = 0.25  # a number fills the tensor
            >>> layer.weight.detach()
            tensor([[0.2500, 0.2500],
                    [0.2500, 0.2500]])
            >>> try:
            ...     layer.weight = torch.zeros(3, 3)
            ... except ps.ShapeMismatchError as error:
            ...     print(error)
            'weight' of Linear (shape (2, 2), float32): the value assigned has shape (3, 3), which does not broadcast to (2, 2); a constrained tensor never changes shape. Assign a value of shape (2, 2), or unconstrain it first to change the architecture.
        """
        like = getattr(self, "_value_like", None)
        tensor = coerce_value(
            value,
            shape=getattr(self, "_value_shape", None),
            dtype=like.dtype if like is not None else None,
            device=like.device if like is not None else None,
            label=self._target or "value",
            broadcast=broadcast,
            complex_ok=self.supports_complex,
        )
        self.check_shape(tensor.shape)
        self.validate(tensor, hint=hint)
        return tensor

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
        return torch_typed.independent(constraints.real, self.event_dim)

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

    def project(self, y: Tensor) -> Tensor:
        r"""The Euclidean projection of ``y`` onto the *closed* set: the nearest point of the set.

        .. math::

            P(y) = \operatorname*{arg\,min}_{z \in \bar C} \lVert z - y \rVert_2

        taken per element for elementwise transforms and per slice (or matrix) for the others.
        Unlike :meth:`to_interior` it adds no margin: values outside land exactly on the boundary and
        values inside are returned unchanged. It is what ``ps.constrain(..., method="project")``
        applies after every optimizer step, what ``ps.penalty`` measures the distance to, and what
        ``ps.project_`` calls. NaN stays NaN (a projection cannot repair a diverged value).

        Transforms with a cheap exact projection override this method (a clamp for bounds, a
        sort-based projection for the simplex). The default raises
        :class:`~paramshape.ProjectionUnavailableError` (also a :class:`NotImplementedError`).

        Args:
            y: values of the tensor's shape, in any floating dtype.

        Returns:
            A tensor of ``y``'s shape and dtype, inside the closed set.

        Raises:
            ProjectionUnavailableError: the transform defines no projection.

        Example:
            >>> import torch, paramshape as ps
            >>> ps.Box(-1.0, 1.0).project(torch.tensor([-3.0, 0.25, 2.0]))
            tensor([-1.0000,  0.2500,  1.0000])
        """
        raise ProjectionUnavailableError(
            f"method='project' is not available for {type(self).__name__}: it defines no Euclidean "
            "projection (Transform.project). Use method='reparam' or method='penalty'."
        )

    def clamp_bounds(self) -> tuple[Tensor | None, Tensor | None] | None:
        r"""The bounds :math:`(l, h)` when :meth:`project` is the elementwise clamp
        :math:`P(y) = \min(\max(y, l), h)`, ``None`` for a side without one; ``None`` (the default)
        when the projection is anything else.

        The optimizer hook of ``method="project"`` uses them to project all such tensors of a step
        in place, with one foreach clamp per distinct bound (``torch._foreach_clamp_min_`` and
        ``_clamp_max_``; ``_foreach_maximum_`` and ``_minimum_`` for tensor bounds) instead of a
        :meth:`project` and a copy per tensor. A subclass that overrides :meth:`project`
        without overriding this method gets ``None``, so its own projection runs.

        Example:
            >>> import paramshape as ps
            >>> ps.Box(-1.0, 1.0).clamp_bounds()
            (tensor(-1.), tensor(1.))
        """
        return None

    # ---------------------------------------------------------------- Riemannian geometry
    def riemannian_grad(self, point: Tensor, egrad: Tensor) -> Tensor:
        r"""The Riemannian gradient at ``point`` of a function whose Euclidean gradient is ``egrad``.

        .. math::

            \operatorname{grad} f(p) = G_p^{-1}\bigl(P_{T_p}(\nabla f(p))\bigr)

        the Euclidean gradient projected onto the tangent space :math:`T_p` of the set at ``p`` and
        converted by the manifold's metric :math:`G_p` (the identity for the embedded metric of the
        sphere and the Stiefel manifold; :math:`p\,\operatorname{sym}(\nabla f)\,p` for the
        affine-invariant metric of positive definite matrices). It is what
        ``ps.constrain(..., method="riemannian")`` puts in ``.grad`` before the optimizer step.

        Transforms with ``manifold = True`` override this, :meth:`retract` and, where the tangent
        projection is not a good transport, :meth:`transport`. The default raises
        :class:`~paramshape.ManifoldUnavailableError`.

        Args:
            point: a point of the set, of the tensor's shape (a batch of slices or matrices).
            egrad: the Euclidean gradient at ``point``, of the same shape.

        Returns:
            A tangent vector at ``point``, of ``point``'s shape and dtype.

        Raises:
            ManifoldUnavailableError: the transform has no Riemannian structure.

        Example:
            >>> import torch, paramshape as ps
            >>> ps.UnitNorm().riemannian_grad(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 3.0]))
            tensor([0., 3.])
        """
        raise self._no_manifold()

    def retract(self, point: Tensor, tangent: Tensor) -> Tensor:
        r"""A retraction: the point of the set reached from ``point`` along the tangent vector
        ``tangent``, :math:`R_p(v)`, with :math:`R_p(0) = p` and :math:`\frac{d}{dt} R_p(tv)|_{t=0} = v`.

        The result lies in the set to the dtype's precision (:meth:`contains` accepts it). It is what
        ``method="riemannian"`` applies after the optimizer step, with the step the optimizer took as
        ``tangent`` (first projected onto the tangent space).

        Args:
            point: a point of the set.
            tangent: a tangent vector at ``point`` (components normal to the set are tolerated and
                removed by the retraction where it says so).

        Returns:
            A point of the set, of ``point``'s shape and dtype.

        Raises:
            ManifoldUnavailableError: the transform has no Riemannian structure.

        Example:
            >>> import torch, paramshape as ps
            >>> ps.UnitNorm().retract(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
            tensor([0.7071, 0.7071])
        """
        raise self._no_manifold()

    def transport(self, point: Tensor, new_point: Tensor, tangent: Tensor) -> Tensor:
        r"""A vector transport: carries ``tangent``, a tangent vector at ``point``, into the tangent
        space at ``new_point``. ``method="riemannian"`` transports the optimizer's momentum
        (SGD's ``momentum_buffer``, Adam's ``exp_avg``) after each retraction.

        The default is the projection onto the tangent space at ``new_point``,
        :math:`P_{T_q}(v)` (a valid vector transport for a submanifold of a Euclidean space),
        computed as :meth:`riemannian_grad` would for an embedded metric; transforms whose
        :meth:`riemannian_grad` includes a metric conversion override it.

        Args:
            point: the point the vector is tangent at.
            new_point: the point to carry it to.
            tangent: a tangent vector at ``point``.

        Returns:
            A tangent vector at ``new_point``, of its shape and dtype.

        Raises:
            ManifoldUnavailableError: the transform has no Riemannian structure.

        Example:
            >>> import torch, paramshape as ps
            >>> sphere = ps.UnitNorm()
            >>> sphere.transport(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]))
            tensor([0., 0.])
        """
        return self.riemannian_grad(new_point, tangent)

    def _no_manifold(self) -> ManifoldUnavailableError:
        return ManifoldUnavailableError(
            f"method='riemannian' is not available for {type(self).__name__}: its set has no "
            "Riemannian structure in paramshape (Transform.riemannian_grad, retract). Use "
            "method='reparam', 'project' (if it defines a projection), 'penalty' or 'lagrangian'."
        )

    def contains(self, y: Tensor) -> Tensor:
        """Boolean tensor, broadcastable against ``y``: which elements (or slices) lie in the set.

        The test is on the closed set with a tolerance of a few ulps of the bounds in ``y``'s dtype,
        because the forward map can round onto a bound. NaN and infinite values are never inside.
        """
        blocks = list(self._row_blocks(y, membership=True))
        if len(blocks) == 1:
            return self._finite_excess(y) == 0
        axis = self._block_axis(y)
        inside: Tensor | None = None
        for start, part, transform in blocks:
            assert start is not None  # several blocks: each starts at a row
            answer = transform._finite_excess(part) == 0
            if inside is None:  # events reduce to size 1 (keepdim): the answer's own shape
                shape = list(answer.shape)
                shape[axis] = y.shape[axis]
                inside = torch.empty(shape, dtype=torch.bool, device=y.device)
            inside.narrow(axis, start, answer.shape[axis]).copy_(answer)
        assert inside is not None
        return inside

    def value_and_slope(self, x: Tensor, out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        r"""The value :math:`y = f(x)` and the elementwise slope :math:`f'(x)` of an *elementwise*
        transform, both without autograd history: what a step-folded tensor
        (``constrain(..., fold=True)``) computes once per optimizer step, so that a gradient
        :math:`g` reaching the value becomes :math:`g \, f'(x)` on the stored tensor.

        The default differentiates :meth:`forward` with autograd (one forward and one backward);
        a transform with a cheaper closed form overrides it (``Box``). Only for transforms whose
        every output element depends on its own input element alone (:meth:`event_dims` is ``()``).
        ``out``: two tensors of ``x``'s shape and dtype to write the value and the slope into.

        Example:
            >>> import torch, paramshape as ps
            >>> y, slope = ps.Positive().value_and_slope(torch.zeros(2))
            >>> y, slope  # 0.25 softplus(4 x) and its slope sigmoid(4 x) at 0
            (tensor([0.1733, 0.1733]), tensor([0.5000, 0.5000]))
        """
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            y = self(leaf)
            (slope,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        if out is None:
            return y.detach(), slope
        out[0].copy_(y.detach())
        out[1].copy_(slope)
        return out

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

    def check_dtype(self, dtype: torch.dtype, label: str = "value") -> None:
        """Raise :class:`~paramshape.UnsupportedTensorError` naming ``label``, the set and ``dtype``
        unless the set holds tensors of ``dtype``: real floating point for every set, complex
        (``complex64``, ``complex128``) for those with :attr:`supports_complex`, and complex only for
        those with :attr:`complex_only`.

        Example:
            >>> import torch, paramshape as ps
            >>> try:
            ...     ps.Box(-1, 1).check_dtype(torch.complex64, "'weight' of Linear")
            ... except ps.UnsupportedTensorError as error:
            ...     print(error)
            'weight' of Linear has dtype torch.complex64; Box(low=-1.0, high=1.0) is a set of real tensors. Constrain a real tensor, or use a set of complex ones (unitary, hermitian, unit_norm).
        """
        name = str(dtype)
        if dtype.is_complex and not self.supports_complex:
            raise UnsupportedTensorError(
                f"{label} has dtype {name}; {self!r} is a set of real tensors. Constrain a real "
                "tensor, or use a set of complex ones (unitary, hermitian, unit_norm)."
            )
        if not dtype.is_complex and self.complex_only:
            raise UnsupportedTensorError(
                f"{label} has dtype {name}; {self!r} is a set of complex tensors. Constrain a "
                f"complex64 or complex128 tensor{self._real_counterpart()}."
            )
        if not (dtype.is_floating_point or dtype.is_complex):
            raise UnsupportedTensorError(
                f"{label} has dtype {name}; only real floating point (or, for a set of complex "
                "tensors, complex) tensors can be constrained."
            )

    def _real_counterpart(self) -> str:
        """``, or ps.X for a real one`` naming the set of real tensors a complex-only set extends."""
        return ""

    # ---------------------------------------------------------------- log-det-Jacobian
    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Log of the absolute determinant of the Jacobian of :meth:`forward` at ``x``, per event.

        The signature and the event-dimension rules are those of
        :meth:`torch.distributions.transforms.Transform.log_abs_det_jacobian`: ``x`` is an
        unconstrained tensor and ``y = forward(x)`` (passed in so it is not recomputed). The result
        has ``x``'s shape with the event dimensions (:meth:`event_dims`) removed: the same shape as
        ``x`` for elementwise transforms, one entry per slice for vector transforms, one per matrix for
        matrix transforms. It is what turns a density on the constrained value into one on the
        unconstrained tensor:

        .. math::

            \log p_X(x) = \log p_Y(f(x)) + \log\lvert\det J_f(x)\rvert

        The determinant is taken in the coordinates :meth:`domain_coordinates` and
        :meth:`codomain_coordinates` pick; by default every entry of an event is a coordinate, so the
        Jacobian is square. Transforms whose value has more entries than free coordinates (a
        bijective simplex stores ``K - 1`` numbers for ``K`` probabilities) say in their docstring
        which coordinates of the value the density refers to.

        Subclasses override this method; the default raises :class:`NotImplementedError`, saying why
        (a transform that is not bijective has no log-det-Jacobian).

        Args:
            x: the unconstrained tensor.
            y: ``forward(x)``.

        Returns:
            A tensor of ``x``'s dtype and of ``x``'s shape without the event dimensions.

        Raises:
            NotImplementedError: the transform is not bijective, or does not implement it.

        Example:
            >>> import torch, paramshape as ps
            >>> box = ps.Box(0.0, 4.0)
            >>> x = torch.zeros(3)
            >>> box.log_abs_det_jacobian(x, box(x))  # slope (4 - 0) / 4 = 1 at x = 0
            tensor([0., 0., 0.])
        """
        raise NotImplementedError(self._no_jacobian_reason())

    def _no_jacobian_reason(self) -> str:
        """Why :meth:`log_abs_det_jacobian` is not available, for the :class:`NotImplementedError`."""
        if not self.bijective:
            return (
                f"{self!r} is not a bijection from its domain onto its codomain, so it has no "
                "log-det-Jacobian. Use a bijective transform for the same set if one exists."
            )
        return (
            f"{type(self).__name__} does not implement log_abs_det_jacobian(x, y); override it "
            "(paramshape.testing.check_transform compares it with an autograd Jacobian)."
        )

    def event_dims(self, ndim: int) -> tuple[int, ...]:
        """The dimensions, counted from 0, that form one event of a tensor with ``ndim`` dimensions:
        ``()`` for elementwise transforms, the trailing :attr:`event_dim` ones by default otherwise.
        Transforms with a ``dim`` argument return that dimension. The same positions hold for the
        unconstrained tensor and the value (a shape-changing transform changes sizes, not ranks)."""
        return tuple(range(ndim - self.event_dim, ndim))

    def domain_coordinates(self, x: Tensor) -> Tensor:
        """The free coordinates of each event of an unconstrained tensor, as ``(*batch, n)``: the
        event dimensions (:meth:`event_dims`) moved last and flattened, ``batch`` being ``x``'s shape
        without them. :meth:`log_abs_det_jacobian` is the log-density change with respect to these
        coordinates. Override it (with a pure selection of entries, no arithmetic) when some entries
        of the stored tensor are ignored by :meth:`forward`."""
        return _flatten_events(x, self.event_dims(x.dim()))

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        """The coordinates of each event of a constrained value that :meth:`log_abs_det_jacobian`
        measures the density in, as ``(*batch, n)``; by default every entry of the event. Override it
        when the value has more entries than free coordinates (the first ``K - 1`` probabilities of a
        simplex; the lower triangle of a symmetric matrix): the count must equal that of
        :meth:`domain_coordinates`, so the Jacobian between them is square."""
        return _flatten_events(y, self.event_dims(y.dim()))

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
        if value.device.type == "meta":
            return  # no values (deferred initialisation); checked when real values come in
        count, total, worst = 0, 0, -1.0
        index: tuple[int, ...] = ()
        # Elementwise sets are checked a block of rows at a time: the float64 excess of the whole
        # tensor (and its temporaries) would cost several times the tensor's own memory.
        axis = self._block_axis(value)
        for start, part, transform in self._row_blocks(value, membership=True):
            excess = transform._finite_excess(part)
            total += excess.numel()
            outside = int((excess != 0).sum())
            if not outside:
                continue
            count += outside
            peak, flat = torch.max(excess.reshape(-1), 0)
            if float(peak) > worst:
                worst = float(peak)
                where = tuple(int(i) for i in torch.unravel_index(flat, excess.shape))
                if start is not None:  # the block's index along its axis, back in the whole tensor
                    where = (*where[:axis], where[axis] + start, *where[axis + 1 :])
                index = where
        if count == 0:
            return
        detail = self._describe_worst(value, index)
        label = tensor_label(self._target or "value", value)
        raise InfeasibleValueError(
            f"{label}: {count} of {total} {self.element_noun} lie outside {self!r}; "
            f"worst: {detail}. {hint or _DEFAULT_HINT}"
        )

    def _block_axis(self, value: Tensor) -> int:
        """The dimension :meth:`_row_blocks` cuts ``value`` along: the first one that is not an event
        dimension (the rows, unless the events run along them, as ``MaxNorm(dim=0)``'s columns)."""
        events = set(self.event_dims(value.dim())) if self.event_dim else set()
        return next((d for d in range(value.dim()) if d not in events), 0)

    def _row_blocks(
        self, value: Tensor, *, membership: bool = False
    ) -> Iterator[tuple[int | None, Tensor, Transform]]:
        """``(start, part, transform)`` for blocks of about ``_BLOCK_ELEMENTS`` entries of ``value``
        along :meth:`_block_axis` (``start`` counts along it), each with the transform's own per-row
        settings sliced to match; one block ``(None, value, self)`` unless the transform acts on
        each element or event on its own (elementwise with settings only in its own buffers, of at
        most ``value``'s rank, or :attr:`slices_independent`). ``membership``: the blocks are only
        checked against the set, which a vector or matrix transform's buffers (Orthogonal's base,
        state its inverse sets) do not change, so those are cut too."""
        buffers = {name: b for name, b in self._buffers.items() if b is not None}
        axis = self._block_axis(value)
        rows = value.shape[axis] if value.dim() else 0
        # A vector or matrix transform acts on each event on its own: blocks along a dimension
        # outside the events give the same numbers. State its inverse sets per event (block_state)
        # is set on a copy per block and gathered by inverse_in_blocks.
        per_event = self.event_dim > 0 and (membership or set(buffers) <= set(self.block_state))
        stateless = not buffers or per_event
        rows_apart = self.event_dim == 0 or (
            self.slices_independent and stateless and axis not in self.event_dims(value.dim())
        )
        if (
            not rows_apart
            or value.numel() <= _BLOCK_ELEMENTS
            or rows < 2
            or any(True for _ in self.children())
            or bool(self._parameters)  # learnable settings: computed from parameters, not sliced here
            or any(b.dim() > value.dim() for b in buffers.values())
        ):
            yield None, value, self
            return
        step = max(1, _BLOCK_ELEMENTS * rows // value.numel())
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            sliced = {
                name: b[start:stop]
                for name, b in buffers.items()
                if self.event_dim == 0 and b.dim() == value.dim() and b.shape[0] != 1
            }
            transform = self
            if sliced or (self.block_state and not membership):
                # A shallow copy that reads the rows' bounds, or whose inverse sets its own state:
                # no tensor is copied.
                transform = copy.copy(self)
                transform.__dict__["_buffers"] = {**self._buffers, **sliced}
            yield start, value.narrow(axis, start, stop - start), transform

    def _finite_excess(self, y: Tensor) -> Tensor:
        excess = self._excess(y)
        if self.event_dim == 0:
            excess = torch.where(torch.isfinite(y), excess, torch.inf)
        return torch.nan_to_num(excess, nan=torch.inf)

    def _describe_worst(self, y: Tensor, index: tuple[int, ...]) -> str:
        if self.event_dim == 0:
            element = y.broadcast_to(torch_typed.broadcast_shapes(y.shape, self._finite_excess(y).shape))
            value = element[index].item()
            if not math.isfinite(value):
                return f"value {format_scalar(value)} at {format_index(index)} is not finite"
        return self._describe(y, index)


def coerce_value(
    value: Any,
    *,
    shape: torch.Size | None,
    dtype: torch.dtype | None,
    device: torch.device | None,
    label: str,
    broadcast: bool = True,
    complex_ok: bool = False,
) -> Tensor:
    """The shape and type rule of :meth:`Transform.admit`, in one place: ``value`` converted to a
    floating tensor of ``dtype`` on ``device``, of ``shape`` exactly (or broadcast to it, unchanged,
    when ``broadcast``). ``None`` for ``shape``, ``dtype`` or ``device`` leaves that one free (numbers
    then get the default dtype). Raises :class:`UnsupportedTensorError` or :class:`ShapeMismatchError`
    naming ``label``, the expected shape and dtype. Complex values are refused unless ``complex_ok``
    (a set of complex tensors) and ``dtype`` is complex or free; real values for a complex ``dtype``
    are converted to it (imaginary part 0)."""
    expected = f"shape {format_shape(shape)}" if shape is not None else "a shape"
    where = f"{label} ({expected}, {str(dtype).removeprefix('torch.')})" if dtype is not None else label
    if value is None:
        raise UnsupportedTensorError(
            f"{where}: cannot assign None to a constrained tensor. To remove the constraint, call "
            "ps.unconstrain(module, name); to drop the tensor, unconstrain it first."
        )
    if isinstance(value, nn.Parameter):
        value = value.detach()
    if _other_number(value):
        value = float(value)  # Fraction, Decimal, NumPy-free exact numbers: their nearest float
    if not isinstance(value, Tensor):
        if isinstance(value, (bool, str, bytes)) or not _array_like(value):
            raise UnsupportedTensorError(
                f"{where}: cannot assign a {type(value).__name__}; assign a tensor, a Python number, "
                "a (nested) list of numbers or a NumPy array."
            )
        try:
            converted = torch.as_tensor(value)
            if converted.is_floating_point() and not hasattr(value, "__array__"):
                # Python floats are float64: read them so, not through the default dtype, so 0.1
                # means 0.1 at the tensor's precision (float32 first would round it twice).
                converted = torch.as_tensor(value, dtype=torch.float64).to(dtype or torch.get_default_dtype())
            value = converted
        except (TypeError, ValueError, RuntimeError) as error:
            raise UnsupportedTensorError(
                f"{where}: cannot convert the {type(value).__name__} assigned to a tensor ({error})."
            ) from None
    value = _dense_values(value, where, device)
    complex_target = complex_ok and (dtype is None or dtype.is_complex)
    if value.dtype == torch.bool or (value.is_complex() and not complex_target):
        kind = "boolean" if value.dtype == torch.bool else "complex"
        advice = (
            "convert it with .float() if 0 and 1 are meant" if kind == "boolean" else "assign real values"
        )
        raise UnsupportedTensorError(
            f"{where}: cannot assign a {kind} value ({str(value.dtype).removeprefix('torch.')}) to a "
            f"real constrained tensor; {advice}."
        )
    if not (
        value.is_floating_point() or value.is_complex()
    ):  # integer tensors and arrays: their numbers, in floating point
        value = value.to(dtype or torch.get_default_dtype())
    if dtype is not None or device is not None:
        value = value.to(dtype=dtype or value.dtype, device=device or value.device)
    if shape is not None and value.shape != shape:
        try:
            fits = broadcast and torch_typed.broadcast_shapes(value.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            rule = "which does not broadcast to" if broadcast else "and the checkpoint needs exactly"
            raise ShapeMismatchError(
                f"{where}: the value assigned has shape {format_shape(value.shape)}, {rule} "
                f"{format_shape(shape)}; a constrained tensor never changes shape. Assign a value of "
                f"shape {format_shape(shape)}, or unconstrain it first to change the architecture."
            )
        # A copy, not a stride-0 view: the stored tensor may end up sharing the inverse's result.
        value = value.expand(shape).clone()
    checked: Tensor = value
    return checked


def _complex_kept(fn: Any) -> Any:
    """``fn`` (what ``Module.to``, ``.double()``, ``.cuda()`` apply to each tensor), except that a
    complex tensor stays complex: ``Module.to(torch.float64)`` would cast it to float64 and drop its
    imaginary part. It moves to ``fn``'s device, and where ``fn`` would make it real, to the complex
    dtype of that precision (``complex128`` for ``.to(torch.float64)``)."""

    def convert(tensor: Tensor) -> Tensor:
        if not tensor.is_complex():
            return fn(tensor)  # type: ignore[no-any-return]  # Module._apply functions map tensors to tensors
        # What fn does to an empty complex tensor: .double() and .half() leave it, .to(complex128)
        # converts it, .to(torch.float64) casts it to real (and warns, which the probe silences).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe: Tensor = fn(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
        dtype = probe.dtype
        if dtype in (torch.float32, torch.float64):
            dtype = dtype.to_complex()
        elif not dtype.is_complex:  # half precision (no complex kernels) or an integer cast: kept
            dtype = tensor.dtype
        return tensor.to(device=probe.device, dtype=dtype)

    return convert


def _other_number(value: Any) -> bool:
    """Whether ``value`` is a real number torch cannot convert itself (``Fraction``, ``Decimal``)."""
    from numbers import Number

    return (
        isinstance(value, Number)
        and not isinstance(value, (bool, int, float, complex))
        and not hasattr(value, "__array__")
        and hasattr(value, "__float__")
        and not isinstance(value, Tensor)
    )


def _dense_values(value: Tensor, where: str, device: torch.device | None) -> Tensor:
    """``value`` as an ordinary strided tensor holding its numbers: sparse and quantized tensors are
    converted; a ``meta`` tensor (no values) is refused unless the target is on ``meta`` too."""
    if value.device.type == "meta" and (device is None or device.type != "meta"):
        raise UnsupportedTensorError(
            f"{where}: the value assigned is on the meta device, which holds no values; assign a tensor "
            "with values (for a model built on meta, call to_empty() first, then initialise it)."
        )
    try:
        if value.is_quantized:
            return value.dequantize()
        if value.layout != torch.strided:
            return value.to_dense()
    except (RuntimeError, TypeError, NotImplementedError) as error:
        raise UnsupportedTensorError(
            f"{where}: cannot read the values of the {value.layout} tensor assigned ({error}); assign a "
            "dense tensor."
        ) from None
    return value


def _array_like(value: Any) -> bool:
    from numbers import Real

    return isinstance(value, (Real, list, tuple)) or hasattr(value, "__array__")


def _flatten_events(tensor: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``tensor`` with ``dims`` moved last (in order) and flattened into one: ``(*batch, n)``."""
    moved = tensor.movedim(dims, tuple(range(tensor.dim() - len(dims), tensor.dim())))
    return moved.reshape(*moved.shape[: tensor.dim() - len(dims)], -1)


def _warn_gradient_dropped(target: str | None) -> None:
    warnings.warn(
        f"Assigning a tensor that requires grad to {target or 'a constrained tensor'} stores its value "
        "only: no gradient will flow back to it. With torch.func.functional_call, pass the stored "
        "tensors instead: ps.functional_params(model, {'<name>': value}) builds them.",
        ParamshapeWarning,
        stacklevel=4,
    )


#: Containers whose empty instances Transform.__deepcopy__ makes anew instead of deep-copying.
_EMPTY_KINDS = frozenset({dict, OrderedDict, set, list})
#: Immutable values that ``copy.deepcopy`` gives back unchanged (its ``_deepcopy_atomic`` types
#: that a transform holds, and torch's dtypes, devices and sizes, which it copies to equal values).
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device})

#: (the tensor ``constrain()`` is registering, its stored tensor if already computed), while it
#: registers it: :meth:`Transform.right_inverse` trusts that one tensor (see :func:`registering`).
_PREPARED: list[tuple[Tensor, Tensor | None] | None] = [None]


@contextlib.contextmanager
def registering(tensor: Tensor, stored: Tensor | None) -> Iterator[None]:
    """While ``constrain()`` registers ``tensor`` (whose value its plan checked), the transform's
    ``right_inverse`` of that very tensor skips the membership check it already passed and returns
    ``stored`` when given (the inverse the plan's dry run computed)."""
    _PREPARED[0] = (tensor, stored)
    try:
        yield
    finally:
        _PREPARED[0] = None


def _copy_plain_tensor(value: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy(value, memo)``, with a plain dense tensor that needs no gradient and carries
    no attributes of its own (a transform's bound) cloned directly: the same copy, without the
    Python of ``Tensor.__deepcopy__``."""
    if (
        type(value) is Tensor
        and not value.requires_grad
        and value.layout == torch.strided
        and not value.is_quantized
        and not value.__dict__
        and value.device.type != "meta"
    ):
        found = memo.get(id(value))
        if found is None:
            found = memo[id(value)] = value.clone()
        return found
    return copy.deepcopy(value, memo)


def _plain_deepcopy(module: nn.Module, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy``'s own path for an object whose class defines ``__deepcopy__``."""
    reducer = module.__reduce_ex__(4)
    return copy._reconstruct(module, memo, *reducer)  # type: ignore[attr-defined]  # private, not in typeshed
