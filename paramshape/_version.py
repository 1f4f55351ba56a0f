"""The single place that states paramshape's version (read by pyproject.toml)."""

__version__ = "0.1.0"
