"""The one exception type of mem-video."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from difflab_core.errors import DifflabError

__all__ = ["MemVideoError", "core_errors"]


class MemVideoError(DifflabError):
    """Bad input to mem-video: the message names the file, argument or object and how to fix it.

    A subclass of ``difflab_core.errors.DifflabError`` and therefore of ``ValueError``.
    """


@contextmanager
def core_errors() -> Iterator[None]:
    """Re-raise a ``difflab_core`` error from the block (store, run config, loading) as a `MemVideoError`."""
    try:
        yield
    except MemVideoError:
        raise
    except DifflabError as err:
        raise MemVideoError(str(err)) from err
