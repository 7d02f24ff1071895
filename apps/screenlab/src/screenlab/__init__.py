"""Screen image collections: cheap labels by collage prompting and face-forgery flags from a distilled detector.

Public names are imported lazily, so that ``screenlab version`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DemoConfig": "demo",
    "DemoResult": "demo",
    "run_demo": "demo",
    "ScreenlabError": "errors",
    "ScreenItem": "images",
    "scan_folder": "images",
    "RunOutcome": "run",
    "run_folder": "run",
    "ScreenConfig": "screen",
    "ScreenResult": "screen",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'screenlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
