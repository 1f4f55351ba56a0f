"""Docs travel with code: the README's table, the commands, docstrings, and the notebooks."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import paramshape as ps
from paramshape.registry import registered_class

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def readme_table() -> dict[str, str]:
    """``{name: class}`` from the rows of the table under '## Registered transforms'."""
    section = README.split("## Registered transforms", 1)[1]
    lines = section.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| name"))
    rows = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    return rows


def test_readme_table_lists_exactly_the_registered_transforms():
    table = readme_table()
    assert sorted(table) == list(ps.available())
    for name, class_name in table.items():
        assert registered_class(name).__name__ == class_name, name


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```[a-z]*\n(.*?)```", README, re.DOTALL).group(1)
    assert "make demo" in first_block
    assert "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", sorted(set(ps.__all__) - {"__version__", "Spec", "InitPolicy"}))
def test_every_public_name_is_documented(name):
    obj = getattr(ps, name)
    assert inspect.getdoc(obj), f"ps.{name} has no docstring"


@pytest.mark.parametrize("name", ps.available())
def test_every_transform_states_its_map_sets_and_an_example(name):
    doc = inspect.getdoc(registered_class(name))
    for part in (".. math::", "Domain", "Codomain", "Example"):
        assert part in doc, f"{name}: docstring lacks {part!r}"
    assert registered_class(name).__name__ in (ROOT / "docs" / "transforms.md").read_text()


@pytest.mark.parametrize(
    "name", ["constrain", "unconstrain", "constraints", "bound_output", "register", "resolve", "available"]
)
def test_every_public_function_has_a_runnable_example(name):
    assert ">>>" in inspect.getdoc(getattr(ps, name))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    result = subprocess.run(
        [sys.executable, str(notebook)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"{notebook.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )


def test_there_are_notebooks():
    assert NOTEBOOKS
