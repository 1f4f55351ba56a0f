"""Several transforms applied one after the other: :class:`Compose`."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from paramshape.errors import SpecError
from paramshape.spec.resolve import Spec, resolve
from paramshape.transforms.base import Transform
from paramshape.transforms.registry import register

__all__ = ["Compose"]


@register("compose")
class Compose(Transform):
    r"""The composition of transforms: ``Compose(a, b)`` applies ``a``, then ``b``.

    .. math::

        f = f_n \circ \dots \circ f_1, \qquad f^{-1} = f_1^{-1} \circ \dots \circ f_n^{-1}, \qquad
        \log\lvert\det J_f(x)\rvert = \sum_{i} \log\lvert\det J_{f_i}(x_{i-1})\rvert

    with :math:`x_0 = x` and :math:`x_i = f_i(x_{i-1})`. This is how to constrain one tensor with
    several transforms: ``ps.constrain(m, "w", ps.Compose(ps.Box(-1, 1), ps.Affine(0.0, 3.0)))``.
    (A plain list of specs is refused rather than guessed at: it could as well mean an
    intersection of sets, which a composition is not.)

    * Domain: the first transform's domain.
    * Codomain: the image of the chain, a subset of the last transform's codomain (which
      :attr:`codomain` returns). Membership (:meth:`contains`, :meth:`validate`) is checked through
      the chain: a value belongs if it lies in the last transform's set, its inverse in the set of
      the one before, and so on; :meth:`to_interior` works the same way back.

    Event dimensions are the union of the parts' (an elementwise transform after a :class:`Simplex`
    acts on whole slices). The log-det-Jacobian of an elementwise part is summed over the free
    coordinates of the slice, those of the event transform in the chain
    (:meth:`~paramshape.Transform.codomain_coordinates` of the last one before it, or
    :meth:`~paramshape.Transform.domain_coordinates` of the first one after it), so it stays
    correct when the stored tensor has another shape (``Simplex(method="ilr")``). A composition is
    bijective when every part is.

    Args:
        *transforms: the transforms, in the order they apply; each is any spec
            (:func:`paramshape.resolve`) and is copied.

    Raises:
        SpecError: no transform given, or one of them is not a valid spec.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> chain = ps.Compose(ps.Box(-1.0, 1.0), ps.Affine(0.0, 3.0))  # values in (-3, 3)
        >>> chain
        Compose(Box(low=-1.0, high=1.0), Affine(loc=0.0, scale=3.0))
        >>> chain(torch.tensor([-100.0, 0.0, 100.0]))
        tensor([-3.,  0.,  3.])
        >>> bool(chain.contains(torch.tensor(3.5)))
        False
        >>> ps.resolve("compose('box(-1, 1)', 'affine(0, 3)')")
        Compose(Box(low=-1.0, high=1.0), Affine(loc=0.0, scale=3.0))
    """

    def __init__(self, *transforms: Spec) -> None:
        super().__init__()
        if not transforms:
            raise SpecError(
                "Compose needs at least one transform, e.g. Compose(ps.Box(-1, 1), ps.Affine(0, 3))."
            )
        for spec in transforms:
            if isinstance(spec, (list, tuple)):
                raise SpecError(
                    f"Compose takes transforms as separate arguments, not a {type(spec).__name__}: "
                    "write Compose(a, b), not Compose([a, b])."
                )
        self.parts = nn.ModuleList(copy.deepcopy(resolve(spec)) for spec in transforms)
        self.bijective = all(part.bijective for part in self.parts)
        self.event_dim = max(part.event_dim for part in self.parts)  # type: ignore[misc]
        self.element_noun = next(  # type: ignore[misc]
            (part.element_noun for part in self.parts if part.event_dim), "values"
        )

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(part) for part in self.parts)})"

    # ------------------------------------------------------------------------------- the map
    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        for part in reversed(self.parts):
            y = part.inverse(y)
        return y

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A random value of the chain: the first part's own :meth:`sample`, pushed through the other
        parts' maps (a standard normal draw through the whole chain would reach the first part's
        bounds when its map has a steep unit slope, as a narrow :class:`Box` has)."""
        inner = torch.Size(shape)
        for part in reversed(self.parts[1:]):
            inner = part.inverse_shape(inner)
        value = self.parts[0].sample(inner, dtype=dtype, device=device, generator=generator)
        with torch.no_grad():
            for part in self.parts[1:]:
                value = part(value)
        return value

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """The sum of the parts' log-det-Jacobians at the intermediate values (recomputed from
        ``x``), each reduced to ``x``'s shape without the composition's event dimensions.

        Raises:
            NotImplementedError: a part is not bijective.
        """
        if not self.bijective:
            names = ", ".join(repr(part) for part in self.parts if not part.bijective)
            raise NotImplementedError(
                f"{self!r} is not bijective because {names} is not, so it has no log-det-Jacobian."
            )
        union = self.event_dims(x.dim())
        terms = []
        value = x
        for index, part in enumerate(self.parts):
            image = part(value)
            terms.append(
                self._reduce(index, part, part.log_abs_det_jacobian(value, image), value.dim(), union)
            )
            value = image
        return torch.stack(torch.broadcast_tensors(*terms)).sum(0)

    def _reduce(self, index: int, part: Transform, term: Tensor, ndim: int, union: tuple[int, ...]) -> Tensor:
        """Bring one part's log-det-Jacobian to the batch shape of the whole composition."""
        own = part.event_dims(ndim)
        if own == union:
            return term
        if not own:
            structural = self._structural(index, ndim, union)
            if structural is not None:
                reference, before = structural
                if before:
                    return reference.codomain_coordinates(term).sum(-1)
                return reference.domain_coordinates(term).sum(-1)
        # Partial overlap of event dimensions: put the part's own back as size 1 and sum the rest.
        for dim in sorted(own):
            term = term.unsqueeze(dim)
        return term.sum(dim=union, keepdim=True).squeeze(union)

    def _structural(self, index: int, ndim: int, union: tuple[int, ...]) -> tuple[Transform, bool] | None:
        """The event transform whose coordinates an elementwise part at ``index`` is summed over:
        the last one before it (``True``), or else the first one after it (``False``)."""
        for part in reversed(self.parts[:index]):
            if part.event_dims(ndim) == union:
                return part, True
        for part in self.parts[index + 1 :]:
            if part.event_dims(ndim) == union:
                return part, False
        return None

    # ---------------------------------------------------------------------------- the shapes
    def event_dims(self, ndim: int) -> tuple[int, ...]:
        return tuple(sorted({dim for part in self.parts for dim in part.event_dims(ndim)}))

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        for part in self.parts:
            shape = part.forward_shape(shape)
        return torch.Size(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        for part in reversed(self.parts):
            shape = part.inverse_shape(shape)
        return torch.Size(shape)

    def check_shape(self, shape: torch.Size) -> None:
        for part in reversed(self.parts):
            part.check_shape(shape)
            shape = part.inverse_shape(shape)

    def domain_coordinates(self, x: Tensor) -> Tensor:
        union = self.event_dims(x.dim())
        first = next((part for part in self.parts if part.event_dims(x.dim()) == union), None)
        return super().domain_coordinates(x) if first is None else first.domain_coordinates(x)

    def codomain_coordinates(self, y: Tensor) -> Tensor:
        union = self.event_dims(y.dim())
        last = next((part for part in reversed(self.parts) if part.event_dims(y.dim()) == union), None)
        return super().codomain_coordinates(y) if last is None else last.codomain_coordinates(y)

    # ------------------------------------------------------------------------------- the set
    @property
    def codomain(self) -> constraints.Constraint:
        """The last transform's codomain, a superset of the composition's image, made to cover the
        composition's :attr:`event_dim` (torch's rule: a constraint's event_dim is the transform's)."""
        return _widen(self.parts[-1].codomain, self.event_dim)

    @property
    def domain(self) -> constraints.Constraint:
        """The first transform's domain, made to cover the composition's :attr:`event_dim`: an
        elementwise first part followed by a matrix transform takes whole matrices."""
        return _widen(self.parts[0].domain, self.event_dim)

    def _stages(self, y: Tensor) -> list[tuple[Transform, Tensor]]:
        """Each part with the value it must contain, from the last part back to the first."""
        stages = []
        for part in reversed(self.parts):
            stages.append((part, y))
            # A check has no side effect: a part whose inverse sets state (Orthogonal's base) is
            # inverted through a copy, so contains() cannot change the value it checks.
            inverter = part if part.supports_raw_init else copy.deepcopy(part)
            with torch.no_grad():
                y = inverter.inverse(y)
        return stages

    def _stage_excess(self, part: Transform, value: Tensor, union: tuple[int, ...]) -> Tensor:
        excess = part._finite_excess(value)
        excess = excess.broadcast_to(torch.broadcast_shapes(excess.shape, value.shape))
        return excess.amax(dim=union, keepdim=True) if union else excess

    def _excess(self, y: Tensor) -> Tensor:
        union = self.event_dims(y.dim())
        total = torch.zeros((), dtype=torch.float64, device=y.device)
        for part, value in self._stages(y):
            # An entry already outside a later set may invert to NaN; it counts as outside once.
            total = total + torch.nan_to_num(self._stage_excess(part, value, union), nan=torch.inf)
        return total

    def _describe(self, y: Tensor, index: tuple[int, ...]) -> str:
        union = self.event_dims(y.dim())
        for step, (part, value) in enumerate(self._stages(y)):
            excess = part._finite_excess(value)
            excess = excess.broadcast_to(torch.broadcast_shapes(excess.shape, value.shape))
            where = tuple(slice(None) if dim in union else i for dim, i in enumerate(index))
            window = excess[where]
            if not bool((window != 0).any()):
                continue
            inner = torch.unravel_index(torch.argmax(window.reshape(-1)), window.shape)
            spots = iter(int(i) for i in inner)
            full = tuple(next(spots) if dim in union else i for dim, i in enumerate(index))
            own = part.event_dims(value.dim())
            full = tuple(0 if dim in own else i for dim, i in enumerate(full))
            detail = part._describe_worst(value, full)
            if step == 0:
                return detail
            return f"{detail} (after undoing the later transforms, in the set of {part!r})"
        return f"the value at {list(index)} lies outside the image of the composition"

    def to_interior(self, y: Tensor) -> Tensor:
        from paramshape.interop.distributions import toward_centre

        # A margin kept inside an inner set can round away after the later maps (Box(0, 1) then
        # Affine(1, 2) in bfloat16 lands back on 1.0), so the result is also kept off the bounds.
        return toward_centre(self, _to_interior(list(self.parts), y))


def _widen(constraint: constraints.Constraint, event_dim: int) -> constraints.Constraint:
    """``constraint`` with its ``event_dim`` raised to ``event_dim`` (as torch's ComposeTransform does)."""
    extra = event_dim - constraint.event_dim
    return constraints.independent(constraint, extra) if extra > 0 else constraint


def _to_interior(parts: list[Transform], y: Tensor) -> Tensor:
    """Move ``y`` inside the image of ``parts``: inside the last one's set, then its inverse inside
    the image of the others, mapped forward again."""
    last = parts[-1]
    inside = last.to_interior(y)
    if len(parts) == 1:
        return inside
    with torch.no_grad():
        inner = _to_interior(parts[:-1], last.inverse(inside))
        return last(inner)
