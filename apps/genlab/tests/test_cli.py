"""`genlab sample` and `genlab compare` on a tiny local model folder; bad inputs are one clear line."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from typer.testing import CliRunner

from difflab_core.tiny import tiny_unet_2d
from genlab.cli import app
from guidance_kit import load_noisy_classifier, sample, train_noisy_classifier

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    tiny_unet_2d(8, 1, seed=0).save_pretrained(root)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    train_noisy_classifier(images, torch.arange(16) % 2, DDPMScheduler(), out_dir=root, steps=3, batch_size=8)
    return root


def _run(*args):
    return runner.invoke(app, [*map(str, args)])


def test_unguided_sample_equals_the_reference_loop(model_dir, tmp_path):
    from diffusers import UNet2DModel

    from adam_sampler import AdaptiveMomentumScheduler

    result = _run(
        "sample", "--model", model_dir, "--out", tmp_path, "--n", 3, "--steps", 4, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "samples.json").read_text())
    assert meta["scheduler"]["kind"] == "ams" and len(meta["files"]) == 3
    unet = UNet2DModel.from_pretrained(model_dir)
    sched = AdaptiveMomentumScheduler.from_config(DDPMScheduler.from_pretrained(model_dir).config)
    x = sample(unet, sched, num_inference_steps=4, batch_size=3, generator=torch.Generator().manual_seed(0))
    expected = (((x + 1) / 2).clamp(0, 1)[:, 0] * 255).round().numpy()
    written = np.stack(
        [np.asarray(Image.open(tmp_path / f).convert("L")).astype(float) for f in meta["files"]]
    )
    assert np.abs(written - expected).max() <= 1.0  # PNG quantisation only
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize(("mode", "calls"), [("full", 10), ("compress", 4)])
def test_classifier_guidance_modes_call_the_classifier_on_their_schedule(
    model_dir, classifier_dir, tmp_path, mode, calls
):
    from guidance_kit import compress_schedule

    args = ["sample", "--model", model_dir, "--out", tmp_path, "--n", 2, "--steps", 10, "--scheduler", "ddim"]
    result = _run(*args, "--guidance", mode, "--classifier", classifier_dir, "--label", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "samples.json").read_text())
    assert meta["classifier_calls"] == calls
    if mode == "compress":
        assert calls == compress_schedule(10, 5, 2.0).num_guided
    assert load_noisy_classifier(classifier_dir).head.out_features == 2


def test_compare_writes_a_resumable_report(model_dir, tmp_path):
    ref = tmp_path / "real"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(ref / f"r{i}.png")
    args = ["compare", "--model", model_dir, "--out", tmp_path / "cmp", "--reference", ref, "--nfe", "2,3"]
    result = _run(*args, "--n", 6, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert set(report["figures"]["fd"]) == {"ddim", "ams", "dpmpp"}
    assert report["figures"]["ratio_vs_ddim"]["ddim"] == {"2": 1.0, "3": 1.0}
    again = _run(*args, "--n", 6, "--device", "cpu")
    assert "(6 cells resumed)" in again.output
    assert json.loads((tmp_path / "cmp" / "report.json").read_text())["figures"] == report["figures"]


def test_adapt_then_sample_with_the_adapter(model_dir, tmp_path):
    from tan_transfer.adapters import read_adapter_config

    for name, value in (("target", 220), ("source", 30)):
        (tmp_path / name).mkdir()
        for i in range(4):
            pixels = np.full((8, 8), value, dtype=np.uint8)
            pixels[i, :] = 255 - value
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    args = ["adapt", "--model", model_dir, "--target", tmp_path / "target", "--source", tmp_path / "source"]
    args += ["--out", tmp_path / "run", "--iterations", 2, "--batch-size", 2, "--micro-batch", 2]
    result = _run(*args, "--ascent-steps", 1, "--classifier-steps", 2, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    adapter = json.loads(result.output.strip().splitlines()[-1])["adapter"]
    assert read_adapter_config(adapter)["kind"] == "ant"
    sampled = _run(
        "sample", "--model", model_dir, "--adapter", adapter, "--out", tmp_path / "s", "--n", 2, "--steps", 3
    )
    assert sampled.exit_code == 0, sampled.output
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["adapter"] == adapter
    other = tmp_path / "other"
    tiny_unet_2d(16, 1, seed=0).save_pretrained(other)
    DDPMScheduler().save_pretrained(other)
    wrong = _run("sample", "--model", other, "--adapter", adapter, "--out", tmp_path / "w", "--device", "cpu")
    assert wrong.exit_code == 1 and "config hash" in wrong.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--model", "{tmp}/missing", "--out", "{tmp}/o"], "missing"),
        (["sample", "--model", "{model}", "--out", "{tmp}/o", "--scheduler", "euler"], "--scheduler 'euler'"),
        (["sample", "--model", "{model}", "--out", "{tmp}/o", "--guidance", "full"], "needs --classifier"),
        (["sample", "--model", "{model}", "--out", "{tmp}/o", "--guidance", "maybe"], "--guidance 'maybe'"),
        (["sample", "--model", "{model}", "--out", "{tmp}/o", "--adapter", "{tmp}"], "{tmp}"),
        (["compare", "--model", "{model}", "--out", "{tmp}/o", "--nfe", "0"], "--nfe"),
        (["compare", "--model", "{model}", "--out", "{tmp}/o"], "exactly one of --reference"),
    ],
)
def test_bad_inputs_print_one_error_line(model_dir, tmp_path, args, message):
    filled = [a.format(tmp=tmp_path, model=model_dir) for a in args]
    result = _run(*filled, "--device", "cpu")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message.format(tmp=tmp_path) in lines[0]
