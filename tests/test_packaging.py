"""The package as users get it: the sdist and wheel build, carry ``py.typed`` and the changelog, and
the wheel installed in a fresh virtual environment runs ``python -m paramshape demo``.

The build uses ``--no-isolation`` (the pinned setuptools of the dev environment) and the fresh
environment gets paramshape from the wheel with ``--no-deps --no-index``: nothing is downloaded while
the tests run. Its dependencies (torch, typing-extensions) are reached through a ``.pth`` file that
points at the dev environment's site-packages; a path listed in a ``.pth`` file is appended to
``sys.path`` without running that directory's own ``.pth`` files, so the editable install of the
working tree is not visible there, and the tests check that the wheel's copy is the one imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import paramshape as ps

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {[p.name for p in found]}"
    return found[0]


def test_wheel_carries_py_typed_and_the_subpackages_and_claims_the_tested_torch(dist):
    wheel = _one(dist, f"paramshape-{ps.__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"paramshape-{ps.__version__}.dist-info/METADATA").decode()
    assert "paramshape/py.typed" in names
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "paramshape").rglob("*.py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert not any(n.startswith(("tests/", "docs/", "notebooks/")) for n in names)
    # pyproject claims only what the tests run on (torch 2.13 on CPU; see its comment).
    assert "Requires-Dist: torch>=2.13" in metadata


def test_sdist_carries_py_typed_changelog_and_license(dist):
    sdist = _one(dist, f"paramshape-{ps.__version__}.tar.gz")
    prefix = f"paramshape-{ps.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
    for required in ("paramshape/py.typed", "CHANGELOG.md", "LICENSE", "README.md", "pyproject.toml"):
        assert required in names, required


def test_the_wheel_in_a_fresh_venv_runs_the_demo(dist, tmp_path):
    wheel = _one(dist, "*.whl")
    venv = tmp_path / "venv"
    # Neither PYTHONPATH nor the current folder may show the working tree: pip would take its
    # egg-info for an installed paramshape and skip the wheel, and Python would import it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, timeout=300, cwd=tmp_path, env=env)
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        ).stdout.strip()
    )
    (target / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run = subprocess.run(
        [str(python), "-c", "import paramshape, sys; print(paramshape.__file__)"],
        cwd=tmp_path,  # not the repository: `python -m` puts the current folder on sys.path
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    installed = Path(run.stdout.strip())
    assert installed.is_relative_to(venv), f"imported {installed}, not the wheel's copy"
    assert (installed.parent / "py.typed").is_file()
    demo = subprocess.run(
        [str(python), "-m", "paramshape", "demo", "--steps", "30"],
        check=False,  # the assertion below shows stderr
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.strip(), "the demo printed nothing"
