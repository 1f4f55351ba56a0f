"""mkdocs hook: the tutorials (from notebooks/) and the contributing page (from CONTRIBUTING.md).

The notebooks live in ``notebooks/`` as jupytext py:percent files, where they are linted, reviewed and
run as scripts by the test suite; the site renders each one as ``tutorials/<name>/``, executed by
mkdocs-jupyter during the build. ``CONTRIBUTING.md`` stays at the repository root, where GitHub shows
it, and becomes the page ``contributing/``.

Both are written for the repository, so their links are relative to where they live there
(``../docs/strategies.md`` from a notebook). This hook rewrites each link to the page it stands for
on the site, and reports a link to a file the site does not have (a warning, so the strict build
fails) instead of publishing it broken. The rewritten notebooks go to a temporary folder; nothing
in the repository is written.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.tutorials")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
# Markdown links [text](target) and images ![alt](target); targets with a scheme are left alone.
_LINK = re.compile(r"(?P<head>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<tail>\))")

_tmp: Path | None = None


def notebook_paths() -> list[Path]:
    """The notebooks the site renders: ``notebooks/NN_name.py``, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _split(target: str) -> tuple[str, str]:
    path, _, anchor = target.partition("#")
    return path, f"#{anchor}" if anchor else ""


def _repo_path(source: Path, target: str) -> str | None:
    """The repository-relative path a relative link from ``source`` points to (None: not a file link)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path, _ = _split(target)
    if not path:
        return None
    joined = posixpath.normpath(posixpath.join(source.parent.relative_to(ROOT).as_posix(), path))
    return joined


def _docs_page(repo_path: str) -> str | None:
    """The docs-relative source of the site page for a repository file, or None if there is none."""
    if repo_path.startswith("docs/") and (ROOT / repo_path).is_file():
        return repo_path.removeprefix("docs/")
    if repo_path == "notebooks/README.md":
        return "tutorials/index.md"
    if repo_path == "CONTRIBUTING.md":
        return "contributing.md"
    if repo_path.startswith("notebooks/") and (ROOT / repo_path) in notebook_paths():
        return "tutorials/" + repo_path.removeprefix("notebooks/")
    return None


def _page_url(docs_path: str) -> str:
    """The directory URL of a docs-relative source path (``a/b.md`` -> ``a/b/``)."""
    stem = posixpath.splitext(docs_path)[0]
    if stem == "index" or stem.endswith("/index"):
        stem = stem[: -len("index")]
        return stem
    return stem + "/"


def rewrite_links(text: str, source: Path, *, html_from: str | None) -> str:
    """Rewrite the relative links of ``source`` for the site.

    With ``html_from`` (the page's own URL directory, for notebooks, whose HTML mkdocs does not
    process) each link becomes a final relative URL; without it, a docs-relative ``.md`` path that
    mkdocs resolves and validates itself.
    """

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        repo_path = _repo_path(source, target)
        if repo_path is None:
            return match.group(0)
        page = _docs_page(repo_path)
        _, anchor = _split(target)
        if page is None:
            log.warning(
                "%s links to %r, which is not on the site; link a page under docs/ or a notebook instead.",
                source.relative_to(ROOT),
                target,
            )
            return match.group(0)
        if html_from is None:
            new = page + anchor
        else:
            url = _page_url(page) if page.endswith((".md", ".py")) else page
            new = posixpath.relpath(url or ".", html_from.rstrip("/") or ".") + "/" + anchor
            new = new.replace("/./", "/").replace("//", "/")
        return f"{match['head']}{new}{match['tail']}"

    return _LINK.sub(replace, text)


@event_priority(100)  # before mkdocs-jupyter turns the notebook files into pages
def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    global _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="paramshape-tutorials-"))
    (_tmp / "tutorials").mkdir()
    for notebook in notebook_paths():
        copy = _tmp / "tutorials" / notebook.name
        page_dir = "tutorials/" + notebook.stem + "/"
        copy.write_text(rewrite_links(notebook.read_text(), notebook, html_from=page_dir))
        # A plain File rooted in the temporary folder: mkdocs-jupyter reads the notebook from disk.
        files.append(
            File(f"tutorials/{notebook.name}", str(_tmp), config.site_dir, config.use_directory_urls)
        )
    contributing = ROOT / "CONTRIBUTING.md"
    files.append(
        File.generated(
            config,
            "contributing.md",
            content=rewrite_links(contributing.read_text(), contributing, html_from=None),
        )
    )
    return files


def on_post_build(config: MkDocsConfig, **kwargs: Any) -> None:
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


def on_build_error(error: Exception, **kwargs: Any) -> None:
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)
