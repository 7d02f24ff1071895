"""The one exception type of mem-video."""

from __future__ import annotations

from difflab_core.errors import DifflabError, reraise_as

__all__ = ["MemVideoError", "core_errors"]


class MemVideoError(DifflabError):
    """Bad input to mem-video: the message names the file, argument or object and how to fix it.

    A subclass of ``difflab_core.errors.DifflabError`` and therefore of ``ValueError``.
    """


def core_errors():
    """Re-raise a `difflab_core` error from the block (store, run config, loading) as a `MemVideoError`."""
    return reraise_as(MemVideoError)
