"""The one exception type of difflab_core, and the boundary packages use to turn it into their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DifflabError", "reraise_as"]


class DifflabError(ValueError):
    """Bad input to difflab_core: the message names the file or argument and how to fix it."""


@contextmanager
def reraise_as(error_type: type[Exception], where: str = "") -> Iterator[None]:
    """Re-raise a `DifflabError` from the block as ``error_type`` (message prefixed with ``where``), chained to
    the original; errors that already are ``error_type`` pass through unchanged."""
    try:
        yield
    except DifflabError as err:
        if isinstance(err, error_type):
            raise
        prefix = f"{where}: " if where else ""
        raise error_type(f"{prefix}{err}") from err
