"""The CLI's cheaper-detection options: build-index --vae, generate --pixel-space latent / --preview-decoder."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from guidance_kit import NeighbourIndex
from guidance_kit.cli import app

runner = CliRunner()


def test_build_index_with_vae_latents_and_generate_in_latent_space(tmp_path, tiny_sd):
    images = tmp_path / "images"
    images.mkdir()
    gen = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(gen.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    tiny_sd.save_pretrained(tmp_path / "pipe")
    result = runner.invoke(
        app, ["build-index", str(images), str(tmp_path / "index"), "--vae", str(tmp_path / "pipe")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["latent_shape"] == [4, 16, 16]
    index = NeighbourIndex.load(tmp_path / "index")
    assert index.latent_shape == (4, 16, 16) and index.manifest["latents"]["vae"] == "AutoencoderKL"

    (tmp_path / "prompts.txt").write_text("a red cat\n")
    args = ["generate", str(tmp_path / "pipe"), str(tmp_path / "prompts.txt"), str(tmp_path / "out")]
    args += ["--amg-index", str(tmp_path / "index"), "--pixel-space", "latent", "--steps", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    steps = [json.loads(x) for x in (tmp_path / "out" / "steps" / "0-0.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and all(s["sigma1"] is not None for s in steps)

    fresh = [*args[:3], str(tmp_path / "fresh"), "--amg-index", str(tmp_path / "index"), "--steps", "1"]
    for bad in (
        ["build-index", str(images), str(tmp_path / "i2"), "--vae", str(tmp_path / "no-vae")],
        [*fresh, "--preview-decoder", str(tmp_path / "no-taesd")],
        [*fresh, "--pixel-space", "pixels"],
    ):
        result = runner.invoke(app, bad)
        assert result.exit_code == 1, bad
        assert result.output.strip().startswith("error:") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
