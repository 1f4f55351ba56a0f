"""dtype and device moves of constrained models, checked before any module is converted.

``model.half()`` or ``model.to(torch.float16)`` with a bound beyond float16's range is refused by
the transform holding that bound, but ``nn.Module._apply`` converts the tree depth first, so the
modules before it would already be converted. Each module paramshape constrains gets an
``_apply`` (on its ``Parametrized<Cls>`` class) that first finds the module the move was called on
(the outermost ``_apply`` in the call stack) and checks every transform under it against the
conversion, changing nothing if one fails. Modules without constraints that come before the first
constrained module in the tree are converted before this check runs: torch's ``_apply`` offers no
hook before it starts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from paramshape.errors import SpecError, UnsupportedTensorError
from paramshape.transforms.base import Transform
from paramshape.transforms.elementwise.bounds import BoundedTransform

__all__ = ["check_move", "install_move_check"]

_CHECKED = "_paramshape_move_checked"


def install_move_check(owner: nn.Module) -> None:
    """Give ``owner``'s parametrized class the checking ``_apply``. Idempotent."""
    if not parametrize.is_parametrized(owner):
        return
    cls = type(owner)
    if "_apply" in cls.__dict__:
        return
    # torch types type_before_parametrizations as a plain type and leaves Module._apply unannotated.
    base = cast("type[nn.Module]", parametrize.type_before_parametrizations(owner))
    base_apply: Callable[[nn.Module, Any, bool], nn.Module] = base._apply

    def _apply(self: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
        # Once per move: the function is the same object for every module of one .half() call.
        if not getattr(fn, _CHECKED, False):
            root = _outermost_apply(self)
            try:
                check_move(root, fn)
            except (SpecError, UnsupportedTensorError) as error:
                converted = _converted_before(root, self)
                if not converted:
                    raise
                raise type(error)(
                    f"{error} torch converted these modules before the check could run (Module._apply "
                    f"has no hook before it starts): {', '.join(converted)}; move them back (for "
                    "example model.float()) or convert the model in parts."
                ) from None
            with contextlib.suppress(AttributeError, TypeError):
                setattr(fn, _CHECKED, True)
        return base_apply(self, fn, recurse)

    cls._apply = _apply  # type: ignore[method-assign]  # the class is parametrize's, owner's own


def check_move(root: nn.Module, fn: Any) -> None:
    """Raise if ``fn`` would leave any transform under ``root`` with invalid bounds; changes nothing."""
    for module in root.modules():
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
    frame: FrameType | None = sys._getframe(2)
    outer = module
    while frame is not None:
        if frame.f_code.co_name == "_apply":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, nn.Module):
                outer = candidate
        frame = frame.f_back
    return outer
