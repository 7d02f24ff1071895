"""The MS-TCN layout: round trip of the synthetic writer, sample rates, and clear errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from diffact.data import (
    IGNORE_INDEX,
    MSTCNDataset,
    class_weights,
    load_features,
    read_bundle,
    read_labels,
    read_mapping,
    validation_split,
)
from diffact.errors import DiffActError


def test_round_trip(data_root, tiny_cfg) -> None:
    root = data_root / "synthetic"
    names = read_mapping(root / "mapping.txt")
    assert names == ["background", "action0", "action1", "action2", "action3"]
    train = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)
    test = MSTCNDataset(data_root, "synthetic", 1, "test", tiny_cfg)
    assert len(train) == 6 and len(test) == 2 and not set(train.names) & set(test.names)
    for video in train.videos:
        labels = read_labels(root / "groundTruth" / f"{video.name}.txt")
        assert [names[i] for i in video.ids] == labels
        assert video.features.shape == (16, len(labels)) and 60 <= len(labels) <= 120
        runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, video.ids, -1])))
        assert runs[:-1].min() >= 8 and runs.max() <= 25
    item = train[(3, 2)]
    assert item["features"].shape == (16, train.videos[2].num_frames)
    assert item["boundary"].max() == pytest.approx(1.0)
    assert item["seed"] == train[(3, 2)]["seed"] != train[(4, 2)]["seed"]


def test_sample_rate_offsets(data_root, tiny_cfg) -> None:
    cfg = tiny_cfg.with_updates(data={"sample_rate": 2})
    ds = MSTCNDataset(data_root, "synthetic", 1, "train", cfg)
    video = ds.videos[0]
    offsets = set()
    for epoch in range(12):
        item = ds[(epoch, 0)]
        full = torch.from_numpy(video.features)
        offset = 0 if torch.equal(item["features"], full[:, 0::2]) else 1
        assert torch.equal(item["features"], full[:, offset::2])
        assert torch.equal(item["labels"], torch.from_numpy(video.ids[offset::2]))
        assert item["boundary"].max() == pytest.approx(1.0)
        offsets.add(offset)
    assert offsets == {0, 1}


def test_inference_reassembles_every_frame(data_root, tiny_cfg) -> None:
    from diffact.model import DiffActModel
    from diffact.predict import DiffActSegmenter

    for rate in (2, 3):
        cfg = tiny_cfg.with_updates(data={"sample_rate": rate}, postprocess={"kind": "median", "value": 3})
        video = MSTCNDataset(data_root, "synthetic", 1, "test", cfg).videos[0]
        segmenter = DiffActSegmenter(
            DiffActModel.from_diffact_config(cfg), cfg, [str(i) for i in range(5)], "cpu"
        )
        pred = segmenter.predict(video.features, num_steps=2, name=video.name)
        assert pred.labels.shape == (video.num_frames,) and pred.probs.shape == (5, video.num_frames)
        assert len(pred.names) == video.num_frames
        assert sum(s.end - s.start for s in pred.segments) == video.num_frames
        noagg = segmenter.predict(video.features, mode="decoder-noagg", num_steps=2)
        assert noagg.labels.shape == (video.num_frames,)


def test_multi_crop_features(tmp_path, data_root, tiny_cfg) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root / "synthetic", root / "synthetic")
    path = root / "synthetic" / "features" / "video000.npy"
    feats = np.load(path)
    np.save(path, np.stack([feats.T, feats.T + 1.0], axis=1))  # (T, S=2, F)
    ds = MSTCNDataset(root, "synthetic", 1, "train", tiny_cfg)
    crops = {float(ds[(e, 0)]["features"][0, 0] - feats[0, 0]) for e in range(10)}
    assert crops == {0.0, 1.0}


def test_class_weights_and_validation_split() -> None:
    w = class_weights([np.array([0, 0, 0, 1]), np.array([1, 2, IGNORE_INDEX])], 4)
    n, counts = 6, np.array([3, 2, 1, 0])
    np.testing.assert_allclose(w, n / ((counts + 10) * 4), rtol=1e-6)
    names = [f"v{i}" for i in range(20)]
    train, val = validation_split(names, 0.15, 0)
    assert len(val) == 3 and set(train) | set(val) == set(names) and not set(train) & set(val)
    assert validation_split(list(reversed(names)), 0.15, 0)[1] == sorted(val, key=names[::-1].index)
    assert len(validation_split(names[:3], 0.15, 0)[1]) == 1


def write_video(root, name, feats, labels):
    np.save(root / "features" / f"{name}.npy", feats)
    (root / "groundTruth" / f"{name}.txt").write_text("".join(f"{x}\n" for x in labels))


@pytest.fixture
def bad_root(tmp_path, data_root):
    shutil.copytree(data_root / "synthetic", tmp_path / "synthetic")
    return tmp_path


def test_missing_files_listed_at_once(bad_root, tiny_cfg) -> None:
    root = bad_root / "synthetic"
    (root / "features" / "video000.npy").unlink()
    (root / "groundTruth" / "video001.txt").unlink()
    with pytest.raises(DiffActError, match=r"2 missing files.*video000\.npy.*video001\.txt"):
        MSTCNDataset(bad_root, "synthetic", 1, "train", tiny_cfg)


@pytest.mark.parametrize(
    ("feats", "labels", "match"),
    [
        (np.zeros((16, 1), np.float32), ["background"], "1 frames"),
        (np.zeros((30, 16), np.float32), ["background"] * 30, "transpose"),
        (np.zeros(16, np.float32), ["background"], "2-D"),
        (np.full((16, 5), np.nan, np.float32), ["background"] * 5, "NaN"),
        (np.zeros((16, 5), np.float32), ["background"] * 4, "5 frames but .* 4 labels"),
        (np.zeros((16, 3), np.float32), ["background", "jump", "background"], "line 2: label 'jump'"),
    ],
)
def test_bad_video_raises_naming_file(bad_root, tiny_cfg, feats, labels, match) -> None:
    write_video(bad_root / "synthetic", "video000", feats, labels)
    with pytest.raises(DiffActError, match=match) as err:
        MSTCNDataset(bad_root, "synthetic", 1, "train", tiny_cfg)
    assert "video000" in str(err.value)


def test_tolerant_options(bad_root, tiny_cfg) -> None:
    root = bad_root / "synthetic"
    write_video(
        root, "video000", np.zeros((16, 5), np.float32), ["background", "jump", "action0", "action0", "x"][:4]
    )
    cfg = tiny_cfg.with_updates(data={"length_mismatch": "truncate", "unknown_label": "ignore"})
    video = MSTCNDataset(bad_root, "synthetic", 1, "train", cfg).videos[0]
    assert video.num_frames == 4 and video.ids.tolist() == [0, IGNORE_INDEX, 1, 1]


def test_bad_layout_files(tmp_path) -> None:
    (tmp_path / "mapping.txt").write_text("0 a\n2 b\n")
    with pytest.raises(DiffActError, match=r"mapping\.txt, line 2: id 2"):
        read_mapping(tmp_path / "mapping.txt")
    (tmp_path / "mapping.txt").write_text("0 a\n1 a\n")
    with pytest.raises(DiffActError, match="duplicate"):
        read_mapping(tmp_path / "mapping.txt")
    (tmp_path / "empty.bundle").write_text("\n")
    with pytest.raises(DiffActError, match="empty"):
        read_bundle(tmp_path / "empty.bundle")
    (tmp_path / "b.bundle").write_text("rgb.cam.P03.txt\n")
    assert read_bundle(tmp_path / "b.bundle") == ["rgb.cam.P03"]
    (tmp_path / "gt.txt").write_text("a\n\na\n")
    with pytest.raises(DiffActError, match=r"gt\.txt: blank line"):
        read_labels(tmp_path / "gt.txt")
    (tmp_path / "ok.txt").write_text("a\nb\n\n")
    assert read_labels(tmp_path / "ok.txt") == ["a", "b"]
    with pytest.raises(DiffActError, match="does not exist"):
        load_features(tmp_path / "none.npy", 16)
