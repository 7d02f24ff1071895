import json

import pytest
from typer.testing import CliRunner

from mem_locate import __version__
from mem_locate.cli import app


@pytest.fixture(scope="module")
def model_dir(pipes, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    pipes["sd1"].save_pretrained(path)
    return path


def test_cli_locate_audit_eval_report(model_dir, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["version"]).output.strip() == __version__
    res = runner.invoke(
        app,
        [
            "locate",
            str(model_dir),
            "-p",
            "a photo of a cat",
            "--out",
            str(tmp_path / "loc"),
            "--steps",
            "2",
            "--scale",
            "3",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "loc" / "0_0_overlay.png").is_file() and (
        tmp_path / "loc" / "maps.safetensors"
    ).is_file()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"caption": f"thing {i}", "label": i % 2, "type": "TV" if i % 2 else "N"})
            for i in range(4)
        )
    )
    run = tmp_path / "run"
    args = [
        "audit",
        str(model_dir),
        str(prompts),
        "--out",
        str(run),
        "--steps",
        "2",
        "--scale",
        "3",
        "--n",
        "1",
        "--device",
        "cpu",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len((run / "results.jsonl").read_text().splitlines()) == 4
    res = runner.invoke(app, ["eval-detect", str(run), "--window", "0:1"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert 0 <= metrics["det_local_be_auc"] <= 1 and metrics["det_global_be_auc"] is None
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "<svg" in (run / "report.html").read_text()
    bad = runner.invoke(app, [*args[:-2], "--steps", "3"])
    assert bad.exit_code == 1 and "fingerprint" in bad.output
