"""The one exception type of diffact."""

from difflab_core.errors import DifflabError


class DiffActError(DifflabError):
    """Bad input to diffact: the message names the file or argument, the problem and how to fix it."""
