"""The diffact CLI: make-synthetic, train, evaluate, predict, plot, convert; bad input gives one line, exit 2."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from diffact.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_workflow(tmp_path) -> None:
    result = invoke("make-synthetic", "--out", tmp_path / "data", "--videos", "5", "--test-videos", "1")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    result = invoke(
        "train", "--data-root", tmp_path / "data", "--dataset", "synthetic", "--preset", "tiny",
        "--out", run, "--max-steps", "2", "--selection", "last", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run / "report.json").is_file()

    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    report = json.loads((run / "report.json").read_text())
    assert summary["Acc"] == report["test_metrics"]["mstcn"]["Acc"]

    data = tmp_path / "data" / "synthetic"
    result = invoke("evaluate", "--gt-dir", data / "groundTruth", "--pred-dir", run / "prediction")
    assert result.exit_code == 0 and json.loads(result.output)["videos"] == 1

    result = invoke(
        "predict", "--model", run, "--features", data / "features", "--out", tmp_path / "pred", "--steps", "2"
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "pred" / "prediction").glob("*.txt"))) == 5

    png = tmp_path / "plot.png"
    result = invoke(
        "plot", "--pred", tmp_path / "pred" / "prediction" / "video000.txt", "--gt", data / "groundTruth" / "video000.txt",
        "--mapping", data / "mapping.txt", "--out", png, "--fps", "15",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(png).size[0] == 900


def test_cli_bad_input_is_one_line(tmp_path) -> None:
    result = invoke(
        "train", "--data-root", tmp_path, "--out", tmp_path / "run", "--preset", "tiny", "--dataset", "nope"
    )
    assert result.exit_code == 2
    assert (
        result.output.strip().count("\n") == 0
        and "nope" in result.output
        and "Traceback" not in result.output
    )
    result = invoke("predict", "--model", tmp_path, "--features", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "diffact.json" in result.output
    result = invoke("train", "--data-root", tmp_path, "--out", tmp_path / "run2", "--preset", "huge")
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_cli_convert(tmp_path) -> None:
    from diffact.config import preset
    from diffact.model import DiffActModel

    state = DiffActModel.from_diffact_config(preset("gtea")).state_dict()
    state["betas"] = torch.zeros(1000, dtype=torch.float64)
    torch.save(state, tmp_path / "release.model")
    result = invoke(
        "convert", tmp_path / "release.model", "--preset", "gtea", "--out", tmp_path / "converted"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "converted" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "converted" / "diffact.json").is_file()


def test_version() -> None:
    from diffact import __version__

    assert invoke("version").output.strip() == __version__
