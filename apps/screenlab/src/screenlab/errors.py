"""The app's input error: one line naming the file or option, printed by the CLI without a traceback."""

from difflab_core.errors import DifflabError

__all__ = ["ScreenlabError"]


class ScreenlabError(DifflabError):
    """Bad input to screenlab (a missing folder, no images, a corrupt file, no VLM chosen, ...)."""
