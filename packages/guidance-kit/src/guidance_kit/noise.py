"""Noise-level arithmetic shared by the guidance methods: ᾱ_t, ε ↔ model-output conversion, x̂₀.

x_t = √ᾱ·x₀ + √(1−ᾱ)·ε; v = √ᾱ·ε − √(1−ᾱ)·x₀. Per-sample scalars are broadcast over [B, C, H, W].
"""

from __future__ import annotations

import torch

from .errors import GuidanceKitError

__all__ = ["NoiseLevels", "alpha_bar", "mean_shift_factor", "prediction_type"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise GuidanceKitError(
            f"scheduler prediction_type={kind!r} is not supported; use one of {PREDICTION_TYPES}"
        )
    return kind


def alpha_bar(scheduler, timestep) -> float:
    """ᾱ_t from ``scheduler.alphas_cumprod`` (or 1/(1+σ²) for sigma schedulers without it)."""
    t = float(torch.as_tensor(timestep).reshape(-1)[0])
    acp = getattr(scheduler, "alphas_cumprod", None)
    if acp is not None:
        return float(acp[round(t)].double())
    sigmas, timesteps = getattr(scheduler, "sigmas", None), getattr(scheduler, "timesteps", None)
    if sigmas is None or timesteps is None:
        raise GuidanceKitError(f"{type(scheduler).__name__}: no alphas_cumprod or sigmas to read ᾱ_t from")
    hits = (torch.as_tensor(timesteps).double() == t).nonzero()
    if not len(hits):
        raise GuidanceKitError(f"timestep {t} is not in the scheduler's timesteps")
    sigma = float(sigmas[int(hits[0])])
    return 1.0 / (1.0 + sigma**2)


def mean_shift_factor(call, abar: float) -> float:
    """δε per unit of Σ_t·∇ for a DDPM mean shift μ + Σ_t·∇: −√α_t·√(1−ᾱ_t)/β_t·Σ_t, with α_t, β_t and the
    posterior variance Σ_t taken between ``call``'s sampled timestep and the next one (exact for
    `DDPMScheduler` with fixed small variance; 0 where β_t ≤ 0)."""
    ts = [int(v) for v in call.scheduler.timesteps]
    pos = len(ts) - call.n + call.j
    abar_prev = alpha_bar(call.scheduler, ts[pos + 1]) if pos + 1 < len(ts) else 1.0
    alpha = abar / abar_prev
    beta = 1 - alpha
    if beta <= 0:
        return 0.0
    variance = (1 - abar_prev) / (1 - abar) * beta
    return -(alpha**0.5) * (1 - abar) ** 0.5 / beta * variance


class NoiseLevels:
    """ᾱ at one step and the conversions between the model's prediction and ε (``kind``: prediction type)."""

    def __init__(self, abar: float, kind: str = "epsilon") -> None:
        self.abar = abar
        self.kind = kind
        self.a = abar**0.5
        self.s = (1.0 - abar) ** 0.5

    def to_eps(self, pred: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        if self.kind == "epsilon":
            return pred
        if self.kind == "v_prediction":
            return self.a * pred + self.s * x_t
        return (x_t - self.a * pred) / self.s

    def from_eps(self, eps: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        if self.kind == "epsilon":
            return eps
        if self.kind == "v_prediction":
            return (eps - self.s * x_t) / self.a
        return (x_t - self.s * eps) / self.a

    def delta_from_eps(self, delta_eps: torch.Tensor) -> torch.Tensor:
        """The change of the model output for a change δε at fixed x_t."""
        if self.kind == "epsilon":
            return delta_eps
        if self.kind == "v_prediction":
            return delta_eps / self.a
        return -self.s / self.a * delta_eps

    def x0(self, pred: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """x̂₀ from the model's prediction: (x_t − √(1−ᾱ)·ε)/√ᾱ, written per prediction type so that it stays
        well conditioned at ᾱ → 0 for v-prediction (x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v)."""
        if self.kind == "epsilon":
            return (x_t - self.s * pred) / self.a
        if self.kind == "v_prediction":
            return self.a * x_t - self.s * pred
        return pred
