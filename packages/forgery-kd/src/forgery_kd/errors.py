"""The one exception type of forgery-kd, and the boundary that turns core errors into it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from difflab_core.errors import DifflabError

__all__ = ["ForgeryKDError", "core_errors"]


class ForgeryKDError(ValueError):
    """Bad input to forgery-kd: the message names the file, key path or argument and how to fix it."""


@contextmanager
def core_errors(where: str = "") -> Iterator[None]:
    """Re-raise a ``difflab_core`` error inside the block as a :class:`ForgeryKDError`."""
    try:
        yield
    except DifflabError as err:
        prefix = f"{where}: " if where else ""
        raise ForgeryKDError(f"{prefix}{err}") from err
