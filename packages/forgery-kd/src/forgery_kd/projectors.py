"""FitNet-style feature projectors from the student's map to each teacher branch's map.

``dedicated`` (default, the paper's fix) gives each branch its own projector; ``shared`` uses one
module for both targets (the failure case). Projectors exist only in training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ForgeryKDError

__all__ = ["ConvProjector", "LinearProjector", "make_projectors"]


class ConvProjector(nn.Module):
    """Conv1×1(c_in → c_out) + BatchNorm: ``[B, c_in, h, w] → [B, c_out, H, W]``.

    When ``size=(H, W)`` differs from ``(h, w)`` the output is bilinearly resized to it.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, h: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        y = self.bn(self.conv(h))
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class LinearProjector(nn.Module):
    """Linear(c_in → c_out) + BatchNorm1d for pooled features ``[B, c_in] → [B, c_out]``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, h: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return self.bn(self.fc(h))


def make_projectors(
    student: nn.Module | int, teacher: nn.Module | dict[str, int], mode: str = "dedicated"
) -> nn.ModuleDict:
    """One :class:`ConvProjector` per teacher branch (``{"spa": P_spa, "freq": P_freq}``).

    ``student`` is a :class:`~forgery_kd.models.Student` or its channel count; ``teacher`` a
    :class:`~forgery_kd.models.DualBranchTeacher` or ``{branch: channels}``. ``mode="shared"`` maps
    every key to the same module (all branches need the same channel count).
    """
    student_channels = student if isinstance(student, int) else student.num_features
    teacher_channels = teacher if isinstance(teacher, dict) else teacher.feature_channels
    if mode == "dedicated":
        return nn.ModuleDict({k: ConvProjector(student_channels, c) for k, c in teacher_channels.items()})
    if mode == "shared":
        widths = set(teacher_channels.values())
        if len(widths) != 1:
            raise ForgeryKDError(
                f"projector='shared' needs equal teacher branch widths, got {teacher_channels}; use 'dedicated'"
            )
        shared = ConvProjector(student_channels, widths.pop())
        return nn.ModuleDict(dict.fromkeys(teacher_channels, shared))
    raise ForgeryKDError(f"projector={mode!r} is unknown; use 'dedicated' or 'shared'")
