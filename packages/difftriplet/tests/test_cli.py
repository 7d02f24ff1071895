"""The typer CLI end to end in a temporary folder; bad input gives one clear line and a non-zero exit."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from difftriplet.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_make_synthetic_train_evaluate_predict(tmp_path):
    data = tmp_path / "CholecT50"
    result = run(
        "make-synthetic", "--out", data, "--videos", "VID79,VID02,VID51,VID80,VID32", "--max-frames", "70"
    )
    assert result.exit_code == 0, result.output
    assert (data / "labels" / "VID79.json").is_file() and (data / "videos" / "VID02" / "000000.png").is_file()
    assert (data / "features" / "synthetic" / "VID80.npy").is_file()

    from difftriplet.config import preset
    from difftriplet.splits import Split
    from difftriplet.train import train_fold

    cfg = preset("tiny").with_updates(
        train={"max_steps": 4}, diffusion={"sampling_steps": 2}, eval={"selection": "last"}
    )
    runs = tmp_path / "runs"  # the synthetic videos are not the official folds: pass the split explicitly
    split = Split(("VID79", "VID02", "VID51"), (), ("VID80", "VID32"))
    train_fold(cfg, data, "cholect50", 1, "synthetic", runs / "k1", split=split)
    shutil.copytree(runs / "k1", runs / "k2")  # a second "fold" for the mean ± std summary

    result = run("evaluate", "--run", runs)
    assert result.exit_code == 0, result.output
    assert "AP_IVT:" in result.output and "± 0.0" in result.output
    result = run("evaluate", "--run", runs / "k1", "--nan-policy", "installed")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.split(": ", 1)[1])
    assert 0 <= figures["AP_IVT"] <= 100
    assert (runs / "k1" / "evaluation-cv-installed.json").is_file()

    result = run(
        "predict", "--model", runs / "k1" / "model", "--data", data, "--features", "synthetic",
        "--out", tmp_path / "pred", "--videos", "VID32", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "probs" / "VID32.npy").is_file() and (
        tmp_path / "pred" / "top" / "VID32.csv"
    ).is_file()
    frames = json.loads((tmp_path / "pred" / "pred" / "VID32.json").read_text())
    assert set(frames["annotations"]) == {str(i) for i in range(len(frames["annotations"]))}


def test_cli_train_uses_the_official_fold_split(tmp_path):
    data = tmp_path / "d"
    assert run("make-synthetic", "--out", data, "--videos", "VID79", "--no-frames").exit_code == 0
    result = run(
        "train", "--data", data, "--features", "synthetic", "--out", tmp_path / "o", "--preset", "tiny"
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "absent from" in result.output and "VID80" in result.output


def test_bad_input_one_line(tmp_path):
    result = run("evaluate", "--run", tmp_path)
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    result = run("make-synthetic", "--out", tmp_path / "x", "--variant", "cholect80")
    assert result.exit_code == 2 and "cholect80" in result.output
    result = run(
        "predict", "--model", tmp_path, "--data", tmp_path, "--features", "f", "--out", tmp_path / "p"
    )
    assert result.exit_code == 2 and "not a difftriplet model folder" in result.output
    assert run("version").output.strip() == "0.1.0"
