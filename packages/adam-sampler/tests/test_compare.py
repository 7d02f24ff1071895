"""Spec §3 compare.py, §7 reliability and the ``compare`` CLI: sampling loop, Fréchet distance, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline
from typer.testing import CliRunner

from adam_sampler import SchedulerSpec, compare_samplers, sample
from adam_sampler.cli import app
from adam_sampler.compare import feature_stats, frechet_from_stats
from adam_sampler.pipelines import load_unconditional


def pooled(images: torch.Tensor) -> torch.Tensor:
    """4-d features of 8×8 images: 4×4 average pooling of the channel mean."""
    return F.avg_pool2d(images.mean(dim=1, keepdim=True), 4).flatten(1)


class Pooled(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images.mean(dim=1, keepdim=True), 4).flatten(1)


def test_sample_equals_ddpm_pipeline(unet3):
    """`sample` is DDPMPipeline's loop without PIL: same noise stream, same steps."""
    pipe = DDPMPipeline(unet=unet3, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=3, num_inference_steps=4, generator=torch.manual_seed(5), output_type="np").images
    ours = sample(unet3, DDIMScheduler(), 3, 4, generator=torch.Generator().manual_seed(5), batch_size=2)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)  # batches of 2 + 1 vs 3: conv rounding


def test_frechet_from_stats_matches_core():
    from difflab_core.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 6, generator=g), 0.5 + 2 * torch.randn(150, 6, generator=g)
    ours = frechet_from_stats(*feature_stats(a), *feature_stats(b))
    assert ours == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_compare_samplers_resumes_and_refuses_other_config(unet3, tmp_path):
    real = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    stats = feature_stats(pooled(real))
    specs = {"ddim": SchedulerSpec("ddim", eta=0.0), "ams": SchedulerSpec("ams", {"b1_max": 0.3}, eta=0.0)}
    computed = []
    kwargs = {"n": 12, "seeds": (0,), "feature_fn": pooled, "real_stats": stats, "batch_size": 8}
    first = compare_samplers(
        unet3, DDIMScheduler().config, specs, (2, 3), out_dir=tmp_path, on_cell=computed.append, **kwargs
    )
    assert len(computed) == 4 and first["resumed"] == 0
    # an independent recomputation of one cell
    images = sample(unet3, DDIMScheduler(), 12, 3, generator=torch.Generator().manual_seed(0), batch_size=8)
    fd = frechet_from_stats(*feature_stats(pooled(((images + 1) / 2).clamp(0, 1))), *stats)
    assert first["fid"]["ddim"]["3"]["mean"] == pytest.approx(fd, rel=1e-9)
    assert first["ratios"]["ams"]["2"] == pytest.approx(
        first["fid"]["ams"]["2"]["mean"] / first["fid"]["ddim"]["2"]["mean"]
    )
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["sampler"] == "ddim"
    again = compare_samplers(
        unet3, DDIMScheduler().config, specs, (2, 3), out_dir=tmp_path, on_cell=computed.append, **kwargs
    )
    assert len(computed) == 4 and again["resumed"] == 4 and again["fid"] == first["fid"]
    with pytest.raises(ValueError, match="fingerprint"):
        compare_samplers(unet3, DDIMScheduler().config, specs, (2,), out_dir=tmp_path, **{**kwargs, "n": 10})


def test_scheduler_spec_errors():
    from adam_sampler import AdamSamplerError

    with pytest.raises(AdamSamplerError, match="kind='nope'"):
        SchedulerSpec("nope").build(DDIMScheduler().config)
    assert (
        type(SchedulerSpec("dpmsolver++").build(DDIMScheduler().config)).__name__
        == "DPMSolverMultistepScheduler"
    )


def test_cli_compare_torchscript_features_and_resume(tmp_path):
    from difflab_core.tiny import tiny_ddpm_pipeline

    tiny_ddpm_pipeline(8, 3).save_pretrained(tmp_path / "model")
    torch.jit.script(Pooled()).save(str(tmp_path / "feats.pt"))
    mu, sigma = feature_stats(pooled(torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))))
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    args = [
        "compare",
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(tmp_path / "out"),
        "--nfe",
        "2",
        "--samplers",
        "ddim,ams",
        "--n",
        "8",
        "--features",
        f"torchscript:{tmp_path / 'feats.pt'}",
        "--ref-stats",
        str(tmp_path / "ref.npz"),
        "--device",
        "cpu",
    ]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["fid"]) == {"ddim", "ams"} and report["ratios_vs_ddim"]["ddim"]["2"] == 1.0
    assert (tmp_path / "out" / "report.html").is_file()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "2 cells resumed" in res.output
    bad = runner.invoke(app, [*args[:-4], "--features", "sscd"])
    assert bad.exit_code == 2 and "--features" in bad.output
    missing = runner.invoke(app, [*args[:-2], "--ref-stats", str(tmp_path / "none.npz")])
    assert missing.exit_code == 2 and "none.npz" in missing.output


def test_cli_compare_digits_proxy_default_reference(tmp_path):
    from difflab_core.tiny import tiny_ddpm_pipeline

    tiny_ddpm_pipeline(8, 1).save_pretrained(tmp_path / "model")
    res = CliRunner().invoke(
        app,
        [
            "compare",
            "--model",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "o"),
            "--nfe",
            "2",
            "--samplers",
            "ams",
            "--n",
            "4",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "proxy, not FID" in res.output
    assert np.isfinite(json.loads((tmp_path / "o" / "report.json").read_text())["fid"]["ams"]["2"]["mean"])


def test_load_unconditional_refuses_text_to_image(tmp_path):
    from adam_sampler import AdamSamplerError

    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}
        )
    )
    with pytest.raises(AdamSamplerError, match="unconditional"):
        load_unconditional(tmp_path / "sd")
