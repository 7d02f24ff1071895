"""The single exception type of difftriplet."""

from __future__ import annotations

from difflab_core.errors import DifflabError

__all__ = ["DiffTripletError"]


class DiffTripletError(DifflabError):
    """Bad input to difftriplet (a ``ValueError``): the message names the file or argument and the fix."""
