"""Safe parsing of spec strings such as ``"box(-1, 1)"`` or ``"simplex(dim=0)"``.

The string is parsed with :mod:`ast` and only literal arguments are accepted: numbers (with a sign),
``inf``, strings, booleans, ``None`` and tuples or lists of those. Nothing is ever evaluated.

The cost is bounded before the parser runs: a spec longer than :data:`MAX_SPEC_LENGTH` characters,
nested deeper than :data:`MAX_SPEC_DEPTH` brackets or with more than two signs in a row is refused
with :class:`~paramshape.SpecError` (Python's own parser would recurse once per sign or bracket and
end in ``RecursionError`` or ``MemoryError``). Bounds that need more belong in a tensor, not a string.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from paramshape.errors import SpecError

__all__ = ["MAX_SPEC_DEPTH", "MAX_SPEC_LENGTH", "ParsedSpec", "parse_spec"]

#: Longest spec string accepted: room for a few dozen per-row bounds; larger ones belong in a tensor.
MAX_SPEC_LENGTH = 4096
#: Deepest bracket nesting accepted: the call's parentheses plus lists for a bound of up to 7 dims.
MAX_SPEC_DEPTH = 8
#: Longest run of signs accepted (``--1`` is still a number; a thousand minus signs is an attack).
_MAX_SIGNS = 2

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
    """Split ``text`` into a name and literal arguments; raise :class:`SpecError` if malformed.

    Example:
        >>> spec = parse_spec("box(-1, high=2)")
        >>> spec.name, spec.args, spec.kwargs
        ('box', (-1,), {'high': 2})
        >>> parse_spec("box(low=2, high=3, low=-1)")
        Traceback (most recent call last):
            ...
        paramshape.errors.SpecError: Malformed constraint spec 'box(low=2, high=3, low=-1)': keyword 'low' is given twice.
    """
    _check_cost(text)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise SpecError(f"Malformed constraint spec {text!r}: expected {_EXAMPLE}.") from None
    if isinstance(tree, ast.Name):
        return ParsedSpec(tree.id, (), {})
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise SpecError(f"Malformed constraint spec {text!r}: expected {_EXAMPLE}.")
    args = tuple(_literal(node, text) for node in tree.args)
    kwargs: dict[str, Any] = {}
    for keyword in tree.keywords:
        if keyword.arg is None:
            raise SpecError(f"Malformed constraint spec {text!r}: '**' is not allowed.")
        if keyword.arg in kwargs:
            # ast.parse accepts a repeated keyword that Python itself rejects; the last one would win.
            raise SpecError(f"Malformed constraint spec {text!r}: keyword {keyword.arg!r} is given twice.")
        kwargs[keyword.arg] = _literal(keyword.value, text)
    return ParsedSpec(tree.func.id, args, kwargs)


def _check_cost(text: object) -> None:
    """Refuse, in one linear scan, what would make the parser's cost unbounded."""
    if not isinstance(text, str):
        raise SpecError(f"A constraint spec string must be a str; got {type(text).__name__}.")
    shown = text if len(text) <= 60 else f"{text[:40]}...{text[-10:]}"
    if len(text) > MAX_SPEC_LENGTH:
        raise SpecError(
            f"Constraint spec {shown!r} is {len(text)} characters long, more than {MAX_SPEC_LENGTH}: "
            "pass large bounds as tensors, e.g. ps.Box(low_tensor, high_tensor)."
        )
    depth = deepest = signs = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
        if char in "+-":
            signs += 1
            if signs > _MAX_SIGNS:
                raise SpecError(
                    f"Malformed constraint spec {shown!r}: more than {_MAX_SIGNS} signs in a row."
                )
        elif not char.isspace():
            signs = 0
    if deepest > MAX_SPEC_DEPTH:
        raise SpecError(
            f"Malformed constraint spec {shown!r}: brackets nested {deepest} deep, more than "
            f"{MAX_SPEC_DEPTH}; pass nested bounds as tensors."
        )


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
