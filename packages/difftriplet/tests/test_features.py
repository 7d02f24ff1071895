"""timm feature extraction: float16 cache + manifest, resume per video, refusal to mix (§2.6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftriplet.errors import DiffTripletError
from difftriplet.features import BackboneConfig, extract_features, finetune_backbone
from difftriplet.splits import Split
from difftriplet.synthetic import make_cholect50_dataset

VIDEOS = ("VID79", "VID02")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_cholect50_dataset(tmp_path_factory.mktemp("frames"), videos=VIDEOS, frames=(12, 20), seed=2)


@pytest.fixture(scope="module")
def resnet18():
    return BackboneConfig(arch="resnet18", image_size=(64, 112))


def test_extract_writes_float16_and_resumes(small, resnet18, tmp_path):
    out = tmp_path / "r18-k1"
    manifest = extract_features(resnet18, small.root, VIDEOS, out, batch_size=8, device="cpu")
    assert manifest.computed == list(VIDEOS) and manifest.feature_dim == 512
    for video in VIDEOS:
        feats = np.load(out / f"{video}.npy")
        assert feats.dtype == np.float16 and feats.shape == (512, small.frames[video])
    saved = json.loads((out / "manifest.json").read_text())
    assert (
        saved["arch"] == "resnet18" and saved["image_size"] == [64, 112] and saved["frames"] == small.frames
    )
    assert saved["pooling"] == "avg" and "timm" in saved["versions"]

    again = extract_features(resnet18, small.root, VIDEOS, out, device="cpu")
    assert again.computed == []
    before = np.load(out / "VID02.npy")
    (out / "VID79.npy").unlink()
    third = extract_features(resnet18, small.root, VIDEOS, out, device="cpu")
    assert third.computed == ["VID79"]
    assert np.array_equal(np.load(out / "VID02.npy"), before)

    with pytest.raises(DiffTripletError, match=r"other settings .*image_size"):
        extract_features(
            BackboneConfig(arch="resnet18", image_size=(32, 56)), small.root, VIDEOS, out, device="cpu"
        )


def test_grid_pooling_and_finetuned_backbone(small, resnet18, tmp_path):
    split = Split(("VID79",), (), ("VID02",))
    folder = finetune_backbone(
        resnet18, small.root, split, tmp_path / "backbone" / "k1", max_steps=2, batch_size=4
    )
    loaded = BackboneConfig.load(folder)
    assert loaded.arch == "resnet18" and loaded.weights.endswith("backbone.safetensors")
    assert json.loads((folder / "backbone.json").read_text())["train_videos"] == ["VID79"]
    grid = BackboneConfig(arch="resnet18", weights=loaded.weights, image_size=(64, 112), pooling="grid:2x2")
    manifest = extract_features(grid, small.root, ("VID02",), tmp_path / "grid", device="cpu")
    assert manifest.feature_dim == 512 * 4 and manifest.weights_sha256 is not None


def test_frame_count_and_corrupt_png(small, resnet18, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(small.root, root)
    (root / "videos" / "VID02" / "000003.png").write_bytes(b"not a png")
    with pytest.raises(DiffTripletError, match=r"000003.png is unreadable or corrupt"):
        extract_features(resnet18, root, ("VID02",), tmp_path / "bad", device="cpu")
    last = sorted((root / "videos" / "VID79").iterdir())[-1]
    last.unlink()
    with pytest.raises(DiffTripletError, match="frames but the labels have num_frames"):
        extract_features(resnet18, root, ("VID79",), tmp_path / "bad2", device="cpu")
