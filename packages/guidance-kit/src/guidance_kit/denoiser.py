"""Find the denoiser and scheduler of a pipeline (or take a bare module), and the hook state they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import GuidanceKitError

__all__ = ["GuidanceRun", "resolve_denoiser"]


def resolve_denoiser(pipe_or_module, scheduler=None) -> tuple[nn.Module, Any]:
    """``(denoiser, scheduler)``: ``pipe.unet`` or ``pipe.transformer`` and ``pipe.scheduler``, or a bare module
    with the ``scheduler`` given."""
    for name in ("unet", "transformer"):
        module = getattr(pipe_or_module, name, None)
        if isinstance(module, nn.Module):
            return module, scheduler if scheduler is not None else getattr(pipe_or_module, "scheduler", None)
    if isinstance(pipe_or_module, nn.Module):
        return pipe_or_module, scheduler
    raise GuidanceKitError(
        f"pipe_or_unet: expected a diffusers pipeline with .unet/.transformer or a torch module, got "
        f"{type(pipe_or_module).__name__}"
    )


@dataclass
class GuidanceRun:
    """What the guidance context managers yield. ``stats``: ``denoiser_calls``, ``uncond_forwards``,
    ``classifier_calls``, ``schedule_mismatch`` and per-step ``records``; ``schedule``: the last run's."""

    stats: dict = field(
        default_factory=lambda: {
            "denoiser_calls": 0,
            "uncond_forwards": 0,
            "classifier_calls": 0,
            "schedule_mismatch": False,
            "records": [],
        }
    )
    schedule: Any = None
    _run_calls: int = 0

    def step(self, call, schedule) -> None:
        """Count a denoiser call; a call with j = 0 starts a new run (flags a mismatch in the old one)."""
        if call.j == 0:
            self.finish()
            self._run_calls = 0
        self.schedule = schedule
        self._run_calls += 1
        self.stats["denoiser_calls"] += 1

    def finish(self) -> None:
        if self.schedule is not None and self._run_calls and self._run_calls != self.schedule.n:
            self.stats["schedule_mismatch"] = True
