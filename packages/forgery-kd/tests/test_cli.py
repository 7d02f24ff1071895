"""The ``forgery-kd`` command line: one clear line and exit 1 on bad input."""

import json

import torch
from PIL import Image
from typer.testing import CliRunner

from forgery_kd import Student, export_student
from forgery_kd.cli import app

runner = CliRunner()


def test_version_and_synth(tmp_path):
    assert runner.invoke(app, ["version"]).output.strip() == "0.1.0"
    result = runner.invoke(app, ["synth", str(tmp_path), "--videos", "4", "--frames", "1", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "json" / "Synthetic.json").is_file()


def test_predict_a_folder_and_bad_input(tmp_path):
    torch.manual_seed(0)
    export_student(Student("test_efficientnet"), tmp_path / "det", img_size=32)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (i * 100, 50, 50)).save(tmp_path / "imgs" / f"{i}.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "det"), str(tmp_path / "imgs")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert set(scores) == {"0.png", "1.png"} and all(0 <= v <= 1 for v in scores.values())
    bad = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(tmp_path / "imgs")])
    assert bad.exit_code == 1
    assert bad.output.strip().startswith("error:") and "config.json does not exist" in bad.output
    assert "Traceback" not in bad.output
    bad = runner.invoke(
        app, ["evaluate", str(tmp_path / "det"), "--json-dir", str(tmp_path), "--name", "Missing"]
    )
    assert bad.exit_code == 1 and "Missing.json does not exist" in bad.output


def test_calibrate_stores_the_threshold(synthetic, tmp_path):
    torch.manual_seed(0)
    det = export_student(Student("test_efficientnet"), tmp_path / "det", img_size=32)
    data = ["--json-dir", str(synthetic.json_dir), "--name", "Synthetic", "--rgb-root", str(synthetic.root)]
    data += ["--frame-num", "2", "--img-size", "32"]
    result = runner.invoke(app, ["calibrate", str(det), *data, "--target-fpr", "0.25"])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.output)
    assert calibration["split"] == "val" and calibration["fpr"] <= 0.25
    assert json.loads((det / "config.json").read_text())["threshold"] == calibration["threshold"]
    bad = runner.invoke(app, ["calibrate", str(tmp_path), *data])
    assert (
        bad.exit_code == 1 and bad.output.startswith("error:") and "config.json does not exist" in bad.output
    )
