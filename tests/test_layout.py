"""The package's architecture, checked: one-way dependencies between its subpackages, no import cycle,
a small top level, and a docstring at the door of every subpackage.

Imports are read from the source with ``ast`` (not by importing), so an import inside a function, or
under ``if TYPE_CHECKING:``, counts like one at the top: a cycle hidden in a function is still a
cycle for the reader, and the next change that hoists it would break the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "paramshape"

#: The layers, bottom first. A module may import from its own subpackage and from any lower layer,
#: never from a higher one or from another subpackage of the same layer. CONTRIBUTING.md's layout
#: section describes the same order.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "_version"}),
    frozenset({"numerics"}),
    frozenset({"fusion"}),
    frozenset({"transforms"}),
    frozenset({"interop"}),
    frozenset({"spec"}),
    frozenset({"lookup"}),
    frozenset({"strategies"}),
    frozenset({"attach"}),
    frozenset({"outputs", "training"}),
    frozenset({"testing", "demo"}),
    frozenset({"__init__", "__main__"}),
)
TOP_LEVEL_LIMIT = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The paramshape modules that ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from package import submodule` imports the submodule itself.
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t == "paramshape" or t.startswith("paramshape."))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, layer in enumerate(LAYERS):
        if top in layer:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add its subpackage to LAYERS")


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each one holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_has_no_import_cycle():
    # The facade imports everything, and importing a submodule runs its parents' __init__ first;
    # those implicit edges are not dependencies of the submodule, so the facade is left out.
    graph = {
        name: targets - {"paramshape"} for name, targets in import_graph().items() if name != "paramshape"
    }
    assert strongly_connected(graph) == []


def test_dependencies_point_down_the_layers():
    wrong = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in targets
        if target != "paramshape"
        and subpackage(source) != subpackage(target)
        and layer_of(source) <= layer_of(target)
    ]
    assert wrong == []


def test_the_cycle_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("paramshape.transforms.base") < layer_of("paramshape.attach.constrain")
    assert layer_of("paramshape.errors") < layer_of("paramshape.numerics.precision")


def test_imports_inside_functions_are_read(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from paramshape.attach import constrain\n")
    modules = {"paramshape.attach.constrain": source}
    assert imports_of("paramshape.x", source, modules) == {"paramshape.attach.constrain"}


def test_the_top_level_stays_small():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_LIMIT, top


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: module_name(p))
def test_every_subpackage_says_what_it_holds_and_may_import(init):
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring, f"{init} has no docstring"
    if init.parent != PACKAGE and init.parent.parent == PACKAGE:
        assert "May import:" in docstring, f"{init}'s docstring does not say what the subpackage may import"
