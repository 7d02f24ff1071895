"""The one exception type of guidance-kit, and the boundary that turns core errors into it."""

from __future__ import annotations

from difflab_core.errors import reraise_as

__all__ = ["GuidanceKitError", "core_errors"]


class GuidanceKitError(ValueError):
    """Bad input to guidance-kit: the message names the file or argument at fault and how to fix it."""


def core_errors(where: str = ""):
    """Re-raise a `difflab_core` error inside the block as a `GuidanceKitError` (prefixed with ``where``)."""
    return reraise_as(GuidanceKitError, where)
