import json

from typer.testing import CliRunner

from mem_video.cli import app

runner = CliRunner()


def test_testbed_then_audit(tmp_path):
    res = runner.invoke(app, ["testbed", str(tmp_path / "tb"), "--per-type", "1", "--n-train", "4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    res = runner.invoke(
        app,
        [
            "audit",
            info["generated"],
            str(tmp_path / "audit"),
            "--training",
            info["training"],
            "--flow-size",
            "64",
            "--content-fps",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["n_videos"] == info["n_generated"] == 9
    assert summary["counts"]["both"] >= 1
    res = runner.invoke(app, ["evaluate", str(tmp_path / "audit"), "--labels", info["labels"]])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["content"]["auc"] >= 0.9
    res = runner.invoke(app, ["report", str(tmp_path / "audit")])
    assert res.exit_code == 0 and "report.html" in res.output


def test_bad_input_one_line(tmp_path):
    res = runner.invoke(
        app, ["audit", str(tmp_path / "missing"), str(tmp_path / "o"), "--training", str(tmp_path)]
    )
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    res = runner.invoke(app, ["audit", str(tmp_path), str(tmp_path / "o")])
    assert res.exit_code == 1 and "exactly one of --index" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "summary.json" in res.output
