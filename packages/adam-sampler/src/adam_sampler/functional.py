"""Pure tensor functions of the Adaptive Momentum Sampler (spec §2 b–c), shared by the scheduler and tests.

All functions work on tensors of the sample's shape ``[B, C, H, W]`` (video: ``[B·F, C, H, W]``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["lambda_schedule", "momentum_coefficients", "momentum_update", "second_moment_update"]

B1_FORMS = ("sin2", "sincos")
B1_SCHEDULES = ("linear", "cosine", "constant")
SECOND_MOMENT_NORMS = ("channel", "image")


def lambda_schedule(
    num_steps: int, b1_min: float, b1_max: float, ascending: bool = True, shape: str = "linear"
) -> np.ndarray:
    """λ_k for k = 0 … S−1 (k = 0 is the noisiest executed step), float64 ``[S]``.

    ``"linear"`` (official): ``linspace(b1_min, b1_max, S)``; ``"cosine"``: b1_min + (b1_max − b1_min)·
    (1 − cos(πk/(S−1)))/2 (same ends, slower start); ``"constant"``: b1_max everywhere (no λ₀ = 0, so the first
    step is no longer DDIM's). ``ascending=False`` reverses the schedule.
    """
    if shape == "linear":
        lam = np.linspace(b1_min, b1_max, num_steps, dtype=np.float64)
    elif shape == "cosine":
        k = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
        lam = b1_min + (b1_max - b1_min) * (1.0 - np.cos(np.pi * k)) / 2.0
    elif shape == "constant":
        lam = np.full(num_steps, b1_max, dtype=np.float64)
    else:
        raise ValueError(f"b1_schedule={shape!r}: use one of {B1_SCHEDULES}")
    return lam if ascending else lam[::-1].copy()


def momentum_coefficients(lam: float, form: str = "sin2") -> tuple[float, float]:
    """(a, b) with m_k = a·m_{k−1} + b·d_k.

    ``"sin2"`` (official ``b1_m = 2``): a = β₁ = sin²(λπ/2), b = 1 − β₁.
    ``"sincos"`` (official ``b1_m = 1``, variance preserving): a = sin(λπ/2), b = cos(λπ/2).
    λ = 0 gives exactly (0.0, 1.0), so m₁ = d₁ in floating point.
    """
    if form == "sin2":
        beta1 = math.sin(lam * math.pi / 2) ** 2
        return beta1, 1.0 - beta1
    if form == "sincos":
        return math.sin(lam * math.pi / 2), math.cos(lam * math.pi / 2)
    raise ValueError(f"b1_form={form!r}: use one of {B1_FORMS}")


def momentum_update(m: torch.Tensor, d: torch.Tensor, lam: float, form: str = "sin2") -> torch.Tensor:
    """First moment (spec §2 b): the EMA of increments, ``m_k = a·m_{k−1} + b·d_k``.

    At λ = 0 (a = 0, b = 1) it returns ``d`` itself: exactly m = d, with no copy.
    """
    a, b = momentum_coefficients(lam, form)
    if a == 0.0 and b == 1.0:
        return d
    return torch.add(m * a, d, alpha=b)


def second_moment_update(
    v: torch.Tensor, d: torch.Tensor, b2: float = 0.999, eps: float = 1e-8, norm: str = "channel"
) -> torch.Tensor:
    """Second moment (spec §2 c): ``v_k = sqrt(b2·v_{k−1} + (1 − b2)·n_k²) + eps``, v₀ = 1.

    n_k = d_k / max(‖d_k‖₂, 1e-12); the norm runs over dim 1 per pixel (``"channel"``, the official code's
    ``F.normalize(dim=1)``; inactive for C = 1) or over (C, H, W) per sample (``"image"``).
    """
    if norm == "channel":
        length = d.norm(dim=1, keepdim=True)
    elif norm == "image":
        length = d.flatten(1).norm(dim=1).reshape(-1, *([1] * (d.dim() - 1)))
    else:
        raise ValueError(f"second_moment_norm={norm!r}: use one of {SECOND_MOMENT_NORMS}")
    n = d / length.clamp_min(1e-12)
    return torch.addcmul(v * b2, n, n, value=1.0 - b2).sqrt_().add_(eps)
