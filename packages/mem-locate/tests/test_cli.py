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


def test_cli_mitigate_lowers_the_loss(model_dir, tmp_path):
    out = tmp_path / "mit"
    args = ["mitigate", str(model_dir), "-p", "a photo of a cat", "--out", str(out), "--steps", "2"]
    args += ["--scale", "3", "--method", "pe", "--target-loss", "0", "--iterations", "3", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "mitigate.json").read_text())
    assert summary["triggered"] and summary["iterations"] == 3
    assert summary["loss_after"] < summary["loss_before"]
    assert (out / "mitigated_0.png").is_file()
    bad = CliRunner().invoke(app, [*args[:-2], "--method", "nope", "--device", "cpu"])
    assert bad.exit_code == 1 and "method" in bad.output
    i = args.index("--target-loss")
    no_audit = CliRunner().invoke(app, [*args[: i + 1], "auto", *args[i + 2 :]])
    assert no_audit.exit_code == 1 and "--audit RUN_DIR" in no_audit.output
    not_a_number = CliRunner().invoke(app, [*args[: i + 1], "low", *args[i + 2 :]])
    assert not_a_number.exit_code == 1 and "'low'" in not_a_number.output


def test_cli_measure_equals_plain_ssim_and_pixel(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from difflab_core.metrics import ssim

    rng = np.random.default_rng(0)
    ref_dir = tmp_path / "refs"
    ref_dir.mkdir()
    ref = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    gen = np.clip(ref.astype(int) + rng.integers(-30, 30, ref.shape), 0, 255).astype(np.uint8)
    Image.fromarray(ref).save(ref_dir / "r.png")
    Image.fromarray(gen).save(tmp_path / "g.png")
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    for metric, expected in (
        ("ssim", float(ssim(to_t(gen), to_t(ref)))),
        ("pixel", 1 - float(((to_t(gen) - to_t(ref)) ** 2).mean().sqrt())),
    ):
        res = CliRunner().invoke(
            app, ["measure", str(tmp_path / "g.png"), "-r", str(ref_dir), "--metric", metric]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["mean"] == pytest.approx(expected, abs=1e-5)
    missing = CliRunner().invoke(app, ["measure", str(tmp_path / "g.png"), "-r", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "image folder not found" in missing.output
