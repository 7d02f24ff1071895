"""Compress Guidance and the guidance interval as diffusers guiders (``diffusers.guiders``, diffusers ≥ 0.35).

`ScheduledGuidance` is `ClassifierFreeGuidance` whose CFG is on only on a `StepSchedule`'s guided steps (j
and n from ``set_state``): elsewhere ``num_conditions`` is 1, so a Modular pipeline skips the unconditional
forward; ``forward`` applies w(j) by the increment form u′ = c − w(c−u). ``start``/``stop`` still apply.
Use ``modular_pipe.update_components(guider=CompressGuidance(...))``; ``save_pretrained``/``from_pretrained``
round-trip. Without ``diffusers.guiders``, ``HAS_GUIDERS`` is False and the classes raise on use.
"""

from __future__ import annotations

import inspect

from .compress import increment_uncond
from .errors import GuidanceKitError
from .schedules import StepSchedule, check_compress_args, compress_schedule, interval_schedule, step_sigmas

__all__ = ["HAS_GUIDERS", "CompressGuidance", "IntervalGuidance", "ScheduledGuidance"]

try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.guiders import ClassifierFreeGuidance

    HAS_GUIDERS = True
except ImportError:  # diffusers < 0.35
    HAS_GUIDERS = False

if HAS_GUIDERS:
    _PARENT = set(inspect.signature(ClassifierFreeGuidance.__init__).parameters) - {"self"}

    def _parent_kwargs(**kwargs) -> dict:
        """Only the keyword arguments the installed `ClassifierFreeGuidance.__init__` accepts."""
        return {k: v for k, v in kwargs.items() if k in _PARENT}

    class ScheduledGuidance(ClassifierFreeGuidance):
        """CFG on the guided steps of ``schedule_for(n)`` only, weighted by w(j) (subclasses define it)."""

        def schedule_for(self, n: int) -> StepSchedule:
            raise NotImplementedError

        def _current(self) -> StepSchedule | None:
            n = self._num_inference_steps
            if n is None:
                return None
            if getattr(self, "_cached", None) is None or self._cached.n != n:
                self._cached = self.schedule_for(int(n))
            return self._cached

        def _is_cfg_enabled(self) -> bool:
            if not super()._is_cfg_enabled():
                return False
            schedule = self._current()
            return schedule is None or self._step >= schedule.n or schedule.is_guided(int(self._step))

        def forward(self, pred_cond, pred_uncond=None):
            schedule = self._current()
            if self._is_cfg_enabled() and schedule is not None and self._step < schedule.n:
                w = schedule.weight(int(self._step))
                if w != 1:
                    pred_uncond = increment_uncond(
                        pred_uncond, pred_cond, w, self.guidance_scale, "increment"
                    )
            return super().forward(pred_cond, pred_uncond)

    class CompressGuidance(ScheduledGuidance):
        """Compress CFG as a guider: CFG on ``compress_schedule(n, skip, k)``'s steps, weights by
        ``weight_mode`` ("none": plain CFG there; "compress": increment form c + w(g−1)(c−u))."""

        @register_to_config
        def __init__(
            self,
            guidance_scale: float = 7.5,
            skip: int = 5,
            k: float = 2.0,
            weight_mode: str = "none",
            compress_form: str = "increment",
            max_weight: float | None = None,
            arithmetic: str = "official",
            guidance_rescale: float = 0.0,
            use_original_formulation: bool = False,
            start: float = 0.0,
            stop: float = 1.0,
            enabled: bool = True,
        ):
            if compress_form != "increment":
                raise GuidanceKitError("CompressGuidance: compress_form must be 'increment' for the guider")
            check_compress_args(
                skip, k, weight_mode=weight_mode, arithmetic=arithmetic, max_weight=max_weight
            )
            super().__init__(
                **_parent_kwargs(
                    guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale,
                    use_original_formulation=use_original_formulation,
                    start=start,
                    stop=stop,
                    enabled=enabled,
                )
            )
            self.skip, self.k, self.weight_mode = skip, k, weight_mode
            self.max_weight, self.arithmetic = max_weight, arithmetic

        def schedule_for(self, n: int) -> StepSchedule:
            return compress_schedule(
                n,
                min(self.skip, n),
                self.k,
                weight_mode=self.weight_mode,
                arithmetic=self.arithmetic,
                max_weight=self.max_weight,
            )

    class IntervalGuidance(ScheduledGuidance):
        """CFG only while σ_j ∈ [σ_lo, σ_hi]; call ``bind_scheduler(scheduler)`` before sampling."""

        @register_to_config
        def __init__(
            self,
            sigma_lo: float = 0.28,
            sigma_hi: float = 5.42,
            guidance_scale: float = 7.5,
            guidance_rescale: float = 0.0,
            use_original_formulation: bool = False,
            start: float = 0.0,
            stop: float = 1.0,
            enabled: bool = True,
        ):
            super().__init__(
                **_parent_kwargs(
                    guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale,
                    use_original_formulation=use_original_formulation,
                    start=start,
                    stop=stop,
                    enabled=enabled,
                )
            )
            self.sigma_lo, self.sigma_hi = sigma_lo, sigma_hi
            self._scheduler = None

        def bind_scheduler(self, scheduler) -> IntervalGuidance:
            self._scheduler = scheduler
            self._cached = None
            return self

        def schedule_for(self, n: int) -> StepSchedule:
            if self._scheduler is None:
                raise GuidanceKitError("IntervalGuidance: call bind_scheduler(scheduler) before sampling")
            return interval_schedule(step_sigmas(self._scheduler, n), self.sigma_lo, self.sigma_hi)

else:

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise GuidanceKitError("diffusers.guiders is not available: install diffusers >= 0.35")

    ScheduledGuidance = CompressGuidance = IntervalGuidance = _Missing
