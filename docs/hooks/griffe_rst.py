"""A griffe extension that makes paramshape's docstrings render in mkdocstrings.

The docstrings are Google style with a few Sphinx constructs, chosen because they read well in
``help()`` and in an editor: ``.. math::`` blocks, ``:math:`` roles and cross-reference roles
(``:class:``, ``:func:``, ``:meth:``, ...). Markdown knows none of them, so before mkdocstrings
parses a docstring this extension rewrites

- a ``.. math::`` block into ``$$ ... $$`` blocks (one per equation), rendered by arithmatex and
  MathJax;
- ``:math:`x``` into ``$x$``;
- an ``Example:`` header into ``Examples:``, the section griffe renders as doctest code;
- a cross-reference role into an *optional* autorefs link: a link where the target is documented on
  the site, plain code where it is not (``torch`` names, private helpers), never a warning.

The source files are not changed. mkdocs.yml loads this file through the python handler's
``extensions`` option.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")
_EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_MATH_ROLE = re.compile(r":math:`(?P<body>[^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?P<kind>class|func|meth|mod|data|attr|exc|obj):`(?P<target>[^`]+)`")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _convert_math_blocks(text: str) -> str:
    """Replace every ``.. math::`` directive and its indented body with ``$$`` blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        depth = min((_indent_of(line) for line in body if line.strip()), default=0)
        # A blank line separates equations in reST; each becomes a display block of its own.
        equations: list[list[str]] = [[]]
        for line in body:
            if line.strip():
                equations[-1].append(line[depth:])
            elif equations[-1]:
                equations.append([])
        for equation in (eq for eq in equations if eq):
            out.append(f"{indent}$$")
            out.extend(f"{indent}{line}" for line in equation)
            out.append(f"{indent}$$")
            out.append("")
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class ParamshapeDocstrings(griffe.Extension):
    """Rewrite reST math and cross-reference roles into Markdown that mkdocstrings renders."""

    def __init__(self) -> None:
        super().__init__()
        self._public: set[str] = set()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "paramshape":
            return
        exported = pkg.exports or ()
        self._public = {str(name) for name in exported}
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._convert(obj.docstring.value, obj)

    def _convert(self, text: str, obj: griffe.Object) -> str:
        # griffe reads "Examples:" as doctest code; "Example:" would be a plain-text admonition.
        text = _EXAMPLE_HEADER.sub(r"\g<indent>Examples:", text)
        text = _convert_math_blocks(text)
        text = _MATH_ROLE.sub(lambda m: f"${m['body'].strip()}$", text)
        return _XREF_ROLE.sub(lambda m: self._reference(m["kind"], m["target"], obj), text)

    def _reference(self, kind: str, target: str, obj: griffe.Object) -> str:
        target = target.strip()
        explicit = re.fullmatch(r"(?P<title>.*?)\s*<(?P<target>[^>]+)>", target)
        if explicit:  # :meth:`title <target>`
            title, target = explicit["title"], explicit["target"].lstrip("~")
        else:
            short = target.startswith("~")
            target = target.lstrip("~")
            title = target.rsplit(".", 1)[-1] if short else target
            if kind in ("func", "meth"):
                title += "()"
        identifier = self._identifier(kind, target, obj)
        # Backticks, not <code>: Markdown would read __call__ inside raw HTML as bold.
        code = f"`{title}`"
        if identifier is None:
            return code
        return f'<autoref optional identifier="{identifier}">{code}</autoref>'

    def _identifier(self, kind: str, target: str, obj: griffe.Object) -> str | None:
        """The documented identifier ``target`` most likely means, or None for outside names."""
        if target.startswith(("torch.", "fnmatch.", "ast")) or target in {"ast", "NotImplementedError"}:
            return None
        if target.startswith("paramshape."):
            head = target.split(".")[1]
            if head in self._public or head == "testing":
                return target
            return None
        head = target.split(".")[0]
        if head in self._public:
            return f"paramshape.{target}"
        # A bare method or attribute name inside a class: a member of that class (or of the class
        # that holds the method being documented).
        if kind in ("meth", "attr") and "." not in target:
            owner = obj if obj.is_class else obj.parent
            if isinstance(owner, griffe.Class) and owner.name in self._public:
                return f"paramshape.{owner.name}.{target}"
        if obj.module.path == "paramshape.testing" or obj.path.startswith("paramshape.testing"):
            return f"paramshape.testing.{target}"
        return None


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found: list[griffe.Object] = [obj]
    for member in obj.members.values():
        if member.is_alias:
            continue
        found.extend(_walk(member))  # type: ignore[arg-type]
    return found
