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
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from paramshape.errors import SpecError
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
    base_apply = parametrize.type_before_parametrizations(owner)._apply

    def _apply(self: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
        # Once per move: the function is the same object for every module of one .half() call.
        if not getattr(fn, _CHECKED, False):
            check_move(_outermost_apply(self), fn)
            with contextlib.suppress(AttributeError, TypeError):
                setattr(fn, _CHECKED, True)
        return base_apply(self, fn, recurse)

    cls._apply = _apply  # type: ignore[method-assign]


def check_move(root: nn.Module, fn: Any) -> None:
    """Raise if ``fn`` would leave any transform under ``root`` with invalid bounds; changes nothing."""
    for module in root.modules():
        if isinstance(module, BoundedTransform):
            try:
                module.check_conversion(fn)
            except SpecError as error:
                where = module._target or repr(module)
                raise SpecError(f"{where}: {error} No constrained module was converted.") from None


def _outermost_apply(module: nn.Module) -> nn.Module:
    frame = sys._getframe(2)
    outer = module
    while frame is not None:
        if frame.f_code.co_name == "_apply":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, nn.Module):
                outer = candidate
        frame = frame.f_back
    return outer
