"""The one exception type of difflab_core."""


class DifflabError(ValueError):
    """Bad input to difflab_core: the message names the file or argument and how to fix it."""
