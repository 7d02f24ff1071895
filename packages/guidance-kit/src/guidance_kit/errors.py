"""The one exception type of guidance-kit, and the boundary that turns core errors into it."""

from __future__ import annotations

from contextlib import contextmanager

from difflab_core.errors import DifflabError

__all__ = ["GuidanceKitError", "core_errors"]


class GuidanceKitError(ValueError):
    """Bad input to guidance-kit: the message names the file or argument at fault and how to fix it."""


@contextmanager
def core_errors(where: str = ""):
    """Re-raise a `difflab_core` error inside the block as a `GuidanceKitError` (prefixed with ``where``)."""
    try:
        yield
    except DifflabError as err:
        prefix = f"{where}: " if where else ""
        raise GuidanceKitError(f"{prefix}{err}") from err
