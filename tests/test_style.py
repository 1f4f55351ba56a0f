"""Style rules of the developers' guide that neither ruff nor mypy states on its own, checked on the
sources with ``ast`` (nothing is imported): every public signature is fully typed, and every
``type: ignore`` names the error codes it silences.

Ruff's ANN rules and mypy's ``disallow_untyped_defs`` say much the same today, but both can be
switched off for a file (a per-file ignore, a mypy override); this test cannot, so a public function
without types fails here even where the linters were told to look away.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "paramshape"

#: ``# type: ignore`` with no ``[code]`` after it silences every error on the line, including the
#: ones a later change introduces there.
_BARE_IGNORE = re.compile(r"#\s*type:\s*ignore(?!\[)")


def _is_public(name: str) -> bool:
    # Dunder methods (__init__, __call__, ...) are part of a public class's interface.
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def untyped_public_functions(source: str, filename: str) -> list[str]:
    """``file:line name (what is missing)`` for each public function or method of a public class
    (at any depth of public classes, not inside functions) without a return annotation or with an
    unannotated parameter (``self`` and ``cls`` excepted)."""
    found: list[str] = []

    def visit(node: ast.AST, public: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, public and not child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not (public and _is_public(child.name)):
                    continue  # functions nested in functions are never public: not visited
                args = child.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                params += [a for a in (args.vararg, args.kwarg) if a is not None]
                missing = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
                if child.returns is None:
                    missing.append("return")
                if missing:
                    found.append(f"{filename}:{child.lineno} {child.name} ({', '.join(missing)})")

    visit(ast.parse(source, filename), True)
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_public_signatures_are_fully_typed():
    untyped = [line for path in _sources() for line in untyped_public_functions(path.read_text(), str(path))]
    assert untyped == []


def test_every_type_ignore_names_its_codes():
    bare = [
        f"{path}:{number}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _BARE_IGNORE.search(line)
    ]
    assert bare == []


def test_the_signature_check_sees_what_is_missing():
    source = (
        "def typed(x: int) -> int: ...\n"
        "def no_return(x: int): ...\n"
        "def no_param(x, *args: int, **kw) -> None: ...\n"
        "def _private(x): ...\n"
        "class Public:\n"
        "    def __init__(self, x) -> None: ...\n"
        "    def method(self) -> None:\n"
        "        def nested(y): ...\n"
        "class _Private:\n"
        "    def method(self, x): ...\n"
    )
    assert untyped_public_functions(source, "m.py") == [
        "m.py:2 no_return (return)",
        "m.py:3 no_param (x, kw)",
        "m.py:6 __init__ (x)",
    ]


def test_the_ignore_check_sees_a_bare_ignore():
    assert _BARE_IGNORE.search("x = f()  # type: ignore")
    assert _BARE_IGNORE.search("x = f()  # type:ignore  # why")
    assert not _BARE_IGNORE.search("x = f()  # type: ignore[attr-defined]  # why")
