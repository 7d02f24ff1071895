"""The one exception type of collage-prompt."""

from difflab_core.errors import DifflabError

__all__ = ["CollagePromptError"]


class CollagePromptError(DifflabError):
    """Bad input to collage-prompt: the message names the file or argument and how to fix it."""
