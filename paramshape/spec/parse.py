"""Safe parsing of spec strings such as ``"box(-1, 1)"`` or ``"simplex(dim=0)"``.

The string is parsed with :mod:`ast` and only literal arguments are accepted: numbers (with a sign),
``inf``, strings, booleans, ``None`` and tuples or lists of those. Nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from paramshape.errors import SpecError

__all__ = ["ParsedSpec", "parse_spec"]

_EXAMPLE = "a registered name, optionally with literal arguments, e.g. 'box(-1, 1)' or 'simplex(dim=0)'"
_CONSTANT_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}


class ParsedSpec:
    """A spec string split into a transform name and its literal arguments."""

    __slots__ = ("args", "kwargs", "name")

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs


def parse_spec(text: str) -> ParsedSpec:
    """Split ``text`` into a name and literal arguments; raise :class:`SpecError` if malformed."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise SpecError(f"Malformed constraint spec {text!r}: expected {_EXAMPLE}.") from None
    if isinstance(tree, ast.Name):
        return ParsedSpec(tree.id, (), {})
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise SpecError(f"Malformed constraint spec {text!r}: expected {_EXAMPLE}.")
    args = tuple(_literal(node, text) for node in tree.args)
    kwargs = {}
    for keyword in tree.keywords:
        if keyword.arg is None:
            raise SpecError(f"Malformed constraint spec {text!r}: '**' is not allowed.")
        kwargs[keyword.arg] = _literal(keyword.value, text)
    return ParsedSpec(tree.func.id, args, kwargs)


def _literal(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANT_NAMES:
        return _CONSTANT_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, text)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(element, text) for element in node.elts]
    fragment = ast.get_source_segment(text.strip(), node) or type(node).__name__
    raise SpecError(
        f"Malformed constraint spec {text!r}: argument {fragment!r} is not a literal. Only numbers, "
        "inf, strings, True/False/None and lists of those are allowed; nothing is evaluated."
    )
