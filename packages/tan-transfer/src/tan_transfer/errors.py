"""The one exception type of tan-transfer."""

from __future__ import annotations

from difflab_core.errors import DifflabError

__all__ = ["TanTransferError"]


class TanTransferError(DifflabError):
    """Bad input to tan-transfer: ``TanTransferError(path_or_field, problem)`` → ``"path_or_field: problem"``."""

    def __init__(self, where: object, problem: str | None = None) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(self.where if problem is None else f"{where}: {problem}")
