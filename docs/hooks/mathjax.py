"""mkdocs hook: serve MathJax from the site itself, so formulas render offline.

The README tells users to build the site and open it locally, and CI has no network beyond the
package registries: a renderer loaded from a CDN leaves every formula as raw TeX there. MathJax
3.2.2 comes from the pinned PyPI package ``django-static-mathjax`` (installed by the ``docs`` extra;
it ships MathJax's ``es5`` build as plain files and depends on nothing, Django included). This hook
copies the part of it the site uses into ``javascripts/vendor/mathjax/``: the ``tex-mml-chtml``
component, the CommonHTML output with its fonts, the TeX extensions it may autoload and the
menu/accessibility modules it loads on demand (about 2 MB, instead of the package's 24 MB).
Nothing is committed to the repository: the files are read from the installed package at build
time. A missing package is a warning, which fails the strict build, rather than a site whose math
silently stays raw.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.mathjax")

# Where mkdocs.yml's extra_javascript expects the renderer.
SITE_DIR = "javascripts/vendor/mathjax"
# Relative to MathJax's es5/ folder: the component the pages load, then the folders it loads from.
ENTRY = "tex-mml-chtml.js"
FOLDERS = ("input/tex", "input/mml", "output/chtml", "ui", "a11y")


def mathjax_root() -> Path | None:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax`` package, if any."""
    try:
        import mathjax  # the import name of django-static-mathjax
    except ImportError:
        return None
    root = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    return root if (root / ENTRY).is_file() else None


def vendored_files() -> list[tuple[str, Path]]:
    """(site path, source file) for every MathJax file the site serves."""
    root = mathjax_root()
    if root is None:
        return []
    sources = [root / ENTRY]
    for folder in FOLDERS:
        sources.extend(p for p in sorted((root / folder).rglob("*")) if p.is_file())
    return [(f"{SITE_DIR}/{p.relative_to(root).as_posix()}", p) for p in sources]


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    vendored = vendored_files()
    if not vendored:
        log.warning(
            "MathJax is not installed, so the site's formulas would stay raw TeX: install the docs "
            "extra (pip install -c constraints.txt -e '.[docs]'), which pins django-static-mathjax"
        )
        return files
    for site_path, source in vendored:
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    return files
