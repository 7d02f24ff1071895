"""`AdaptiveMomentumScheduler`: the Adaptive Momentum Sampler (AMS) as a drop-in diffusers scheduler.

Wang et al., "Boosting Diffusion Models with an Adaptive Momentum Sampler" (IJCAI-24, arXiv 2308.11941);
defaults follow the official code (ShinyGua/DPMs-with-Adam @ 6ca0824). Each reverse step is read as an
optimiser update in the rescaled space x̄ = x/√ᾱ: the base (DDIM) step is the increment d, AMS replaces it
by an EMA m of past increments, optionally divided by an RMS term v (Adam):

    x_s = √ᾱ_s · (x̄_t + m_k / v_k)

It is computed as the exact `DDIMScheduler` step plus a correction √ᾱ_s·(m_k/v_k − d_k) (spec §2 e), so with
m = d and v = 1 (first step; ``b1_max = 0``) the output is bit-identical to `DDIMScheduler`.

The scheduler holds per-trajectory state (m, v, step index) and is not thread-safe: use one instance per
concurrent trajectory, and call `set_timesteps` before each trajectory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMScheduler, betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .errors import AdamSamplerError
from .functional import (
    B1_FORMS,
    B1_SCHEDULES,
    SECOND_MOMENT_NORMS,
    lambda_schedule,
    momentum_update,
    second_moment_update,
)

__all__ = ["METHODS", "PRESETS", "AdaptiveMomentumScheduler", "AdaptiveMomentumSchedulerOutput"]

logger = logging.getLogger(__name__)

METHODS = ("none", "momentum", "rms", "adam")
BASE_SAMPLERS = ("ddim", "ddpm_large")
SPACINGS = ("leading", "trailing", "linspace", "quad")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREV_RULES = ("grid", "ddim")

PRESETS: dict[str, dict] = {
    # the official code's defaults: momentum, b1 0 -> 0.1 (sin²), b2 0.999, DDPM-small base (eta 1), no clipping
    "official": {
        "method": "momentum",
        "b1_min": 0.0,
        "b1_max": 0.1,
        "b2": 0.999,
        "eta": 1.0,
        "clip_sample": False,
    },
    # CIFAR-10 config: adds the DDIM-repo quadratic grid and the code's λ index on it
    "official-cifar10": {
        "method": "momentum",
        "b1_min": 0.0,
        "b1_max": 0.1,
        "eta": 1.0,
        "clip_sample": False,
        "timestep_spacing": "quad",
        "legacy_lambda_index": True,
    },
    # the Adam variant (first and second moment, with the code's channel norm: inactive for C = 1)
    "adam": {"method": "adam", "b1_min": 0.0, "b1_max": 0.1, "b2": 0.999},
}


@dataclass
class AdaptiveMomentumSchedulerOutput(BaseOutput):
    """Same fields as `DDIMSchedulerOutput`: ``prev_sample`` x_s and ``pred_original_sample`` x̂₀ ([B, C, H, W])."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _err(message: str) -> AdamSamplerError:
    return AdamSamplerError(f"AdaptiveMomentumScheduler: {message}")


class AdaptiveMomentumScheduler(SchedulerMixin, ConfigMixin):
    """AMS on a DDIM base step; ``from_config`` takes any DDIM/DDPM-family config.

    DDIM config keys (same names and meaning as `DDIMScheduler`, except ``clip_sample`` defaults to False as in
    the official code) plus the AMS keys:

    - ``method``: ``"momentum"`` (official default), ``"adam"`` (momentum / RMS), ``"rms"`` (d / RMS), ``"none"``.
    - ``b1_min``, ``b1_max``: λ runs linearly over the executed steps (official 0.0 → 0.1).
    - ``b1_form``: ``"sin2"`` (β₁ = sin²(λπ/2), official ``b1_m = 2``) or ``"sincos"``; ``b1_ascending``.
    - ``b2`` (0.999), ``second_moment_eps`` (1e-8), ``second_moment_norm`` (``"channel"`` official, ``"image"``).
    - ``eta``: the base step's η (0 = DDIM, 1 = DDPM fixed-small); ``step(eta=...)`` overrides it.
    - ``base_sampler``: ``"ddim"`` (η-DDIM, bit-exact `DDIMScheduler` ops) or ``"ddpm_large"`` (DDPM posterior
      mean with variance β̃, `DDPMScheduler(variance_type="fixed_large")` ops; the code's η = 2; needs eta = 0).
    - ``prev_timestep_rule``: ``"grid"`` (next grid entry, official) or ``"ddim"`` (t − T//S).
    - ``legacy_lambda_index``: index λ by ``int((T − 1 − t)/(T/S))`` as the official code (misaligned on the quad
      grid) instead of the position in the executed trajectory.
    - ``b1_schedule``: ``"linear"`` (official), ``"cosine"`` or ``"constant"`` λ over the steps (for sweeps).
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        method: str = "momentum",
        b1_min: float = 0.0,
        b1_max: float = 0.1,
        b1_form: str = "sin2",
        b1_ascending: bool = True,
        b2: float = 0.999,
        second_moment_eps: float = 1e-8,
        second_moment_norm: str = "channel",
        eta: float = 0.0,
        base_sampler: str = "ddim",
        prev_timestep_rule: str = "grid",
        legacy_lambda_index: bool = False,
        b1_schedule: str = "linear",
    ):
        self._validate_config()
        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            self.betas = (
                torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
            )
        else:  # squaredcos_cap_v2 (validated)
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._prev_timesteps: list[int] = []
        self._grid: list[int] = []
        self._warned: set[str] = set()
        self._reset_state()
        if clip_sample:
            self._warn_once(
                "clip", "clip_sample=True (inherited from the config): the official AMS code does not clip"
            )

    # ------------------------------------------------------------------------------------------ config

    def _validate_config(self) -> None:
        c = self.config
        choices = {
            "method": METHODS,
            "b1_form": B1_FORMS,
            "second_moment_norm": SECOND_MOMENT_NORMS,
            "timestep_spacing": SPACINGS,
            "prediction_type": PREDICTION_TYPES,
            "prev_timestep_rule": PREV_RULES,
            "b1_schedule": B1_SCHEDULES,
        }
        for name, allowed in choices.items():
            if getattr(c, name) not in allowed:
                raise _err(f"{name}={getattr(c, name)!r} is unknown; use one of {allowed}")
        if c.base_sampler == "ddpm_large" and c.eta != 0:
            raise _err(f"eta={c.eta} with base_sampler='ddpm_large': its variance is fixed (β̃); set eta=0")
        if c.base_sampler not in BASE_SAMPLERS:
            raise _err(f"base_sampler={c.base_sampler!r} is unknown; use one of {BASE_SAMPLERS}")
        if c.trained_betas is None and c.beta_schedule not in BETA_SCHEDULES:
            raise _err(f"beta_schedule={c.beta_schedule!r} is unknown; use one of {BETA_SCHEDULES}")
        for name in ("b1_min", "b1_max"):
            value = getattr(c, name)
            if not 0.0 <= value < 1.0:
                raise _err(f"{name}={value} must lie in [0, 1)")
        if c.b1_min > c.b1_max:
            raise _err(f"b1_min={c.b1_min} > b1_max={c.b1_max}; the λ schedule runs from b1_min to b1_max")
        if not 0.0 < c.b2 <= 1.0:
            raise _err(f"b2={c.b2} must lie in (0, 1]")
        if c.second_moment_eps < 0:
            raise _err(f"second_moment_eps={c.second_moment_eps} must be >= 0")
        if c.eta < 0:
            raise _err(f"eta={c.eta} must be >= 0 (0 = DDIM, 1 = DDPM fixed-small)")
        if c.num_train_timesteps < 1:
            raise _err(f"num_train_timesteps={c.num_train_timesteps} must be >= 1")

    @classmethod
    def from_preset(cls, name: str, base_config: dict | None = None) -> AdaptiveMomentumScheduler:
        """Build from a preset of `PRESETS` (``"official"``, ``"official-cifar10"``, ``"adam"``) over ``base_config``."""
        if name not in PRESETS:
            raise AdamSamplerError(f"from_preset: name={name!r} is unknown; use one of {sorted(PRESETS)}")
        config = dict(base_config or {})
        return cls.from_config({**config, **PRESETS[name]})

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("AdaptiveMomentumScheduler: %s", message)

    # -------------------------------------------------------------------------------------- timesteps

    def _reset_state(self) -> None:
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._shape: tuple[int, ...] | None = None
        self._lambdas: np.ndarray | None = None
        self._warned = {k for k in self._warned if k == "clip"}

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Build the timestep grid and reset all per-trajectory state (m, v, step/begin index, warnings)."""
        c = self.config
        T = c.num_train_timesteps
        if timesteps is not None:
            grid = np.asarray(timesteps, dtype=np.int64)
            if grid.ndim != 1 or len(grid) == 0 or np.any(np.diff(grid) >= 0) or grid[0] >= T or grid[-1] < 0:
                raise _err(f"timesteps={list(timesteps)} must be strictly descending within [0, {T})")
            num_inference_steps = len(grid)
        else:
            if num_inference_steps is None or not 1 <= int(num_inference_steps) <= T:
                raise _err(
                    f"num_inference_steps={num_inference_steps} must lie in [1, num_train_timesteps={T}]"
                )
            S = int(num_inference_steps)
            if c.timestep_spacing == "linspace":
                grid = np.linspace(0, T - 1, S).round()[::-1].copy().astype(np.int64)
            elif c.timestep_spacing == "leading":
                ratio = T // S
                grid = (np.arange(0, S) * ratio).round()[::-1].copy().astype(np.int64) + c.steps_offset
            elif c.timestep_spacing == "trailing":
                ratio = T / S
                grid = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
            else:  # quad: the DDIM repo's quadratic grid used by the official CIFAR-10 config
                grid = np.array([int(x) for x in np.linspace(0, np.sqrt(T * 0.8), S) ** 2], dtype=np.int64)[
                    ::-1
                ]
                grid = grid.copy()
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = torch.from_numpy(grid).to(device)
        grid_list = [int(t) for t in grid]
        self._grid = grid_list
        if c.prev_timestep_rule == "grid":
            self._prev_timesteps = [*grid_list[1:], -1]
            ddim_prev = [t - T // self.num_inference_steps for t in grid_list]
            differs = any(
                (p if p >= 0 else -1) != (q if q >= 0 else -1)
                for p, q in zip(self._prev_timesteps, ddim_prev, strict=True)
            )
            self._reset_state()
            if differs:
                self._warn_once("grid", "prev_timestep_rule='grid' differs from DDIM's t - T//S on this grid")
        else:
            self._prev_timesteps = [t - T // self.num_inference_steps for t in grid_list]
            self._reset_state()

    @property
    def step_index(self) -> int | None:
        """Index of the next step in `timesteps` (None before the first `step`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First executed index (img2img), set by `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the trajectory at ``timesteps[begin_index]`` (img2img); λ restarts there."""
        if self.num_inference_steps is None:
            raise _err("set_begin_index before set_timesteps; call set_timesteps first")
        if not 0 <= begin_index < len(self.timesteps):
            raise _err(f"begin_index={begin_index} must lie in [0, {len(self.timesteps)})")
        self._begin_index = int(begin_index)
        self._lambdas = None

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule (the second match when it repeats, as DPM-Solver)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        matches = (schedule.cpu() == t).nonzero()
        if len(matches) == 0:
            raise _err(f"timestep={t} is not in the schedule {schedule.tolist()}; call set_timesteps first")
        return int(matches[1 if len(matches) > 1 else 0].item())

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Identity (AMS, like DDIM, needs no input scaling)."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------------------------------- step

    def _lambda(self, k: int, t: int) -> float:
        """λ of step index k at timestep t: its position in the executed trajectory (from `begin_index`), or
        with ``legacy_lambda_index`` the official code's ``int((T − 1 − t) / (T / S))``."""
        c = self.config
        begin = self._begin_index or 0
        if self._lambdas is None:
            steps = self.num_inference_steps if c.legacy_lambda_index else len(self._grid) - begin
            self._lambdas = lambda_schedule(steps, c.b1_min, c.b1_max, c.b1_ascending, c.b1_schedule)
        if c.legacy_lambda_index:
            T, S = c.num_train_timesteps, self.num_inference_steps
            return float(self._lambdas[min(max(int((T - 1 - t) / (T / S)), 0), S - 1)])
        return float(self._lambdas[k - begin])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | None = None,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> AdaptiveMomentumSchedulerOutput | tuple:
        """One AMS step from t to the next grid timestep; `DDIMScheduler.step`'s arguments and outputs.

        ``model_output``/``sample`` are ``[B, C, H, W]``; ``eta=None`` uses ``config.eta``. The state (m, v) is
        float32 on the sample's device; the output has the sample's dtype.
        """
        c = self.config
        if self.num_inference_steps is None:
            raise _err("step() before set_timesteps(); call set_timesteps(num_inference_steps) first")
        eta = c.eta if eta is None else float(eta)
        if eta < 0:
            raise _err(f"eta={eta} must be >= 0")
        if eta != 0 and c.base_sampler == "ddpm_large":
            raise _err(f"eta={eta} with base_sampler='ddpm_large': its variance is fixed (β̃); pass eta=0")
        if model_output.shape != sample.shape:
            raise _err(
                f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}"
            )
        if generator is not None and variance_noise is not None:
            raise _err("both generator and variance_noise were given; pass at most one")
        if self._step_index is None:
            self._step_index = (
                self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
            )
        k = self._step_index
        if k >= len(self.timesteps):
            raise _err(
                f"step {k + 1} of a {len(self.timesteps)}-step trajectory: call set_timesteps before each trajectory"
            )
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        if t != self._grid[k]:
            raise _err(f"timestep={t} at step index {k}, expected {self._grid[k]} from the schedule")
        if self._shape is None:
            self._shape = tuple(sample.shape)
        elif tuple(sample.shape) != self._shape:
            raise _err(
                f"sample shape changed mid-trajectory at step index {k}: {tuple(sample.shape)} != {self._shape}; "
                "call set_timesteps before each trajectory"
            )
        # ---- base step: DDIMScheduler.step's (or DDPMScheduler.step's) exact sequence of tensor operations
        prev_timestep = self._prev_timesteps[k]
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        if c.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
            pred_epsilon = model_output
        elif c.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        else:  # v_prediction
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        if c.thresholding:
            pred_original_sample = DDIMScheduler._threshold_sample(self, pred_original_sample)
        elif c.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range)
        if c.base_sampler == "ddim":
            prev_sample, x0_weight, shifts = self._ddim_base(
                sample,
                pred_original_sample,
                pred_epsilon,
                alpha_prod_t,
                alpha_prod_t_prev,
                eta,
                use_clipped_model_output,
                generator,
                variance_noise,
                model_output,
            )
        else:
            prev_sample, x0_weight, shifts = self._ddpm_large_base(
                t,
                sample,
                pred_original_sample,
                alpha_prod_t,
                alpha_prod_t_prev,
                generator,
                variance_noise,
                model_output,
            )

        # ---- AMS correction: x_s = x_s^base + √ᾱ_s (m_k / v_k − d_k)
        if c.method == "none":
            self._check_finite(prev_sample, model_output, k, t)
        else:
            correction = self._ams_correction(
                k,
                t,
                sample,
                pred_original_sample,
                x0_weight,
                shifts,
                alpha_prod_t,
                alpha_prod_t_prev,
                model_output,
            )
            prev_sample = prev_sample + correction.to(prev_sample.dtype)
        self._step_index = k + 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return AdaptiveMomentumSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=pred_original_sample
        )

    def _ddim_base(
        self,
        sample,
        x0,
        pred_epsilon,
        alpha_prod_t,
        alpha_prod_t_prev,
        eta,
        use_clipped,
        generator,
        variance_noise,
        model_output,
    ):
        """`DDIMScheduler.step` from x̂₀ on: (x_s^base, weight of x̂₀ − x̄_t in d (1), [c₂·ε̂, σ·z])."""
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** (0.5)
        if use_clipped:
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * x0) / beta_prod_t ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * x0 + pred_sample_direction
        shifts = [pred_sample_direction]
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
            noise_term = std_dev_t * variance_noise
            prev_sample = prev_sample + noise_term
            shifts.append(noise_term)
        return prev_sample, 1.0, shifts

    def _ddpm_large_base(
        self, t, sample, x0, alpha_prod_t, alpha_prod_t_prev, generator, variance_noise, model_output
    ):
        """`DDPMScheduler(variance_type="fixed_large").step` from x̂₀ on: posterior mean μ(x_t, x̂₀) plus √β̃·z.

        Returns (x_s^base, β̃/(1 − ᾱ_t), [√β̃·z]): d = β̃/(1 − ᾱ_t)·(x̂₀ − x̄_t) + √β̃·z/√ᾱ_s, β̃ = 1 − ᾱ_t/ᾱ_s.
        No noise at t = 0, as `DDPMScheduler`. At the last step ᾱ_s = ``final_alpha_cumprod`` (spec §2);
        `DDPMScheduler` always uses 1 there, so the two agree when ``set_alpha_to_one=True`` (the default).
        """
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * x0 + current_sample_coeff * sample
        shifts = []
        if t > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
            noise_term = (current_beta_t**0.5) * variance_noise
            prev_sample = prev_sample + noise_term
            shifts.append(noise_term)
        return prev_sample, float(current_beta_t / beta_prod_t), shifts

    @staticmethod
    def _check_finite(state: torch.Tensor, model_output: torch.Tensor, k: int, t: int) -> None:
        """One reduction per step; on failure, name the culprit (model_output or the AMS state)."""
        if torch.isfinite(state.sum(dtype=torch.float32)):
            return
        if not torch.isfinite(model_output).all():
            raise _err(f"model_output has NaN or inf at step index {k} (timestep {t})")
        raise _err(f"the AMS state has NaN or inf at step index {k} (timestep {t})")

    def _ams_correction(
        self, k, t, sample, x0, x0_weight, shifts, alpha_prod_t, alpha_prod_t_prev, model_output
    ) -> torch.Tensor:
        """√ᾱ_s·(m_k/v_k − d_k) in float32, updating the state m (and v)."""
        c = self.config
        inv_sqrt_a_t = 1.0 / float(alpha_prod_t) ** 0.5
        sqrt_a_s = float(alpha_prod_t_prev) ** 0.5
        # d = w·(x̂₀ − x̄_t) + Σ shifts/√ᾱ_s: the exact increment of the base step in x̄ = x/√ᾱ (no cancellation)
        d = torch.add(x0.float(), sample.float(), alpha=-inv_sqrt_a_t)
        if x0_weight != 1.0:
            d.mul_(x0_weight)
        for shift in shifts:
            d.add_(shift.float(), alpha=1.0 / sqrt_a_s)
        if self._m is None or self._m.device != d.device:
            self._m = torch.zeros_like(d) if self._m is None else self._m.to(d.device)
            self._v = torch.ones_like(d) if self._v is None else self._v.to(d.device)
        update = d
        if c.method in ("momentum", "adam"):
            self._m = momentum_update(self._m, d, self._lambda(k, t), c.b1_form)
            update = self._m
        if c.method in ("rms", "adam"):
            if c.second_moment_norm == "channel" and d.shape[1] == 1:
                self._warn_once(
                    "channel1",
                    "second_moment_norm='channel' with C = 1: the adaptive term is inactive (v = 1 + kε); "
                    "use second_moment_norm='image'",
                )
            self._v = second_moment_update(self._v, d, c.b2, c.second_moment_eps, c.second_moment_norm)
            update = update / self._v
        self._check_finite(update, model_output, k, t)
        return (update - d).mul_(sqrt_a_s)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The trajectory state (m, v, step/begin index, shape) to pause and resume a trajectory."""
        return {
            "m": None if self._m is None else self._m.clone(),
            "v": None if self._v is None else self._v.clone(),
            "step_index": self._step_index,
            "begin_index": self._begin_index,
            "shape": self._shape,
            "num_inference_steps": self.num_inference_steps,
            "timesteps": self.timesteps.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict` (call `set_timesteps` with the same grid first)."""
        if self.num_inference_steps is None or not torch.equal(
            self.timesteps.cpu(), state["timesteps"].cpu()
        ):
            raise _err("load_state_dict: call set_timesteps with the grid the state was saved on first")
        self._m = None if state["m"] is None else state["m"].clone()
        self._v = None if state["v"] is None else state["v"].clone()
        self._step_index = state["step_index"]
        self._begin_index = state["begin_index"]
        self._shape = state["shape"]
        self._lambdas = None

    # ----------------------------------------------------------------------------------------- forward

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor):
        """q(x_t | x_0), as `DDPMScheduler.add_noise`."""
        return DDIMScheduler.add_noise(self, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor):
        """The v-prediction target, as `DDPMScheduler.get_velocity`."""
        return DDIMScheduler.get_velocity(self, sample, noise, timesteps)
