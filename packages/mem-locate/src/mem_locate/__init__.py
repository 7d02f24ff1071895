"""mem-locate: Bright Ending localization, detection, measurement and mitigation of memorization."""

__version__ = "0.1.0"

from .errors import MemLocateError

__all__ = ["MemLocateError", "__version__"]
