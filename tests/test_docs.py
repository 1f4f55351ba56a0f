"""Docs travel with code: the README's table, the commands, docstrings, the API reference, the code
in the pages, and the notebooks (the site build itself runs in `make docs`, part of `make test`)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import paramshape as ps
from paramshape.transforms.registry import registered_class

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
DOC_PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
# Tiny models run best on one thread, and two OpenMP threads spinning on a busy 2-core machine can
# make a ten-second notebook take minutes.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


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
        env=SUBPROCESS_ENV,
    )
    assert result.returncode == 0, (
        f"{notebook.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    assert "all checks passed" in result.stdout, f"{notebook.name} does not end with its checks"
    assert not list(tmp_path.iterdir()), f"{notebook.name} wrote files into its working directory"


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_a_numbered_jupytext_file_listed_on_the_site(notebook):
    text = notebook.read_text()
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.py", notebook.name), "name notebooks NN_topic.py"
    assert "format_name: percent" in text.split("# ---", 2)[1], "the jupytext py:percent header is missing"
    assert f"tutorials/{notebook.name}" in (ROOT / "mkdocs.yml").read_text(), (
        "add it to the nav of mkdocs.yml"
    )
    assert f"({notebook.name})" in (ROOT / "notebooks" / "README.md").read_text()
    assert f"({notebook.name})" in (ROOT / "docs" / "tutorials" / "index.md").read_text()


def test_notebooks_are_in_order_without_gaps():
    numbers = [int(path.name[:2]) for path in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1))


# ---------------------------------------------------------------------------- the API reference
def api_identifiers() -> set[str]:
    """The objects the API pages render: every ``::: paramshape.X`` directive."""
    found = set()
    for page in API_PAGES:
        found.update(re.findall(r"^::: (paramshape(?:\.\w+)*)\s*$", page.read_text(), re.MULTILINE))
    return found


@pytest.mark.parametrize("name", sorted(set(ps.__all__) - {"__version__"}))
def test_every_public_name_is_in_the_api_reference(name):
    assert f"paramshape.{name}" in api_identifiers(), (
        f"ps.{name} is public but no page in docs/api/ renders it; add '::: paramshape.{name}' to one"
    )


def test_the_version_is_mentioned_in_the_api_reference():
    assert "paramshape.__version__" in (ROOT / "docs" / "api" / "index.md").read_text()


def test_the_api_reference_renders_only_public_names():
    stale = {ident for ident in api_identifiers() if ident.split(".")[1] not in ps.__all__}
    assert not stale, f"docs/api/ renders names that are not in paramshape.__all__: {sorted(stale)}"


@pytest.mark.parametrize("name", ps.available())
def test_every_registered_transform_is_in_the_api_reference(name):
    class_name = registered_class(name).__name__
    assert f"paramshape.{class_name}" in api_identifiers()
    index = (ROOT / "docs" / "api" / "index.md").read_text()
    assert re.search(
        rf"^\| `{name}` \| \[`{class_name}`\]\[paramshape\.{class_name}\] \|$", index, re.MULTILINE
    ), f"docs/api/index.md lacks the row | `{name}` | [`{class_name}`][paramshape.{class_name}] |"


def test_the_gallery_draws_every_registered_elementwise_transform():
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("gallery", ROOT / "docs" / "hooks" / "gallery.py")
    gallery = importlib.util.module_from_spec(spec)
    sys.modules["gallery"] = gallery  # dataclasses look their module up there
    try:
        spec.loader.exec_module(gallery)
    finally:
        del sys.modules["gallery"]
    elementwise = {name for name in ps.available() if registered_class(name).event_dim == 0}
    assert elementwise <= set(gallery.EXAMPLES), (
        f"no gallery entry for {sorted(elementwise - set(gallery.EXAMPLES))}"
    )
    for name, entry in gallery.EXAMPLES.items():
        assert name in ps.available(), f"the gallery draws {name!r}, which is not registered"
        assert entry.api in api_identifiers()
        assert gallery.draw(entry).startswith(b"<?xml"), name


# ------------------------------------------------------------------------ code in the pages
def python_blocks(page: Path) -> list[str]:
    """The fenced Python blocks of a page that import paramshape: the ones a reader can run as is."""
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    return [block for block in blocks if re.search(r"^import paramshape", block, re.MULTILINE)]


#: A comment after ``print(...)`` that reads as printed output (a tensor, a boolean, a number, a
#: repr, a list), up to an explanation after ``: `` ("tensor([-1., 0., 1.]): rounded onto the bounds").
#: Prose comments ("all finite") are not outputs and are not compared.
OUTPUT = re.compile(r"(tensor\(|torch\.|True\b|False\b|None\b|-?\d|\[|\(|'|[A-Z]\w*\()")


def expected_output(comment: str) -> str | None:
    """The output a ``# ...`` comment after a print states, or None for prose."""
    if not OUTPUT.match(comment):
        return None
    depth = 0
    for index, char in enumerate(comment):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0 and comment.startswith((": ", "; "), index + 1) and char in ")]}'\"0123456789eE.":
            return comment[: index + 1]
    return comment


def with_expectations(block: str) -> str:
    """``print(x)  # output`` lines rewritten to compare what they print with the stated output."""
    lines = []
    for number, line in enumerate(block.splitlines(), 1):
        match = re.match(r"^(\s*)(print\(.*\))\s+# (.*)$", line)
        expected = expected_output(match.group(3)) if match else None
        if expected is None:
            lines.append(line)
            continue
        indent, call = match.group(1), match.group(2)
        lines.append(f"{indent}__expect(lambda: {call}, {expected!r}, {number})")
    return "\n".join(lines)


def normal(text: str) -> str:
    """Printed text without its layout: whitespace runs are one space, none inside brackets."""
    # Whitespace is layout (torch pads columns), not output.
    return re.sub(r"\s+", " ", re.sub(r"([\[(])\s+|\s+([\])])", r"\1\2", text)).strip()


def matches(printed: str, expected: str) -> bool:
    """Whether printed text is the stated output, whitespace aside; ``...`` stands for any text."""
    # As doctest's ELLIPSIS: "tensor(0.2500, ...)" leaves out the grad_fn, "0.1732..." the digits
    # past the fourth.
    pattern = ".*".join(re.escape(part) for part in normal(expected).split("..."))
    return re.fullmatch(pattern, normal(printed), re.DOTALL) is not None


# The child process gets the same normal() and matches() as the tests of them below.
RUN_BLOCKS = (
    """
import contextlib, io, json, re, sys, traceback, warnings
warnings.simplefilter("ignore")
failures = []
"""
    + inspect.getsource(normal)
    + inspect.getsource(matches)
    + r"""
def __expect(call, expected, line):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        call()
    if not matches(printed.getvalue(), expected):
        # Recorded, not raised: the block goes on, so one run lists every stale output.
        failures.append(
            f"block {index}, line {line}: printed {printed.getvalue().strip()!r}, the page says {expected!r}"
        )

for index, block in enumerate(json.loads(sys.stdin.read())):
    try:
        exec(compile(block, f"<block {index}>", "exec"), {"__name__": "__main__", "__expect": __expect})
    except Exception:
        failures.append(f"block {index}:\n{block}\n{traceback.format_exc()}")
print("\n".join(failures))
sys.exit(1 if failures else 0)
"""
)


def test_expected_outputs_are_recognised():
    """The comparison is not vacuous: outputs are recognised, prose is left alone."""
    assert expected_output("tensor([-1., 0., 1.]): rounded onto the bounds") == "tensor([-1., 0., 1.])"
    assert expected_output("True") == "True"
    assert expected_output("torch.Size([2, 3])") == "torch.Size([2, 3])"
    assert expected_output("all finite") is None
    assert expected_output("centred logits: zeros") is None
    rewritten = with_expectations("x = 1\nprint(x)  # 2")
    assert "__expect(lambda: print(x), '2', 2)" in rewritten
    assert expected_output("0.25; report.to_dict() has the counts") == "0.25"
    assert expected_output("tensor([0.5493]): log(3) / 2") == "tensor([0.5493])"


def test_printed_outputs_are_compared_with_ellipsis_and_without_layout():
    printed = "tensor(0.2500, grad_fn=<MulBackward0>)"
    assert matches(printed, "tensor(0.2500, ...)")
    assert not matches(printed, "tensor(0.2501, ...)")
    assert not matches("tensor(0.2500)", "tensor(0.25)")
    assert matches("5.0 0.1732867956161499", "5.0 0.1732...")
    assert not matches("5.0 0.1742867956161499", "5.0 0.1732...")
    assert matches("tensor([[ 0.5445, -0.3033,\n          0.9937]])", "tensor([[0.5445, -0.3033, 0.9937]])")
    assert not matches("tensor([True, False])", "tensor([True, True])")


@pytest.mark.parametrize(
    "page", [p for p in DOC_PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_code_in_the_pages_runs(page, tmp_path):
    """Every Python block that imports paramshape runs, each in a fresh namespace, one process per page,
    and every ``print(...)  # output`` in it prints that output (whitespace aside)."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_BLOCKS],
        input=json.dumps([with_expectations(block) for block in python_blocks(page)]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=SUBPROCESS_ENV,
    )
    assert result.returncode == 0, (
        f"{page.relative_to(ROOT)}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    )


def test_no_text_file_holds_control_characters():
    """A Python string written without r'' turns TeX's \\bigl and \\tfrac into a backspace and a tab
    (it happened in docs/transforms.md): the page then shows raw TeX. Sources, pages and notebooks
    hold printable text, newlines and nothing else."""
    files = [
        path
        for folder in ("docs", "notebooks", "paramshape", "benchmarks", "tests")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".md", ".py", ".yml"} and ".ipynb_checkpoints" not in path.parts
    ] + [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
    bad = {
        str(path.relative_to(ROOT)): sorted({hex(ord(c)) for c in text if ord(c) < 32 and c not in "\n"})
        for path in files
        for text in [path.read_text(encoding="utf-8")]
        if any(ord(c) < 32 and c not in "\n" for c in text)
    }
    assert not bad, f"control characters in {bad}"


def test_display_math_starts_at_the_margin():
    """The site's math extension finds a ``$$`` block only at the start of a line: one indented into
    a list item is left as raw TeX (found by the browser check on docs/transforms.md). This is the
    fast check of that class; tests/test_site.py still reads the rendered pages."""
    indented = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "docs").rglob("*.md"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip() == "$$" and line != "$$"
    ]
    assert not indented, f"indented $$ blocks: {indented}"
