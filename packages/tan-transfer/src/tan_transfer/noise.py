"""Timesteps and training noise of DPMs-ANT: antithetic t, standardisation, adversarial noise [paper Eq. 6–7],
and the similarity-guidance weight s_t [paper Eq. 8 / code]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import TanTransferError

__all__ = ["adversarial_noise", "antithetic_timesteps", "guidance_weight", "standardize"]

STD_FLOOR = 1e-12


def antithetic_timesteps(b: int, T: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``b`` timesteps in [0, T): draw ``b // 2 + 1`` uniformly, append ``T - 1 - t`` for each, keep ``b`` [code].

    Pairs ``(t[i], t[i + b // 2 + 1])`` sum to ``T - 1``.
    """
    if b < 1 or T < 1:
        raise TanTransferError("antithetic_timesteps", f"need b >= 1 and T >= 1, got b={b}, T={T}")
    half = torch.randint(0, T, (b // 2 + 1,), generator=generator)
    t = torch.cat([half, T - 1 - half])[:b]
    return t.to(device) if device is not None else t


def standardize(eps: Tensor) -> Tensor:
    """Re-standardise each sample over (C, H, W) to mean 0, std 1 (unbiased std, floored at 1e-12)."""
    flat = eps.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True).clamp_min(STD_FLOOR)
    return ((flat - mean) / std).view_as(eps)


def _alphabar(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    ab = alphas_cumprod.to(device=like.device, dtype=torch.float32)[t.to(like.device).long()]
    return ab.view(-1, *([1] * (like.ndim - 1)))


def _predict(model: Callable, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    out = model(x_t, t) if cond is None else model(x_t, t, cond)
    return out.sample if hasattr(out, "sample") else out


def adversarial_noise(
    model: Callable,
    x0: Tensor,
    t: Tensor,
    alphas_cumprod: Tensor,
    *,
    steps: int = 10,
    omega: float = 0.02,
    ref_batch: int = 5,
    resample_t: bool = False,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    norm: str = "standard",
) -> Tensor:
    """ε* after ``steps`` ascent steps ε ← Norm(ε + ω/ref_batch · ∇_ε ℓ(ε)) from ε⁰ ~ N(0, I) [paper Eq. 7].

    ℓ(ε) = ‖ε − ε_θ,ψ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖² per sample; the gradient flows through both terms. No radius,
    no sign step; t stays fixed unless ``resample_t`` (the official code re-draws it each step). Uses
    ``torch.autograd.grad`` so no parameter ``.grad`` is touched. ``x0`` [B, C, H, W]; returns fp32 ε* like ``x0``.
    ``model(x_t, t[, cond])`` returns the ε prediction. ``norm``: ``"standard"`` (per-sample mean 0, std 1
    [paper]) or ``"match_initial"`` (per-sample mean and std of ε⁰ [ours], see `TANConfig.ascent_norm`).
    """
    if steps < 0:
        raise TanTransferError("steps", f"must be >= 0, got {steps}")
    if ref_batch < 1:
        raise TanTransferError("ref_batch", f"must be >= 1, got {ref_batch}")
    if norm not in ("standard", "match_initial"):
        raise TanTransferError("norm", f"{norm!r}: use 'standard' or 'match_initial'")
    x0 = x0.detach().float()
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    flat0 = eps.flatten(1)
    mean0 = flat0.mean(dim=1).view(-1, *([1] * (eps.ndim - 1)))
    std0 = flat0.std(dim=1).view_as(mean0)
    T = len(alphas_cumprod)
    for _ in range(steps):
        if resample_t:
            t = torch.randint(0, T, (x0.shape[0],), generator=generator).to(x0.device)
        with torch.enable_grad():
            eps = eps.detach().requires_grad_(True)
            ab = _alphabar(alphas_cumprod, t, x0)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            pred = _predict(model, x_t, t, cond).float()
            loss = (eps - pred).pow(2).flatten(1).sum(dim=1)
            (grad,) = torch.autograd.grad(loss.sum(), eps)
        eps = standardize(eps.detach() + omega / ref_batch * grad)
        if norm == "match_initial":
            eps = eps * std0 + mean0
    return eps.detach()


def guidance_weight(t: Tensor, alphas_cumprod: Tensor, kind: str = "one_minus_alphabar") -> Tensor:
    """s_t per timestep ``[B]``: ``1 − ᾱ_t`` [code] or σ̂_t² with σ̂_t = (1 − ᾱ_{t−1})·√(α_t / (1 − ᾱ_t)) [paper]."""
    ac = alphas_cumprod.to(torch.float64)
    t = t.long().cpu()
    if kind == "one_minus_alphabar":
        w = 1 - ac[t]
    elif kind == "paper":
        prev = torch.where(t > 0, ac[(t - 1).clamp_min(0)], torch.ones_like(ac[t]))
        alpha = ac[t] / prev
        w = ((1 - prev) * (alpha / (1 - ac[t])).sqrt()) ** 2
    else:
        raise TanTransferError("s_schedule", f"{kind!r}: use 'one_minus_alphabar' or 'paper'")
    return w.float()
