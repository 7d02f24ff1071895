"""End-to-end tests of `memguard audit`, `generate` and the config file on a tiny pipeline in a temp folder."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from memguard.cli import app

FAST = ["--steps", "2", "--scale", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from difflab_core.tiny import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline("sd1").save_pretrained(path)
    return path


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"key": "cat", "caption": "a photo of a cat", "label": 1},
        {"key": "dog", "caption": "a dog on a red sofa", "label": 0},
        {"key": "car", "caption": "a blue car in the rain", "label": 0},
        {"key": "mug", "caption": "a mug of coffee", "label": 1},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_clean_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == "0.1.0"


def test_audit_scores_labels_and_writes_a_report(model_dir, prompts, tmp_path):
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "run"
    args = ["audit", "--model", str(model_dir), "--prompts", str(prompts), "--labels", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--n", "1", *FAST])
    assert result.exit_code == 0, result.output
    figures = json.loads((out / "figures.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert figures["n_prompts"] == len(rows) == 4
    labels = [r["label"] for r in rows]
    be = [float(np.mean(r["be"])) for r in rows]
    assert figures["det_all_be_auc"] == pytest.approx(roc_auc_score(labels, be))
    assert "<svg" in (out / "report.html").read_text()
    assert all((out / f).is_file() for r in rows for f in r["image_files"])


def test_killed_audit_resumes_without_redoing_work(model_dir, prompts, tmp_path):
    out = tmp_path / "run"
    args = [
        "audit",
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--n",
        "1",
        *FAST,
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines()
    # as if killed while writing the third row: two complete rows and a torn one
    results.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    again = results.read_text().splitlines()
    assert len(again) == 4
    assert again[:2] == lines[:2]  # finished rows are kept, not recomputed
    assert {json.loads(x)["key"] for x in again} == {"cat", "dog", "car", "mug"}
    changed = CliRunner().invoke(app, [*args[:-6], "--steps", "3", "--scale", "3", "--device", "cpu"])
    assert "fingerprint" in _one_clean_line(changed)


def test_generate_verdicts_follow_the_threshold_and_mitigation_changes_images(model_dir, tmp_path):
    from PIL import Image

    base = ["generate", "--model", str(model_dir), "--prompt", "a photo of a cat", "--n", "2", *FAST]
    plain = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "plain"), "--threshold", "0"])
    assert plain.exit_code == 0, plain.output
    summary = json.loads((tmp_path / "plain" / "verdicts.json").read_text())
    assert [i["verdict"] for i in summary["images"]] == ["memorized", "memorized"]  # every score exceeds 0
    for item in summary["images"]:
        assert (tmp_path / "plain" / item["file"]).is_file() and (
            tmp_path / "plain" / item["heatmap"]
        ).is_file()
    high = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "high"), "--threshold", "1e9"])
    assert high.exit_code == 0
    high_summary = json.loads((tmp_path / "high" / "verdicts.json").read_text())
    assert [i["verdict"] for i in high_summary["images"]] == ["not memorized"] * 2
    assert [i["be_score"] for i in high_summary["images"]] == [i["be_score"] for i in summary["images"]]

    out = tmp_path / "pe"
    mitigated = CliRunner().invoke(
        app, [*base, "--out", str(out), "--mitigate", "be-pe", "--target-loss", "0"]
    )
    assert mitigated.exit_code == 0, mitigated.output
    info = json.loads((out / "verdicts.json").read_text())["mitigation"]
    assert info["triggered"] and info["loss_after"] < info["loss_before"]
    before = np.asarray(Image.open(out / "unmitigated_0.png"), dtype=np.float64)
    after = np.asarray(Image.open(out / "image_0.png"), dtype=np.float64)
    assert np.abs(before - np.asarray(Image.open(tmp_path / "plain" / "image_0.png"))).max() == 0
    assert np.abs(after - before).mean() > 0.5  # the optimised embedding changes the image


def test_bad_inputs_print_one_line(model_dir, prompts, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["audit", "--model", str(tmp_path / "nope"), "--prompts", str(prompts)])
    assert "nope" in _one_clean_line(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    no_prompts = runner.invoke(app, ["audit", "--model", str(model_dir), "--prompts", str(empty), *FAST])
    assert "empty.txt" in _one_clean_line(no_prompts)
    unlabeled = tmp_path / "plain.txt"
    unlabeled.write_text("a cat\na dog\n")
    no_labels = runner.invoke(
        app, ["audit", "--model", str(model_dir), "--prompts", str(unlabeled), "--labels", *FAST]
    )
    assert "label" in _one_clean_line(no_labels)
    bad_method = runner.invoke(
        app, ["generate", "--model", str(model_dir), "--prompt", "a cat", "--mitigate", "erase", *FAST]
    )
    assert "erase" in _one_clean_line(bad_method)
    amg_no_index = runner.invoke(
        app, ["generate", "--model", str(model_dir), "--prompt", "a cat", "--mitigate", "amg", *FAST]
    )
    assert "--index" in _one_clean_line(amg_no_index)


def test_config_file_sets_defaults_and_rejects_typos(model_dir, prompts, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "memguard.toml"
    config.write_text(
        f'[audit]\nmodel = "{model_dir}"\nsteps = 2\nscale = 3.0\nn = 1\ndevice = "cpu"\nmethods = "wen"\n'
    )
    result = CliRunner().invoke(
        app, ["--config", str(config), "audit", "--prompts", str(prompts), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["audit"]
    assert (
        saved["num_inference_steps"] == 2 and saved["methods"] == ["wen"] and saved["guidance_scale"] == 3.0
    )
    config.write_text("[audit]\nstepz = 2\n")
    typo = CliRunner().invoke(app, ["--config", str(config), "audit", "--prompts", str(prompts)])
    assert "stepz" in _one_clean_line(typo)
    config.write_text("[audits]\nsteps = 2\n")
    table = CliRunner().invoke(app, ["--config", str(config), "audit", "--prompts", str(prompts)])
    assert "[audits]" in _one_clean_line(table)
