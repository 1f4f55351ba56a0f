"""Making torch's own initialisation reach constrained tensors.

A constrained ``weight`` is recomputed from its stored tensor at every read, so an in-place write
into it (``nn.init.kaiming_uniform_(self.weight)`` inside ``Linear.reset_parameters``, or an
``init_fn`` given to ``model.apply``) lands in a temporary and is lost, while the layer's other
tensors are re-initialised: a silent half-initialised model. paramshape gives each module it
constrains (its ``Parametrized<Cls>`` class) a ``reset_parameters`` and an ``apply`` that run the
original under :func:`torch.nn.utils.parametrize.cached`, where every read of a constrained tensor
returns one and the same tensor, and then store what was written into it through the transform's
inverse, with the tensor's ``init`` policy:

* ``"raw"``: the written values become the unconstrained ones (as ``constrain(init="raw")``);
* otherwise the values go through the inverse; values outside the set are first moved inside it,
  as ``init="project"`` does, with a :class:`~paramshape.ParamshapeWarning` that counts them
  (a torch initialiser knows nothing of the set; refusing would leave the module half reset).

Bounds (the transforms' buffers) that the call changed into something invalid (NaN, ``low >=
high``, a finite bound turned infinite) are put back and reported by a :class:`SpecError` instead
of making every later read NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import ParamshapeWarning, SpecError
from paramshape.lookup.modules import (
    parametrization_chain,
    parametrized_names,
    paramshape_transform,
    type_name,
)
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import BoundedTransform

__all__ = ["install_init_support"]

_RESETTERS = ("reset_parameters", "_reset_parameters")


def install_init_support(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the ``reset_parameters`` and ``apply`` described above.
    Idempotent; the class is ``owner``'s own (parametrize creates one per module)."""
    if not parametrize.is_parametrized(owner):
        return
    cls = type(owner)
    # torch types type_before_parametrizations as a plain type.
    base = cast("type[nn.Module]", parametrize.type_before_parametrizations(owner))
    for method in _RESETTERS:
        original = getattr(base, method, None)
        if callable(original) and method not in cls.__dict__:
            setattr(cls, method, _capturing(original))
    if "apply" not in cls.__dict__:
        cls.apply = _capturing(base.apply)  # type: ignore[method-assign]


def _capturing(original: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return run_capturing_writes(self, lambda: original(self, *args, **kwargs))

    method.__name__ = original.__name__
    method.__doc__ = original.__doc__
    return method


def run_capturing_writes(module: nn.Module, call: Callable[[], Any]) -> Any:
    """Run ``call`` so that in-place writes into ``module``'s constrained tensors take effect."""
    names = [name for name in parametrized_names(module) if paramshape_transform(module, name) is not None]
    bounds = {
        name: [(b, b.detach().clone(), b._version) for b in parametrization_chain(module, name)[0].buffers()]
        for name in names
    }
    with parametrize.cached():
        with torch.no_grad():
            values = {name: getattr(module, name) for name in names}
        versions = {name: value._version for name, value in values.items()}
        result = call()
        written = {name: values[name] for name in names if values[name]._version != versions[name]}
        for name in names:
            parametrize._cache.pop((id(module), name), None)
    for name in names:
        _check_bounds(module, name, bounds[name])
    for name, value in written.items():
        _store(module, name, value.detach())
    return result


def _check_bounds(module: nn.Module, name: str, saved: list[tuple[Tensor, Tensor, int]]) -> None:
    transform = parametrization_chain(module, name)[0]
    if all(buffer._version == version for buffer, _, version in saved):
        return
    problem = None
    for buffer, before, _ in saved:
        if buffer.is_floating_point() and not torch.equal(torch.isfinite(buffer), torch.isfinite(before)):
            problem = "a bound became NaN or infinite"
    if problem is None and hasattr(transform, "_analyse_bounds"):
        bounded = cast(BoundedTransform, transform)  # the hook is BoundedTransform's
        try:
            layout = bounded._analyse_bounds(bounded._bounds())
        except SpecError as error:
            problem = str(error)
        else:
            bounded._layout = layout
    if problem is None:
        return
    with torch.no_grad():
        for buffer, before, _ in saved:
            buffer.copy_(before)
    raise SpecError(
        f"'{name}' of {type_name(module)}: the call wrote into the settings of its constraint "
        f"{transform!r} ({problem}), which would make every read of '{name}' wrong. The settings were "
        "put back. Skip the transforms' buffers in the init function (they live under "
        f"'parametrizations.{name}.0'), or change the constraint with ps.constrain."
    )


def _store(module: nn.Module, name: str, value: Tensor) -> None:
    chain = parametrization_chain(module, name)
    transform = cast(Transform, chain[0])  # run_capturing_writes kept the names paramshape constrains
    policy = getattr(transform, "_init_policy", "keep")
    with torch.no_grad():
        if policy == "raw" and transform.supports_raw_init and chain.original.shape == value.shape:
            chain.original.copy_(torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0))
            return
        inside = transform.contains(value)
        moved = int((~inside).sum())
        if moved:
            value = torch.where(inside, value, transform.to_interior(value))
            warnings.warn(
                f"'{name}' of {type_name(module)}: the initialisation wrote {moved} of {inside.numel()} "
                f"{transform.element_noun} outside {transform!r}; they were moved inside it, as "
                "init='project' does.",
                ParamshapeWarning,
                stacklevel=4,
            )
        setattr(module, name, value)
