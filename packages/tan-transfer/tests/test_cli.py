"""The CLI on a local diffusers folder and an image folder; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tan_transfer.cli import app
from tan_transfer.data import save_image_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, unet8):
    from diffusers import DDPMPipeline, DDPMScheduler

    root = tmp_path_factory.mktemp("cli")
    DDPMPipeline(unet=unet8, scheduler=DDPMScheduler()).save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    save_image_folder(torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, root / "target", "t")
    save_image_folder(torch.rand(12, 1, 8, 8, generator=g) * 2 - 1, root / "source", "s")
    return root


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def test_train_classifier_train_sample_evaluate(folders, tmp_path):
    common = ["--model", str(folders / "model"), "--target", str(folders / "target")]
    out = _ok(
        runner.invoke(
            app,
            [
                "train-classifier",
                *common,
                "--source",
                str(folders / "source"),
                "--out",
                str(tmp_path / "clf"),
                "--steps",
                "3",
                "--classifier",
                "small_cnn",
            ],
        )
    )
    assert "0-199" in out
    run = tmp_path / "run"
    out = _ok(
        runner.invoke(
            app,
            [
                "train",
                *common,
                "--out",
                str(run),
                "--classifier-path",
                str(tmp_path / "clf"),
                "--iterations",
                "2",
                "--batch-size",
                "2",
                "--micro-batch",
                "2",
                "--ascent-steps",
                "1",
                "--no-progress",
            ],
        )
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["iterations"] == 2
    # the default overfitting monitor measured the last iteration and kept it as the best so far
    assert summary["best_step"] == 2 and (run / "adapter_best" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    _ok(
        runner.invoke(
            app,
            [
                "sample",
                "--model",
                str(folders / "model"),
                "--adapter",
                str(run / "adapter"),
                "--out",
                str(run / "samples"),
                "--n",
                "4",
                "--steps",
                "2",
                "--scale",
                "0.5",
            ],
        )
    )
    assert len(list((run / "samples").glob("*.png"))) == 4
    out = _ok(runner.invoke(app, ["evaluate", "--run", str(run)]))
    metrics = json.loads(out)
    assert metrics["n_samples"] == 4 and 0 <= metrics["copy_rate"] <= 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--model", "MISSING", "--target", "T", "--out", "O"], "not found"),
        (["train", "--model", "google/ddpm-church-256", "--target", "T", "--out", "O"], "hub id"),
        (
            ["sample", "--model", "{model}", "--adapter", "{tmp}", "--out", "{tmp}/s"],
            "tan_adapter_config.json",
        ),
        (["train", "--model", "{model}", "--target", "{tmp}", "--out", "{tmp}/o"], "no readable images"),
        (
            ["train", "--model", "{model}", "--target", "{target}", "--out", "{tmp}/o", "--adapter", "dora"],
            "adapter",
        ),
        (["train", "--model", "{tmp}", "--target", "{target}", "--out", "{tmp}/o"], "not a diffusers folder"),
        (["evaluate", "--run", "{tmp}"], "config.json"),
        (["pretrain", "--source", "{tmp}/none", "--out", "{tmp}/o"], "not found"),
        (["pretrain", "--source", "{target}", "--out", "{tmp}/o", "--size", "8"], "fewer than batch_size"),
    ],
)
def test_bad_input_one_line_nonzero(args, needle, folders, tmp_path):
    fill = {"model": str(folders / "model"), "target": str(folders / "target"), "tmp": str(tmp_path)}
    result = runner.invoke(app, [a.format(**fill) for a in args])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output


def test_wrong_size_with_no_resize(folders, tmp_path):
    save_image_folder(torch.zeros(2, 1, 12, 12), tmp_path / "big", "b")
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(folders / "model"),
            "--target",
            str(tmp_path / "big"),
            "--out",
            str(tmp_path / "o"),
            "--no-resize",
        ],
    )
    assert result.exit_code != 0 and "12×12" in result.output


def test_demo_end_to_end(tmp_path):
    out = _ok(
        runner.invoke(
            app,
            [
                "demo",
                "--out",
                str(tmp_path),
                "--iterations",
                "1",
                "--n",
                "4",
                "--steps",
                "1",
                "--ascent-steps",
                "1",
                "--classifier-steps",
                "2",
                "--device",
                "cpu",
            ],
        )
    )
    metrics = json.loads(out.strip().splitlines()[-1])
    assert {"proxy_fid", "target_class_rate", "intra_dist", "copy_rate"} <= set(metrics)
    assert (tmp_path / "run" / "report.html").is_file()


def test_pretrain_writes_a_model_that_train_accepts(folders, tmp_path):
    out = tmp_path / "pre"
    args = ["pretrain", "--source", str(folders / "source"), "--out", str(out), "--size", "8", "--steps", "3"]
    record = json.loads(_ok(runner.invoke(app, [*args, "--batch-size", "4"])).strip().splitlines()[-1])
    assert record["model"] == str(out / "pipeline") and record["n_images"] == 12
    from tan_transfer import load_dpm

    bundle = load_dpm(out / "pipeline", device="cpu")
    assert bundle.image_size == 8 and sum(p.numel() for p in bundle.unet.parameters()) == record["n_params"]
