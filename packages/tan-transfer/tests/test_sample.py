"""Spec §5 test 10: sampling through diffusers pipelines and schedulers with adapters attached."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tan_transfer import DPMBundle, build_adapted_unet, load_dpm, make_pipeline, sample


def _perturbed(unet, kind="ant"):
    model = build_adapted_unet(copy.deepcopy(unet), kind).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    return model


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_pixel_pipelines_run_with_adapters(sampler, bundle8):
    model = _perturbed(bundle8.unet)
    pipe = make_pipeline(bundle8, model, sampler=sampler)
    runs = [
        pipe(
            batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np"
        ).images
        for _ in range(2)
    ]
    assert runs[0].shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(runs[0], runs[1])
    with model.disabled():
        source = pipe(
            batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np"
        )
    assert not np.allclose(source.images, runs[0])


def test_sample_any_scheduler_and_seeded(bundle8):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    model = _perturbed(bundle8.unet)
    a = sample(model, bundle8, 5, steps=4, seed=3, batch_size=2)
    b = sample(model, bundle8, 5, steps=4, seed=3, batch_size=2)
    c = sample(model, bundle8, 5, steps=4, seed=4, batch_size=2)
    assert a.shape == (5, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    for cls in (DPMSolverMultistepScheduler, EulerDiscreteScheduler):
        s = sample(model, bundle8, 2, steps=4, scheduler=cls.from_config(bundle8.noise_scheduler.config))
        assert torch.isfinite(s).all()


def test_conditional_path_with_tiny_text_encoder(sd_pipe, tmp_path):
    sd_pipe.save_pretrained(tmp_path / "sd")
    bundle = load_dpm(tmp_path / "sd", device="cpu")
    assert bundle.conditional and bundle.latent_kind == "kl" and bundle.image_size == 32
    model = _perturbed(bundle.unet, "lora")
    a = sample(model, bundle, 2, steps=2, prompt="a red square", seed=0)
    b = sample(model, bundle, 2, steps=2, prompt="a red square", seed=0)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    cfg = sample(model, bundle, 2, steps=2, prompt="a red square", guidance_scale=3.0, seed=0)
    assert not torch.allclose(cfg, a)
    pipe = make_pipeline(bundle, model)
    out = pipe(
        "a red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert out.images.shape == (1, 32, 32, 3)
    latents = bundle.encode(torch.zeros(1, 3, 32, 32))
    assert latents.shape == (1, 4, 16, 16) and bundle.decode(latents).shape == (1, 3, 32, 32)


def test_pixel_folder_round_trip_through_load_dpm(bundle8, tmp_path):
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=bundle8.unet, scheduler=bundle8.noise_scheduler).save_pretrained(tmp_path / "ddpm")
    loaded = load_dpm(tmp_path / "ddpm", device="cpu")
    assert isinstance(loaded, DPMBundle) and loaded.latent_kind is None and loaded.image_size == 8
    bundle8.unet.save_pretrained(tmp_path / "unet_only")
    only = load_dpm(tmp_path / "unet_only", device="cpu")
    assert only.num_train_timesteps == 1000
    a = sample(None, loaded, 2, steps=3)
    b = sample(None, only, 2, steps=3)
    assert torch.allclose(a, b, atol=1e-6)
