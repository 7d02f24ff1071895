"""The one exception type of forgery-kd, and the boundary that turns core errors into it."""

from __future__ import annotations

from difflab_core.errors import reraise_as

__all__ = ["ForgeryKDError", "core_errors"]


class ForgeryKDError(ValueError):
    """Bad input to forgery-kd: the message names the file, key path or argument and how to fix it."""


def core_errors(where: str = ""):
    """Re-raise a `difflab_core` error inside the block as a `ForgeryKDError` (prefixed with ``where``)."""
    return reraise_as(ForgeryKDError, where)
