"""Spec §5.3: the scheduler against an independent, literal implementation of x_s = √ᾱ_s (x̄_t + m/v)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adam_sampler import AdaptiveMomentumScheduler


def literal_ams(sched, trace, eta, noises, method, b1_max, b2=0.999, eps=1e-8):
    """The official code's form in float64, one step at a time from the recorded (x_t, ε̂) of each step:
    closed-form p₁, p₂; d = p₁ε̂ + p₂z; sin² momentum; ``F.normalize(dim=1)`` second moment. Returns each x_s."""
    ac = sched.alphas_cumprod.double()
    grid = [int(t) for t in sched.timesteps]
    steps = len(grid)
    lams = torch.linspace(0.0, b1_max, steps, dtype=torch.float64)
    m = torch.zeros_like(trace[0][0], dtype=torch.float64)
    v = torch.ones_like(m)
    outs = []
    for k, (x, e, t, _) in enumerate(trace):
        s = grid[k + 1] if k + 1 < steps else -1
        a_t = ac[t]
        a_s = ac[s] if s >= 0 else torch.tensor(1.0, dtype=torch.float64)
        sigma = eta * torch.sqrt((1 - a_t / a_s) * (1 - a_s) / (1 - a_t))
        c2 = torch.sqrt(1 - a_s - sigma**2)
        p1 = c2 / a_s.sqrt() - torch.sqrt((1 - a_t) / a_t)
        p2 = sigma / a_s.sqrt()
        d = p1 * e.double() + p2 * noises[k].double()
        beta1 = math.sin(float(lams[k]) * math.pi / 2) ** 2
        m = beta1 * m + (1 - beta1) * d if method in ("momentum", "adam") else d
        if method in ("rms", "adam"):
            n = F.normalize(d, dim=1)
            v = torch.sqrt(b2 * v + (1 - b2) * n**2) + eps
        upd = m / v if method in ("rms", "adam") else m
        outs.append(a_s.sqrt() * (x.double() / a_t.sqrt() + upd))
    return outs


@pytest.mark.parametrize("method", ["momentum", "rms", "adam"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_matches_literal_official_form(unet3, run_loop, method, eta):
    steps = 8
    sched = AdaptiveMomentumScheduler(method=method, b1_max=0.3, b2=0.9)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(11)
    noises = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(steps)]
    _, trace = run_loop(sched, unet3, steps, eta=eta, seed=12, noises=noises)
    refs = literal_ams(sched, trace, eta, noises, method, 0.3, b2=0.9)
    for (_, _, _, x_s), ref in zip(trace, refs, strict=True):
        torch.testing.assert_close(x_s.double(), ref, rtol=1e-5, atol=1e-5)


def test_hand_computed_three_steps_constant_model():
    """ε̂ ≡ 0.5 on a 3-step leading grid (t = 666, 333, 0), b1_max = 0.5, η = 0: scalar arithmetic by hand."""
    sched = AdaptiveMomentumScheduler(b1_max=0.5)
    sched.set_timesteps(3)
    assert sched.timesteps.tolist() == [666, 333, 0]
    ac = [float(sched.alphas_cumprod[t]) for t in (666, 333, 0)] + [1.0]
    x_hand, m = 1.0, 0.0
    for k, lam in enumerate([0.0, 0.25, 0.5]):
        a_t, a_s = ac[k], ac[k + 1]
        d = (math.sqrt(1 - a_s) / math.sqrt(a_s) - math.sqrt((1 - a_t) / a_t)) * 0.5
        b1 = math.sin(lam * math.pi / 2) ** 2
        m = b1 * m + (1 - b1) * d
        x_hand = math.sqrt(a_s) * (x_hand / math.sqrt(a_t) + m)
    x = torch.ones(1, 2, 2, 2)
    for t in sched.timesteps:
        x = sched.step(torch.full_like(x, 0.5), t, x).prev_sample
    torch.testing.assert_close(x, torch.full_like(x, x_hand), rtol=1e-5, atol=1e-6)
