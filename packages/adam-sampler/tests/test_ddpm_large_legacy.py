"""Spec §2 a, §5.3–4: the ``ddpm_large`` base against DDPMScheduler and the literal closed form; the legacy λ
index on the quad grid; the λ schedule shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from adam_sampler import AdamSamplerError, AdaptiveMomentumScheduler
from adam_sampler.functional import lambda_schedule


@torch.no_grad()
def _run(sched, unet, steps, seed=0, noises=None):
    """x_T and every z from one generator (or ``noises`` as variance_noise); returns (x_0, [(x_t, ε̂, t, x_s)])."""
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g)
    trace = []
    for i, t in enumerate(sched.timesteps):
        out = unet(x, t).sample
        kw = {"generator": g} if noises is None else {"variance_noise": noises[i]}
        x_new = sched.step(out, t, x, **kw).prev_sample
        trace.append((x, out, int(t), x_new))
        x = x_new
    return x, trace


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_large_b1max0_equals_ddpm_fixed_large(unet3, spacing):
    ddpm = DDPMScheduler(variance_type="fixed_large", clip_sample=False, timestep_spacing=spacing)
    ams = AdaptiveMomentumScheduler.from_config(ddpm.config, base_sampler="ddpm_large", b1_max=0.0)
    ref, _ = _run(ddpm, unet3, 10, seed=7)
    out, _ = _run(ams, unet3, 10, seed=7)
    assert torch.equal(ref, out)


def test_ddpm_large_matches_literal_closed_form(unet3):
    """d = p₁ε̂ + p₂z with p₁ = −√(1/ᾱ_t − 1)·β̃/(1 − ᾱ_t), p₂ = √β̃/√ᾱ_s (0 at t = 0), sin² momentum."""
    steps, b1_max = 8, 0.3
    sched = AdaptiveMomentumScheduler(base_sampler="ddpm_large", b1_max=b1_max)
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(steps)]
    _, trace = _run(sched, unet3, steps, seed=4, noises=noises)
    ac = sched.alphas_cumprod.double()
    grid = [int(t) for t in sched.timesteps]
    m = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    for k, (x, e, t, x_s) in enumerate(trace):
        a_t = ac[t]
        a_s = ac[grid[k + 1]] if k + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - a_t / a_s
        p1 = -torch.sqrt(1 / a_t - 1) * beta / (1 - a_t)
        p2 = beta.sqrt() / a_s.sqrt() if t > 0 else 0.0
        d = p1 * e.double() + p2 * noises[k].double()
        b1 = math.sin(k / (steps - 1) * b1_max * math.pi / 2) ** 2
        m = b1 * m + (1 - b1) * d
        torch.testing.assert_close(
            x_s.double(), a_s.sqrt() * (x.double() / a_t.sqrt() + m), rtol=1e-5, atol=1e-5
        )


def test_ddpm_large_rejects_eta():
    with pytest.raises(AdamSamplerError, match="eta"):
        AdaptiveMomentumScheduler(base_sampler="ddpm_large", eta=1.0)
    sched = AdaptiveMomentumScheduler(base_sampler="ddpm_large")
    sched.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(AdamSamplerError, match=r"eta=1\.0"):
        sched.step(x, sched.timesteps[0], x, eta=1.0)
    assert sched.step(x, sched.timesteps[0], x, eta=0.0).prev_sample.shape == x.shape  # pipelines pass eta=0


def _first_step_shift(sched, x, eps):
    """x_s − x_s^DDIM on the first step, and that step's d (from a b1_max = 0 twin)."""
    twin = AdaptiveMomentumScheduler.from_config(sched.config, b1_max=0.0, legacy_lambda_index=False)
    outs = []
    for s in (twin, sched):
        s.set_timesteps(10)
        outs.append(s.step(eps, s.timesteps[0], x).prev_sample)
    t, s_ = int(twin.timesteps[0]), int(twin.timesteps[1])
    a_t, a_s = twin.alphas_cumprod[t], twin.alphas_cumprod[s_]
    d = outs[0] / a_s.sqrt() - x / a_t.sqrt()
    return outs[1] - outs[0], a_s.sqrt() * d


def test_legacy_lambda_index_on_quad_grid():
    """The official int((T − 1 − t)/(T/S)) index is misaligned on the quad grid: the first step (t = 800 for S = 10)
    gets λ[1], not λ[0]; the default (position in the trajectory) gives λ₀ = 0, i.e. DDIM's first step."""
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    legacy = AdaptiveMomentumScheduler.from_preset("official-cifar10")
    assert legacy.config.legacy_lambda_index is True and legacy.config.timestep_spacing == "quad"
    legacy = AdaptiveMomentumScheduler.from_config(legacy.config, b1_max=0.5, eta=0.0)
    legacy.set_timesteps(10)
    assert int(legacy.timesteps[0]) == 800
    shift, scaled_d = _first_step_shift(legacy, x, eps)
    beta1 = math.sin(np.linspace(0, 0.5, 10)[int((999 - 800) / 100)] * math.pi / 2) ** 2
    torch.testing.assert_close(shift, -beta1 * scaled_d, rtol=1e-4, atol=1e-5)
    aligned = AdaptiveMomentumScheduler.from_config(legacy.config, legacy_lambda_index=False)
    assert torch.equal(_first_step_shift(aligned, x, eps)[0], torch.zeros_like(x))


def test_lambda_schedule_shapes():
    lin = lambda_schedule(5, 0.1, 0.5)
    cos = lambda_schedule(5, 0.1, 0.5, shape="cosine")
    assert cos[0] == lin[0] == 0.1 and cos[-1] == pytest.approx(0.5) and cos[2] == pytest.approx(lin[2])
    assert cos[1] < lin[1]
    assert lambda_schedule(3, 0.0, 0.3, shape="constant").tolist() == [0.3, 0.3, 0.3]
    with pytest.raises(AdamSamplerError, match="b1_schedule"):
        AdaptiveMomentumScheduler(b1_schedule="step")
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    shift, scaled_d = _first_step_shift(AdaptiveMomentumScheduler(b1_max=0.5, b1_schedule="constant"), x, eps)
    torch.testing.assert_close(shift, -0.5 * scaled_d, rtol=1e-4, atol=1e-5)  # sin²(π/4) = 0.5
