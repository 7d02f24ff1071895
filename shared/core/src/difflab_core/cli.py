"""What every difflab command line shares: bad input as one ``error:`` line, and status spinners.

``one_line_errors`` wraps a typer/click command so that input errors (`DifflabError`, ``ValueError``, missing or
unreadable files) print ``error: <message>`` on stderr and exit with ``exit_code`` instead of a traceback; with
``interrupted`` a Ctrl-C prints that hint and exits 130.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from .errors import DifflabError

F = TypeVar("F", bound=Callable[..., Any])

INPUT_ERRORS = (DifflabError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
"""What a command reports as bad input rather than a crash."""


def one_line_errors(*, exit_code: int = 1, interrupted: str | None = None) -> Callable[[F], F]:
    """Decorator: input errors → ``error: …`` on stderr + ``exit_code``; Ctrl-C → ``interrupted`` + exit 130."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except INPUT_ERRORS as err:
                print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
                raise SystemExit(exit_code) from None
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                print(f"interrupted: {interrupted}", file=sys.stderr)
                raise SystemExit(130) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def status(message: str, enabled: bool = True) -> AbstractContextManager[Any]:
    """A rich spinner with ``message`` on stderr while the block runs (nothing when ``enabled`` is false)."""
    if not enabled:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)
