"""dtype and device moves of constrained models, checked before any module is converted.

``model.half()`` or ``model.to(torch.float16)`` with a bound beyond float16's range is refused by
the transform holding that bound, but ``nn.Module._apply`` converts the tree depth first, so the
modules before it would already be converted. Each module paramshape constrains gets an
``_apply`` (on its ``Parametrized<Cls>`` class) that first finds the module the move was called on
(the outermost ``_apply`` in the call stack) and checks every transform under it against the
conversion, changing nothing if one fails. The module :func:`~paramshape.constrain` was called on,
and every module a constrained one is later registered under, gets the same check as an instance
``_apply`` (:func:`install_root_move_check`), which runs before any child converts. Only a module
constrained on its own and moved through a parent that existed before it was constrained still has
plain modules converted before the check (torch's ``_apply`` offers no hook before it starts, and
its module-registration hooks are not retroactive); the error lists them.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import SpecError, UnsupportedTensorError
from paramshape.lookup.modules import is_parametrized, type_before_parametrizations
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import BoundedTransform

__all__ = ["check_move", "install_move_check", "install_root_move_check"]

_CHECKED = "_paramshape_move_checked"


def install_move_check(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the checking ``_apply``. Idempotent."""
    if not is_parametrized(owner):
        return
    cls = type(owner)
    if "_apply" in cls.__dict__:
        return
    # torch leaves Module._apply unannotated.
    base = type_before_parametrizations(owner)
    base_apply: Callable[[nn.Module, Any, bool], nn.Module] = base._apply

    def _apply(self: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
        _check_once(_outermost_apply(self), self, fn)
        return base_apply(self, fn, recurse)

    cls._apply = _apply  # type: ignore[method-assign]  # the class is parametrize's, owner's own


class _RootApply:
    """``_apply`` of one module (an instance attribute, so its class is unchanged) that checks every
    transform under the outermost module being moved before anything converts: torch's ``_apply``
    converts children first, so a check at the first constrained child would come after plain
    modules before it were converted. Holds its module weakly (no reference cycle); pickles and
    deep-copies with it, as torch's own hook wrappers do."""

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)

    def __call__(self, fn: Any, recurse: bool = True) -> nn.Module:
        module = self._module()
        assert module is not None  # called through the module, which is alive
        _check_once(_outermost_apply(module), module, fn)
        base_apply: Any = type(module)._apply  # the class's own (a Parametrized<Cls>'s checks too)
        result: nn.Module = base_apply(module, fn, recurse)
        return result

    def __getstate__(self) -> dict[str, Any]:
        return {"module": self._module()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._module = weakref.ref(state["module"])


def install_root_move_check(root: nn.Module) -> None:
    """Check moves of ``root`` (a module :func:`~paramshape.constrain` was called on, or a parent
    such a module was registered under) before any of its children converts. Idempotent."""
    if not isinstance(root.__dict__.get("_apply"), _RootApply):
        root.__dict__["_apply"] = _RootApply(root)


def _check_once(root: nn.Module, current: nn.Module, fn: Any) -> None:
    """:func:`check_move` of ``root`` once per move (the function is the same object for every
    module of one ``.half()`` call); the error names what torch converted before ``current``."""
    if getattr(fn, _CHECKED, False):
        return
    try:
        check_move(root, fn)
    except (SpecError, UnsupportedTensorError) as error:
        converted = _converted_before(root, current)
        if not converted:
            raise
        raise type(error)(
            f"{error} torch converted these modules before the check could run (Module._apply "
            f"has no hook before it starts): {', '.join(converted)}; move them back (for "
            "example model.float()) or convert the model in parts."
        ) from None
    with contextlib.suppress(AttributeError, TypeError):
        setattr(fn, _CHECKED, True)


def check_move(root: nn.Module, fn: Any) -> None:
    """Raise if ``fn`` would leave any transform under ``root`` with invalid bounds; changes nothing."""
    for module in root.modules():
        if isinstance(module, parametrize.ParametrizationList):
            _check_stored(module, fn)
        like = getattr(module, "_value_like", None) if isinstance(module, Transform) else None
        if like is not None and like.device.type != "meta":
            converted = fn(like)
            if isinstance(converted, Tensor) and like.is_complex() and not converted.is_complex():
                # torch's Module.to(float64) casts a complex parameter to real, dropping its
                # imaginary part, while the transform keeps its complex buffers (half a move).
                raise UnsupportedTensorError(
                    f"{module._target or repr(module)}: the move would make the complex constrained "
                    f"tensor {converted.dtype}, dropping its imaginary part. No constrained module was "
                    "converted. Move complex models with .to(torch.complex128) (or complex64)."
                )
            if isinstance(converted, Tensor) and (
                not (converted.is_floating_point() or converted.is_complex())
                or (converted.is_complex() and not module.supports_complex)
                or (not converted.is_complex() and module.complex_only)
            ):
                where = module._target or repr(module)
                kind = "complex" if module.complex_only else "real floating point"
                raise UnsupportedTensorError(
                    f"{where}: the move would make the constrained tensor {converted.dtype}; {module!r} "
                    f"constrains {kind} tensors only. No constrained module was converted. "
                    "Call ps.unconstrain first, or move to a dtype the set takes."
                )
        if isinstance(module, BoundedTransform):
            try:
                module.check_conversion(fn)
            except SpecError as error:
                where = module._target or repr(module)
                raise SpecError(f"{where}: {error} No constrained module was converted.") from None


def _check_stored(chain: parametrize.ParametrizationList, fn: Any) -> None:
    """Let a transform whose map depends on the stored tensor's dtype (PositiveDeterminant's cap)
    refuse a move that would change its value, before anything converts."""
    transform = chain[0] if len(chain) else None
    check = getattr(transform, "_check_stored_move", None)
    original = chain._parameters.get("original")
    if check is None or original is None:
        return
    converted = fn(torch.empty(0, dtype=original.dtype, device=original.device))
    if isinstance(converted, Tensor):
        try:
            check(original, converted.dtype)
        except SpecError as error:
            raise SpecError(f"{error} No constrained module was converted.") from None


def _converted_before(root: nn.Module, current: nn.Module) -> list[str]:
    """The modules with tensors of their own that ``root``'s ``_apply`` converted before reaching
    ``current``: torch converts children first, so every module before ``current`` in pre-order,
    except ``current``'s ancestors (which convert their own tensors after their children)."""
    ancestors = {id(root)}
    for name, module in root.named_modules():
        if module is current:
            parts = name.split(".") if name else []
            node = root
            for part in parts[:-1]:
                node = node._modules[part]  # type: ignore[assignment]  # a prefix of a named module: present
                ancestors.add(id(node))
            break
    else:
        return []
    converted: list[str] = []
    for name, module in root.named_modules():
        if module is current:
            break
        if id(module) in ancestors:
            continue
        if any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            converted.append(f"'{name}' ({type(module).__name__})")
    return converted


def _outermost_apply(module: nn.Module) -> nn.Module:
    """The module the move was called on: the outermost ``_apply`` frame's ``self`` (``module``
    itself when none is above it)."""
    frame: FrameType | None = sys._getframe(2)
    outer = module
    while frame is not None:
        if frame.f_code.co_name == "_apply":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, nn.Module):
                outer = candidate
        frame = frame.f_back
    return outer
