"""Which denoising step is the UNet being called for? A forward pre-hook shared by capture and tracking.

`StepCounter` maps each UNet call's ``timestep`` to its index in ``scheduler.timesteps`` (the *last*
occurrence, so for Heun-type schedulers that call the UNet twice per timestep the last call counts). It
also records the latent spatial size of the call, which attention capture uses to reshape query rows.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["StepCounter"]


def _timestep_of(args: tuple, kwargs: dict) -> torch.Tensor | float | None:
    if "timestep" in kwargs:
        return kwargs["timestep"]
    if len(args) > 1:
        return args[1]
    return None


class StepCounter:
    """Forward pre-hook on a denoiser: ``index`` is the current step's index in ``scheduler.timesteps``.

    ``index`` is None outside a known step (a timestep not in the schedule, or while paused). Call
    `reset()` before each sampling run; `paused()` disables counting (e.g. inside a gradient loop).
    """

    def __init__(self, unet: nn.Module, scheduler) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.index: int | None = None
        self.calls = 0
        self.latent_hw: tuple[int, int] | None = None
        self.batch_size: int | None = None
        self.enabled = True
        self._handle = None

    @property
    def num_steps(self) -> int:
        """Length of ``scheduler.timesteps`` (0 before ``set_timesteps``)."""
        ts = getattr(self.scheduler, "timesteps", None)
        return 0 if ts is None else len(ts)

    def step_index(self, timestep) -> int | None:
        """Index of the last occurrence of ``timestep`` in ``scheduler.timesteps``, or None."""
        ts = getattr(self.scheduler, "timesteps", None)
        if ts is None or timestep is None:
            return None
        t = torch.as_tensor(timestep).detach().reshape(-1)[0].to("cpu", torch.float64)
        hits = (torch.as_tensor(ts).detach().to("cpu", torch.float64) == t).nonzero()
        return int(hits[-1]) if len(hits) else None

    def _hook(self, module, args, kwargs):
        if not self.enabled:
            return None
        sample = args[0] if args else kwargs.get("sample")
        self.index = self.step_index(_timestep_of(args, kwargs))
        if isinstance(sample, torch.Tensor):
            self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
            self.batch_size = int(sample.shape[0])
        self.calls += 1
        return None

    def reset(self) -> None:
        """Forget the current step and call count (before a new sampling run)."""
        self.index = None
        self.calls = 0

    def attach(self) -> StepCounter:
        if self._handle is None:
            self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def paused(self):
        """Disable counting inside the block; ``index`` is None meanwhile."""
        was, self.enabled = self.enabled, False
        saved, self.index = self.index, None
        try:
            yield self
        finally:
            self.enabled, self.index = was, saved

    def __enter__(self) -> StepCounter:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
