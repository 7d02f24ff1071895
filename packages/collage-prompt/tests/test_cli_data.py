"""CLI commands, data loaders and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from collage_prompt.cli import app
from collage_prompt.data import CSVDataset, ImageFolderDataset, offline_dataset
from collage_prompt.errors import CollagePromptError

runner = CliRunner()


def test_cost_command():
    result = runner.invoke(app, ["cost", "--grid", "3x3", "--n-images", "90"])
    assert result.exit_code == 0
    est = json.loads(result.output)
    assert est["n_queries"] == 10 and est["image_tokens"] == 255


def test_bad_grid_is_one_line():
    result = runner.invoke(app, ["cost", "--grid", "three"])
    assert result.exit_code == 2
    assert "--grid" in result.output and "Traceback" not in result.output


def test_optimize_command(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(p)
        paths.append(str(p))
    result = runner.invoke(app, ["optimize", *paths, "--grid", "2x2", "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)["perm"]) == [0, 1, 2, 3]
    assert Image.open(tmp_path / "c.png").size == (512, 512)
    bad = runner.invoke(app, ["optimize", *paths[:3], "--grid", "2x2"])
    assert bad.exit_code == 2 and "3 images" in bad.output


def test_run_needs_yes(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / cls / "a.png")
    result = runner.invoke(app, ["run", str(tmp_path), "--grid", "2x2"])
    assert result.exit_code == 1 and "--yes" in result.output


def test_offline_datasets():
    for name, n_classes in (("digits", 10), ("shapes", 6), ("textures", 8)):
        d = offline_dataset(name, size=24, per_class=3)
        assert len(d.classes) == n_classes and d.images[0].size == (24, 24)
        assert set(np.unique(d.labels)) == set(range(n_classes))
    with pytest.raises(CollagePromptError, match="unknown"):
        offline_dataset("cifar")


def test_image_folder_and_csv(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / cls / "a.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(CollagePromptError, match=r"broken\.png"):
        ImageFolderDataset(tmp_path)
    d = ImageFolderDataset(tmp_path, skip_bad=True)
    assert d.classes.names == ["cat", "dog"] and d.labels.tolist() == [0, 1]
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\ncat/a.png,cat\ndog/a.png,dog\n")
    assert CSVDataset(csv).labels.tolist() == [0, 1]
    csv.write_text("file,y\n")
    with pytest.raises(CollagePromptError, match="path,label"):
        CSVDataset(csv)
