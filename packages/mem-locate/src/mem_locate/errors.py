"""The one exception type of mem-locate, and the boundary that turns core errors into it."""

from __future__ import annotations

from contextlib import contextmanager

from difflab_core.errors import DifflabError

__all__ = ["MemLocateError", "core_errors"]


class MemLocateError(ValueError):
    """Bad input to mem-locate: the message names the file, key or argument and how to fix it."""


@contextmanager
def core_errors(where: str = ""):
    """Re-raise a `difflab_core` error inside the block as a `MemLocateError` (prefixed with ``where``)."""
    try:
        yield
    except DifflabError as err:
        prefix = f"{where}: " if where else ""
        raise MemLocateError(f"{prefix}{err}") from err
