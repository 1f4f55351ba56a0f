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

import copy
import warnings
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import InfeasibleValueError, ParamshapeWarning, SpecError
from paramshape.errors.report import tensor_label
from paramshape.lookup.modules import (
    is_parametrized,
    parametrization_chain,
    parametrized_names,
    paramshape_transform,
    type_before_parametrizations,
    type_name,
)
from paramshape.strategies.state import state_of
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import BoundedTransform

__all__ = ["ProjectingInit", "install_init_support", "install_plain_init_support", "project_plain"]

#: The plain strategies whose tensors must lie in the set after an initialisation.
_KEPT_INSIDE = ("project", "riemannian")

_RESETTERS = ("reset_parameters", "_reset_parameters")


def install_init_support(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the ``reset_parameters`` and ``apply`` described above.
    Idempotent; the class is ``owner``'s own (parametrize creates one per module)."""
    if not is_parametrized(owner):
        return
    cls = type(owner)
    base = type_before_parametrizations(owner)
    for method in _RESETTERS:
        original = getattr(base, method, None)
        if callable(original) and method not in cls.__dict__:
            setattr(cls, method, _capturing(original))
    if "apply" not in cls.__dict__:
        cls.apply = _capturing(base.apply, keep_stored=True)  # type: ignore[method-assign]  # the class is owner's own


def _capturing(original: Callable[..., Any], keep_stored: bool = False) -> Callable[..., Any]:
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = run_capturing_writes(self, lambda: original(self, *args, **kwargs), keep_stored=keep_stored)
        project_plain(self, original.__name__)  # its method="project" tensors, if any
        return result

    method.__name__ = original.__name__
    method.__doc__ = original.__doc__
    return method


def install_plain_init_support(owner: nn.Module) -> None:
    """Make ``owner``'s ``reset_parameters()`` and ``apply(fn)`` leave its ``method="project"`` (and
    ``"riemannian"``) tensors in their sets: torch's initialisers write into the plain parameter, and
    without an optimizer step nothing would project it (inference would read values outside the
    set). Values the call put outside are projected, with a :class:`~paramshape.ParamshapeWarning`
    counting them. Set on the instance (the module keeps its class); idempotent; a module whose
    constraints were removed since runs the method plainly."""
    for method in (*_RESETTERS, "apply"):
        if callable(getattr(type(owner), method, None)) and method not in owner.__dict__:
            owner.__dict__[method] = ProjectingInit(owner, method)


class ProjectingInit:
    """``owner.<method>`` followed by :func:`project_plain`, as an instance attribute. Holds the
    module weakly (a strong reference would make a cycle that only the garbage collector frees,
    keeping the projection step hook alive); deep copies and pickles rebuild it on the copy."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        self._owner = weakref.ref(owner)
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner()
        assert owner is not None  # called as an attribute of the module, which is alive
        result = getattr(type(owner), self._method)(owner, *args, **kwargs)
        project_plain(owner, self._method)
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProjectingInit, (self._owner(), self._method))

    def __deepcopy__(self, memo: dict[int, Any]) -> ProjectingInit:
        owner = copy.deepcopy(self._owner(), memo)
        assert owner is not None  # copied as an attribute of the module, which is alive
        return ProjectingInit(owner, self._method)


def project_plain(owner: nn.Module, method: str) -> None:
    """Project ``owner``'s ``method="project"``/``"riemannian"`` tensors that ``method`` (a call
    that just ran) left outside their sets, with a warning counting them."""
    state = state_of(owner)
    if state is None:
        return
    state.sync(owner)  # to_empty() and assign=True loads replace the Parameter objects
    for name, entry in list(state.plain.items()):
        if entry.method not in _KEPT_INSIDE or entry.tensor.device.type == "meta":
            continue
        transform = entry.transform_for(entry.tensor)
        with torch.no_grad():
            inside = transform.contains(entry.tensor)
            moved = int((~inside).sum())
            if moved:
                entry.tensor.copy_(transform.project(entry.tensor))
        if moved:
            warnings.warn(
                f"'{name}' of {type_name(owner)}: {method}() wrote {moved} of {inside.numel()} "
                f"{transform.element_noun} outside {transform!r} (method='{entry.method}'); they were "
                "projected onto it.",
                ParamshapeWarning,
                stacklevel=4,
            )


def run_capturing_writes(module: nn.Module, call: Callable[[], Any], *, keep_stored: bool = False) -> Any:
    """Run ``call`` so that in-place writes into ``module``'s constrained tensors take effect.

    ``keep_stored``: ``call`` may reach the stored tensors themselves (``apply`` recurses into
    ``parametrizations``), so keep a copy to put back exactly if it writes NaN or infinity there."""
    if torch.is_inference_mode_enabled():
        # Values read under inference mode are inference tensors, which have no version counter
        # to tell a write; an initialisation changes the model anyway, so run it outside.
        with torch.inference_mode(False):
            return run_capturing_writes(module, call, keep_stored=keep_stored)
    names = [name for name in parametrized_names(module) if paramshape_transform(module, name) is not None]
    # The settings: fixed bounds (buffers) and learnable ones (the transform's parameters).
    bounds = {
        name: [
            (b, b.detach().clone(), b._version)
            for b in [
                *parametrization_chain(module, name)[0].buffers(),
                *parametrization_chain(module, name)[0].parameters(),
            ]
        ]
        for name in names
    }
    stored = {
        name: [(original, original.detach().clone(), original._version)]
        if keep_stored
        else [(original, None, original._version)]
        for name in names
        for original in [parametrization_chain(module, name).original]
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
        original, kept, version = stored[name][0]
        if name not in written and original._version != version and not bool(torch.isfinite(original).all()):
            # A blanket init_fn that reached the stored tensor (model.apply recurses into
            # 'parametrizations') with NaN or infinity: every read would be NaN. Put it back.
            with torch.no_grad():
                if kept is not None:
                    original.copy_(kept)
                else:
                    _store(module, name, values[name].detach())
            for tensor, before, _ in bounds[name]:
                with torch.no_grad():
                    tensor.copy_(before)
            label = tensor_label(f"'{name}' of {type_name(module)}", original)
            raise InfeasibleValueError(
                f"{label}: the call wrote NaN or "
                f"infinity into its stored tensor 'parametrizations.{name}.original', which would make "
                f"every read of '{name}' NaN; its value was put back. Skip 'parametrizations' in the "
                "init function, or write into the constrained tensor itself."
            )
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
            with torch.no_grad():
                if bounded.learnable:  # learnable bounds: computed from the parameters, finite
                    bounded._layout = bounded._check_learned(bounded._learned_bounds(bounded._store()))
                else:
                    bounded._layout = bounded._analyse_bounds(bounded._bounds())
        except SpecError as error:
            problem = str(error)
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
