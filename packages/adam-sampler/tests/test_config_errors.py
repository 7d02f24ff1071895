"""Spec §5.6 and §7: configs (from_config, save/load, presets) and errors naming the parameter."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
)

from adam_sampler import PRESETS, AdamSamplerError, AdaptiveMomentumScheduler


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, PNDMScheduler, DPMSolverMultistepScheduler])
def test_from_config_of_family(cls):
    base = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ams = AdaptiveMomentumScheduler.from_config(base.config)
    assert ams.config.beta_schedule == "scaled_linear"
    assert ams.config.method == "momentum" and ams.config.b1_max == 0.1 and ams.config.b2 == 0.999
    torch.testing.assert_close(ams.alphas_cumprod, base.alphas_cumprod)


def test_save_pretrained_round_trip(tmp_path):
    ams = AdaptiveMomentumScheduler(method="adam", b1_max=0.3, b2=0.9, timestep_spacing="trailing")
    ams.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "AdaptiveMomentumScheduler" and saved["b2"] == 0.9
    again = AdaptiveMomentumScheduler.from_pretrained(tmp_path)

    def public(c):
        return {k: v for k, v in dict(c).items() if not k.startswith("_")}

    assert public(again.config) == public(ams.config)


def test_ddim_from_ams_config_and_compatibles():
    ams = AdaptiveMomentumScheduler(method="adam", timestep_spacing="trailing")
    ddim = DDIMScheduler.from_config(ams.config)
    assert ddim.config.timestep_spacing == "trailing"
    assert DDIMScheduler in ams.compatibles and len(ams.compatibles) > 5
    assert AdaptiveMomentumScheduler.order == 1 and ams.init_noise_sigma == 1.0


def test_presets():
    assert set(PRESETS) == {"official", "official-cifar10", "adam"}
    off = AdaptiveMomentumScheduler.from_preset("official", DDPMScheduler().config)
    assert off.config.eta == 1.0 and off.config.clip_sample is False and off.config.method == "momentum"
    quad = AdaptiveMomentumScheduler.from_preset("official-cifar10")
    quad.set_timesteps(10)
    grid = quad.timesteps.tolist()
    assert grid[0] in (799, 800) and grid[-1] == 0 and grid[-2] == int((800**0.5 / 9) ** 2)
    assert AdaptiveMomentumScheduler.from_preset("adam").config.method == "adam"
    with pytest.raises(AdamSamplerError, match="name="):
        AdaptiveMomentumScheduler.from_preset("nope")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"b1_max": 1.0}, "b1_max"),
        ({"b1_min": -0.1}, "b1_min"),
        ({"b1_min": 0.3, "b1_max": 0.1}, "b1_min"),
        ({"b2": 0.0}, "b2"),
        ({"b2": 1.5}, "b2"),
        ({"method": "sgd"}, "method"),
        ({"b1_form": "cos"}, "b1_form"),
        ({"second_moment_norm": "pixel"}, "second_moment_norm"),
        ({"base_sampler": "euler"}, "base_sampler"),
        ({"base_sampler": "ddpm_large", "eta": 1.0}, "eta"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"eta": -1.0}, "eta"),
    ],
)
def test_bad_config_raises_naming_parameter(kwargs, param):
    with pytest.raises(AdamSamplerError, match=param):
        AdaptiveMomentumScheduler(**kwargs)
    assert issubclass(AdamSamplerError, ValueError)


def test_step_errors():
    sched = AdaptiveMomentumScheduler()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(AdamSamplerError, match="set_timesteps"):
        sched.step(x, 999, x)
    for n in (0, 1001):
        with pytest.raises(AdamSamplerError, match="num_inference_steps"):
            sched.set_timesteps(n)
    sched.set_timesteps(4)
    with pytest.raises(AdamSamplerError, match="timestep=5"):
        sched.step(x, 5, x)
    with pytest.raises(AdamSamplerError, match="model_output shape"):
        sched.step(torch.randn(1, 3, 2, 2), sched.timesteps[0], x)
    with pytest.raises(AdamSamplerError, match="generator and variance_noise"):
        sched.step(x, sched.timesteps[0], x, generator=torch.Generator(), variance_noise=x)
    with pytest.raises(AdamSamplerError, match=r"eta=-0\.5"):
        sched.step(x, sched.timesteps[0], x, eta=-0.5)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AdamSamplerError, match="step index 0"):
        sched.step(bad, sched.timesteps[0], x)


def test_clip_sample_inherited_warns(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="adam_sampler"):
        ams = AdaptiveMomentumScheduler.from_config(DDPMScheduler(clip_sample=True).config)
    assert ams.config.clip_sample is True
    assert any("does not clip" in r.getMessage() for r in caplog.records)
