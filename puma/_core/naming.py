"""Public names shown where users find them: ``puma.Runner``, not ``puma._runner.runner.Runner``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["present_as"]


def present_as(module: str, namespace: dict[str, Any], names: Iterable[str]) -> None:
    """Set ``__module__`` of each object ``names`` picks from ``namespace`` to ``module``.

    Only objects still named after a private module are renamed, so a name
    re-exported by a second namespace keeps the first public name it was given.
    Tracebacks, ``repr`` and the API reference then say ``puma.X``; pickling
    finds the object there too.
    """
    for name in names:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith("puma._"):
            try:
                obj.__module__ = module
            except (AttributeError, TypeError):
                pass  # an object whose module cannot be set (a constant) keeps its own
