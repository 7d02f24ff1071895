import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from guidance_kit.cli import app

runner = CliRunner()


def test_schedule_prints_the_table():
    result = runner.invoke(app, ["schedule", "--n", "50", "--skip", "5", "--k", "2"])
    assert result.exit_code == 0
    assert "11 guided steps" in result.output and "48" in result.output


def test_bad_inputs_give_one_line_and_exit_1(tmp_path):
    for args in (
        ["schedule", "--n", "10", "--skip", "0"],
        ["build-index", str(tmp_path / "missing"), str(tmp_path / "out")],
        ["build-captions", str(tmp_path / "c.jsonl"), "--index", str(tmp_path)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, args
        assert result.output.strip().startswith("error:") and "Traceback" not in result.output


def test_build_index_captions_and_generate(tmp_path, tiny_sd):
    images = tmp_path / "images"
    images.mkdir()
    gen = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(gen.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(
            json.dumps({"file_name": f"{i}.png", "caption": "a cat" if i % 2 else "A cat."}) for i in range(6)
        )
    )
    assert runner.invoke(app, ["build-index", str(images), str(tmp_path / "index")]).exit_code == 0
    result = runner.invoke(
        app, ["build-captions", str(tmp_path / "captions.jsonl"), "--index", str(tmp_path / "index")]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["max_count"] == 6
    tiny_sd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\n")
    args = ["generate", str(tmp_path / "pipe"), str(tmp_path / "prompts.txt"), str(tmp_path / "out")]
    args += ["--amg-index", str(tmp_path / "index"), "--captions", str(tmp_path / "index")]
    args += ["--compress-skip", "2", "--steps", "4", "--seeds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["generated"] == 4
    assert len(list((tmp_path / "out" / "steps").glob("*.jsonl"))) == 4
    again = runner.invoke(app, args)  # resume: nothing left to do
    assert json.loads(again.stdout)["generated"] == 0
    assert Image.open(tmp_path / "out" / "0-0.png").size == (32, 32)
    config_file = tmp_path / "amg.json"
    args = ["calibrate", str(tmp_path / "pipe"), str(tmp_path / "prompts.txt")]
    args += [
        "--amg-index",
        str(tmp_path / "index"),
        "--steps",
        "3",
        "--quantile",
        "1.0",
        "--out",
        str(config_file),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads(config_file.read_text())
    assert config == json.loads(result.stdout) and config["lambda_floor"] >= 0.3
    bad = runner.invoke(app, [*args[:3], "--amg-index", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and bad.output.strip().startswith("error:")


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip()
