"""The one exception type of mem-locate, and the boundary that turns core errors into it."""

from __future__ import annotations

from difflab_core.errors import reraise_as

__all__ = ["MemLocateError", "core_errors"]


class MemLocateError(ValueError):
    """Bad input to mem-locate: the message names the file, key or argument and how to fix it."""


def core_errors(where: str = ""):
    """Re-raise a `difflab_core` error inside the block as a `MemLocateError` (prefixed with ``where``)."""
    return reraise_as(MemLocateError, where)
