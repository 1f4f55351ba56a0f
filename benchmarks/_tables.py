"""The Markdown table the benchmark scripts print (and docs/strategies.md, docs/performance.md quote):
one builder, so every script's table has the same layout and a change to it is made once.

The scripts are run by path (``python benchmarks/run.py``) and loaded by path in the tests, never
imported as a package; each puts this folder on ``sys.path`` to import this file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """``| a | b |``, a ``|---|---|`` rule, then one line per row of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
