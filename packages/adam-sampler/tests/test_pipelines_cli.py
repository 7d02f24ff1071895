"""Spec §5.6–7: AMS inside DDPMPipeline, StableDiffusionPipeline and TextToVideoSDPipeline; save/load; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from typer.testing import CliRunner

from adam_sampler import AdamSamplerError, AdaptiveMomentumScheduler
from adam_sampler.cli import app
from adam_sampler.pipelines import load_pipeline, make_pipeline, save_pipeline


@pytest.fixture(scope="module")
def ddpm_pipe():
    from difflab_core.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(8, 3)
    pipe.scheduler = AdaptiveMomentumScheduler.from_config(pipe.scheduler.config, b1_max=0.3)
    return pipe


@pytest.fixture(scope="module")
def sd_pipe():
    from difflab_core.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline("sd1")


def test_ddpm_pipeline_shape_and_determinism(ddpm_pipe):
    a = ddpm_pipe(
        batch_size=2, num_inference_steps=5, output_type="np", generator=torch.manual_seed(0)
    ).images
    b = ddpm_pipe(
        batch_size=2, num_inference_steps=5, output_type="np", generator=torch.manual_seed(0)
    ).images
    assert a.shape == (2, 8, 8, 3) and np.array_equal(a, b)


def _sd(pipe, scheduler, eta=0.0):
    pipe.scheduler = scheduler
    out = pipe(
        "a digit", num_inference_steps=3, generator=torch.manual_seed(0), output_type="latent", eta=eta
    )
    return out.images


def test_stable_diffusion_parity_and_eta(sd_pipe):
    ddim = DDIMScheduler.from_config(sd_pipe.scheduler.config)
    ref = _sd(sd_pipe, ddim)
    same = _sd(sd_pipe, AdaptiveMomentumScheduler.from_config(ddim.config, b1_max=0.0))
    assert (ref - same).abs().max().item() == 0.0
    moved = _sd(sd_pipe, AdaptiveMomentumScheduler.from_config(ddim.config, b1_max=0.3))
    assert not torch.equal(ref, moved)
    ams = AdaptiveMomentumScheduler.from_config(ddim.config)
    assert not torch.equal(_sd(sd_pipe, ams, eta=1.0), _sd(sd_pipe, ams, eta=0.0))
    sd_pipe.scheduler = ddim


def test_video_pipeline_runs_with_ams():
    from difflab_core.tiny import tiny_video_pipeline

    pipe = tiny_video_pipeline()
    pipe.scheduler = AdaptiveMomentumScheduler.from_config(pipe.scheduler.config, method="adam")
    frames = pipe(
        "a digit", num_inference_steps=2, num_frames=4, height=32, width=32, output_type="latent"
    ).frames
    assert torch.isfinite(frames).all()


def test_save_load_pipeline_round_trip(ddpm_pipe, tmp_path):
    save_pipeline(ddpm_pipe, tmp_path / "p")
    plain = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(plain.scheduler) is DDIMScheduler
    back = load_pipeline(tmp_path / "p")
    assert isinstance(back.scheduler, AdaptiveMomentumScheduler)
    assert back.scheduler.config.b1_max == 0.3
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]


def test_make_pipeline_refuses_ddim_pipeline_and_ckpt(ddpm_pipe, tmp_path):
    from diffusers import DDIMPipeline

    DDIMPipeline(unet=ddpm_pipe.unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddim")
    with pytest.raises(AdamSamplerError, match="DDIMPipeline"):
        make_pipeline(tmp_path / "ddim")
    with pytest.raises(AdamSamplerError, match=r"\.ckpt|checkpoint"):
        make_pipeline(tmp_path / "model.ckpt")


def test_cli_sample_and_version(tmp_path):
    from difflab_core.tiny import tiny_ddpm_pipeline

    tiny_ddpm_pipeline(8, 3).save_pretrained(tmp_path / "model")
    runner = CliRunner()
    res = runner.invoke(app, ["version"])
    assert res.exit_code == 0 and res.output.strip() == "0.1.0"
    for scheduler in ("ams", "ddim"):
        args = ["sample", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--steps", "3"]
        res = runner.invoke(app, [*args, "--n", "2", "--scheduler", scheduler, "--method", "adam"])
        assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
    res = runner.invoke(app, ["sample", "--model", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "checkpoint" in res.output
