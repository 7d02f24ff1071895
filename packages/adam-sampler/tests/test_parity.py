"""Spec §5.1–2: bit-exact DDIM parity with b1_max = 0, and an identical first step for momentum."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from adam_sampler import AdaptiveMomentumScheduler


def _pair(**config):
    ddim = DDIMScheduler(**config)
    return ddim, AdaptiveMomentumScheduler.from_config(ddim.config)


@pytest.mark.parametrize("method", ["none", "momentum"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_bit_identical_to_ddim_b1max0(unet3, run_loop, method, eta, spacing):
    ddim, _ = _pair(clip_sample=False, timestep_spacing=spacing)
    ams = AdaptiveMomentumScheduler.from_config(ddim.config, method=method, b1_max=0.0)
    ref, _ = run_loop(ddim, unet3, 10, eta=eta, seed=3)
    out, _ = run_loop(ams, unet3, 10, eta=eta, seed=3)
    assert torch.equal(ref, out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_bit_identical_prediction_types_and_clipping(unet3, run_loop, prediction_type, clip_sample):
    ddim = DDIMScheduler(prediction_type=prediction_type, clip_sample=clip_sample)
    ams = AdaptiveMomentumScheduler.from_config(ddim.config, b1_max=0.0)
    ref, _ = run_loop(ddim, unet3, 10, eta=1.0, seed=4)
    out, _ = run_loop(ams, unet3, 10, eta=1.0, seed=4)
    assert torch.equal(ref, out)


def test_bit_identical_sd_schedule(unet3, run_loop):
    """SD's schedule (scaled-linear, steps_offset 1, set_alpha_to_one False)."""
    from difflab_core.tiny import sd_scheduler_config

    ddim, ams = _pair(**sd_scheduler_config())
    ams = AdaptiveMomentumScheduler.from_config(ams.config, b1_max=0.0)
    assert torch.equal(run_loop(ddim, unet3, 10)[0], run_loop(ams, unet3, 10)[0])


@pytest.mark.parametrize("b1_max", [0.1, 0.5])
def test_first_step_identical_later_steps_differ(unet3, run_loop, b1_max):
    ddim, _ = _pair(clip_sample=False)
    ams = AdaptiveMomentumScheduler.from_config(ddim.config, b1_max=b1_max)
    _, ref = run_loop(ddim, unet3, 10, seed=5)
    _, out = run_loop(ams, unet3, 10, seed=5)
    assert torch.equal(ref[0][3], out[0][3])
    assert not torch.equal(ref[-1][3], out[-1][3])


def test_output_type_matches_ddim_contract(unet3):
    ams = AdaptiveMomentumScheduler()
    ams.set_timesteps(4)
    x = torch.randn(1, 3, 8, 8)
    out = ams.step(torch.randn_like(x), ams.timesteps[0], x)
    assert set(out.keys()) == {"prev_sample", "pred_original_sample"}
    tup = ams.step(torch.randn_like(x), ams.timesteps[1], x, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2
