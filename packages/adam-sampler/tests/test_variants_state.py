"""Spec §5.4–5: variants (C = 1, b2 = 1, sincos, descending λ) and per-trajectory state."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from adam_sampler import AdamSamplerError, AdaptiveMomentumScheduler
from adam_sampler.functional import lambda_schedule, momentum_coefficients, second_moment_update


def test_adam_equals_momentum_for_one_channel_and_warns(unet1, run_loop, caplog):
    mom = AdaptiveMomentumScheduler(b1_max=0.3)
    adam = AdaptiveMomentumScheduler(method="adam", b1_max=0.3)
    with caplog.at_level(logging.WARNING, logger="adam_sampler"):
        out_adam, _ = run_loop(adam, unet1, 6)
    out_mom, _ = run_loop(mom, unet1, 6)
    torch.testing.assert_close(out_adam, out_mom, rtol=1e-6, atol=1e-6)
    warnings = [r for r in caplog.records if "C = 1" in r.getMessage()]
    assert len(warnings) == 1


def test_image_norm_makes_adam_active_for_one_channel(unet1, run_loop):
    mom = AdaptiveMomentumScheduler(b1_max=0.3)
    adam = AdaptiveMomentumScheduler(method="adam", b1_max=0.3, b2=0.9, second_moment_norm="image")
    assert not torch.allclose(run_loop(adam, unet1, 6)[0], run_loop(mom, unet1, 6)[0])


def test_b2_one_keeps_v_at_one_plus_k_eps():
    """b2 = 1 ignores d: v_k = √v_{k−1} + ε stays within [1, 1 + kε] (the √ sits inside the recursion)."""
    v = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    for _ in range(5):
        v = second_moment_update(v, 100 * torch.randn(2, 3, 4, 4, dtype=torch.float64), b2=1.0, eps=1e-8)
    assert torch.all(v > 1.0) and torch.all(v <= 1.0 + 5e-8)
    assert torch.all(v == v.flatten()[0])


def test_sincos_coefficients_square_sum_to_one():
    for lam in np.linspace(0, 0.99, 7):
        a, b = momentum_coefficients(float(lam), "sincos")
        assert a * a + b * b == pytest.approx(1.0)
    assert momentum_coefficients(0.0, "sin2") == (0.0, 1.0)
    assert momentum_coefficients(0.1, "sin2")[0] == pytest.approx(0.0245, abs=1e-4)


def test_descending_lambda_shrinks_first_step():
    """λ₀ = b1_max: m₁ = (1 − β₁,max)·d₁, so x_s − x_s^ddim = −√ᾱ_s β₁,max d₁ on the first step."""
    ref = AdaptiveMomentumScheduler(b1_max=0.0)
    desc = AdaptiveMomentumScheduler(b1_max=0.5, b1_ascending=False)
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    outs = []
    for s in (ref, desc):
        s.set_timesteps(10)
        outs.append(s.step(eps, s.timesteps[0], x).prev_sample)
    t, s_ = int(ref.timesteps[0]), int(ref.timesteps[1])
    a_t, a_s = ref.alphas_cumprod[t], ref.alphas_cumprod[s_]
    d = outs[0] / a_s.sqrt() - x / a_t.sqrt()
    beta1 = math.sin(0.5 * math.pi / 2) ** 2
    torch.testing.assert_close(outs[1], outs[0] - a_s.sqrt() * beta1 * d, rtol=1e-4, atol=1e-5)
    assert lambda_schedule(4, 0.0, 0.3, ascending=False).tolist() == pytest.approx([0.3, 0.2, 0.1, 0.0])


def test_two_runs_separated_by_set_timesteps_are_identical(unet3, run_loop):
    sched = AdaptiveMomentumScheduler(method="adam", b1_max=0.3)
    first, _ = run_loop(sched, unet3, 6, eta=1.0, seed=1)
    second, _ = run_loop(sched, unet3, 6, eta=1.0, seed=1)
    assert torch.equal(first, second)


def test_no_reset_after_finished_trajectory_raises(unet3, run_loop):
    sched = AdaptiveMomentumScheduler()
    x, _ = run_loop(sched, unet3, 3)
    with pytest.raises(AdamSamplerError, match="set_timesteps before each trajectory"):
        sched.step(torch.zeros_like(x), sched.timesteps[0], x)


def test_batch_change_mid_trajectory_raises():
    sched = AdaptiveMomentumScheduler()
    sched.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4)
    x = sched.step(torch.randn_like(x), sched.timesteps[0], x).prev_sample
    with pytest.raises(AdamSamplerError, match="shape changed"):
        sched.step(torch.randn(3, 3, 4, 4), sched.timesteps[1], torch.randn(3, 3, 4, 4))


def test_state_dict_round_trip_resumes_exactly(unet3):
    sched = AdaptiveMomentumScheduler(method="adam", b1_max=0.5)
    sched.set_timesteps(6)
    x0 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def go(s, x, ts):
        for t in ts:
            x = s.step(unet3(x, t).sample, t, x).prev_sample
        return x

    straight = go(sched, x0, sched.timesteps)
    sched.set_timesteps(6)
    mid = go(sched, x0, sched.timesteps[:3])
    state = sched.state_dict()
    other = AdaptiveMomentumScheduler(method="adam", b1_max=0.5)
    other.set_timesteps(6)
    other.load_state_dict(state)
    assert other.step_index == 3
    assert torch.equal(go(other, mid, other.timesteps[3:]), straight)


def test_begin_index_restarts_lambda_at_b1_min():
    """img2img: with set_begin_index(3) the first executed step has λ = b1_min, i.e. equals DDIM's step."""
    ref = AdaptiveMomentumScheduler(b1_max=0.0)
    ams = AdaptiveMomentumScheduler(b1_max=0.5)
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    outs = []
    for s in (ref, ams):
        s.set_timesteps(10)
        s.set_begin_index(3)
        outs.append(s.step(eps, s.timesteps[3], x).prev_sample)
    assert ams.begin_index == 3 and ams.step_index == 4
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_state_float32_output_dtype(dtype):
    sched = AdaptiveMomentumScheduler(method="adam", b1_max=0.3)
    sched.set_timesteps(4)
    x = torch.randn(2, 4, 4, 4, dtype=dtype)
    for t in sched.timesteps:
        x = sched.step(torch.randn_like(x) * 0.1, t, x, eta=1.0).prev_sample
        assert x.dtype == dtype
    state = sched.state_dict()
    assert state["m"].dtype == torch.float32 and state["v"].dtype == torch.float32
    assert torch.isfinite(x.float()).all()


@pytest.mark.gpu
def test_state_follows_cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sched = AdaptiveMomentumScheduler(method="adam")
    sched.set_timesteps(3)
    x = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
    for t in sched.timesteps:
        x = sched.step(torch.randn_like(x), t, x).prev_sample
    assert x.device.type == "cuda" and sched.state_dict()["m"].device.type == "cuda"
