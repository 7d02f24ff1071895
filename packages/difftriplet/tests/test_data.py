"""Loaders, layouts and bad input (§4.1, §7): every error names the file and the item."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from difftriplet.data import (
    TripletFeatureDataset,
    load_features,
    read_cholect45_labels,
    read_cholect50_labels,
)
from difftriplet.errors import DiffTripletError
from difftriplet.splits import Split
from difftriplet.synthetic import make_cholect45_dataset


def write_label(tmp_path, record, name="VID01.json"):
    path = tmp_path / name
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def instance(triplet, i=0, v=2, t=0):
    return [triplet, i, 1.0, -1, -1, -1, -1, v, t, 1.0, -1, -1, -1, -1, 0]


def record(annotations, num_frames=3, **extra):
    return {"video": 1, "fps": 1, "num_frames": num_frames, "annotations": annotations, **extra}


def test_cholect50_json_to_joint_labels(tmp_path, space):
    path = write_label(
        tmp_path, record({"0": [instance(1), instance(94, 0, 9, 14)], "1": [], "2": [instance(-1)]})
    )
    labels = read_cholect50_labels(path, space)
    assert labels.y.shape == (3, 131) and labels.num_frames == 3 and labels.fps == 1
    assert np.flatnonzero(labels.y[0]).tolist() == [1, 94, 100, 108, 115, 116, 130]
    assert labels.y[1:].sum() == 0
    assert labels.names["ivt"][1] == "grasper,dissect,gallbladder"


def test_cholect45_and_cholect50_layouts_load_identical_labels(t50, tmp_path, tiny_cfg, split):
    t45 = make_cholect45_dataset(tmp_path / "CholecT45", videos=t50.videos, seed=0, write_frames=False)
    a = TripletFeatureDataset(t50.root, "cholect50", split, "test", "synthetic", tiny_cfg)
    b = TripletFeatureDataset(t45.root, "cholect45", split, "test", "synthetic", tiny_cfg)
    for x, y in zip(a.videos, b.videos, strict=True):
        assert x.name == y.name and np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.features, y.features)
    item = a[(0, 1)]
    assert item["features"].shape == (32, t50.frames[split.test[1]]) and item["labels"].shape[0] == 131


def test_corrupt_json_gives_line_and_column(tmp_path, space):
    path = write_label(tmp_path, '{"num_frames": 2,\n "annotations": {"0": [}')
    with pytest.raises(DiffTripletError, match=r"VID01.json: invalid JSON at line 2, column \d+"):
        read_cholect50_labels(path, space)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"num_frames": 2}, "missing the 'annotations' key"),
        ({"annotations": {}}, "missing the 'num_frames' key"),
        (record({"0": [], "1": [], "2": []}, fps=25), "fps=25"),
        (record({"0": [], "2": []}, num_frames=5), r"frames 1, 3-4 have no annotation entry"),
        (record({"0": [], "1": [], "2": [], "7": []}), r"frame keys 7 lie outside 0..2"),
        (record({"0": [[1, 0, 2]], "1": [], "2": []}), r"frame 0, instance 0: expected a list of 15 numbers"),
        (record({"0": [], "1": [instance(100)], "2": []}), r"frame 1: triplet ID 100 is outside -1..99"),
        (record({"0": [], "1": [], "2": [instance(-3)]}), r"frame 2: triplet ID -3 is outside -1..99"),
    ],
)
def test_bad_label_json(tmp_path, space, content, message):
    path = write_label(tmp_path, content)
    with pytest.raises(DiffTripletError, match=message) as err:
        read_cholect50_labels(path, space)
    assert "VID01.json" in str(err.value)


def test_frame_gaps_can_be_tolerated(tmp_path, space):
    path = write_label(tmp_path, record({"0": [instance(1)], "2": []}))
    labels = read_cholect50_labels(path, space, missing_frames="empty")
    assert labels.y[1].sum() == 0 and labels.y[0, 1] == 1


def test_component_cross_check(tmp_path, space):
    path = write_label(tmp_path, record({"0": [instance(1, i=3)], "1": [instance(1)], "2": []}))
    with pytest.warns(UserWarning, match="1 instances have instrument/verb/target IDs"):
        labels = read_cholect50_labels(path, space)
    assert labels.component_mismatches == 1 and labels.y[0, 100] == 1  # components from the triplet
    with pytest.raises(DiffTripletError, match="contradict the triplet bank"):
        read_cholect50_labels(path, space, strict=True)
    with pytest.warns(UserWarning):
        from_json = read_cholect50_labels(path, space, component_labels="json")
    assert from_json.y[0, 103] == 1 and from_json.y[0, 100] == 0


def test_bad_cholect45_rows(tmp_path, space):
    row = lambda frame, bit="0": f"{frame}," + ",".join([bit] * 100)  # noqa: E731
    cases = {
        "short.txt": ("0,1,0\n", "expected 101 columns"),
        "binary.txt": (row(0, "2") + "\n", "must be 0 or 1"),
        "gap.txt": (row(0) + "\n" + row(2) + "\n", "contiguous from 0; row 2 has frame_id 2"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DiffTripletError, match=message) as err:
            read_cholect45_labels(tmp_path / name, space)
        assert name in str(err.value)


def test_mapping_mismatch_and_missing_videos(t50, tmp_path, tiny_cfg, split):
    root = tmp_path / "copy"
    shutil.copytree(t50.root, root, ignore=shutil.ignore_patterns("videos"))
    lines = (root / "label_mapping.txt").read_text().splitlines()
    lines[2] = "1,0,2,0,2,1"  # triplet 1 with IT = 1 contradicts T = 0
    (root / "label_mapping.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DiffTripletError, match=r"label_mapping.txt"):
        TripletFeatureDataset(root, "cholect50", split, "test", "synthetic", tiny_cfg)
    shutil.copy(t50.root / "label_mapping.txt", root / "label_mapping.txt")
    lines[2] = "1,0,2,1,2,1"  # consistent row but not the bank's
    (root / "label_mapping.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DiffTripletError, match=r"differs from the ivtmetrics bank in triplet rows \[1\]"):
        TripletFeatureDataset(root, "cholect50", split, "test", "synthetic", tiny_cfg)
    shutil.copy(t50.root / "label_mapping.txt", root / "label_mapping.txt")
    missing = Split(("VID79", "VID11", "VID12"), (), ())
    with pytest.raises(DiffTripletError, match=r"2 train videos of the split are absent .*VID11, VID12"):
        TripletFeatureDataset(root, "cholect50", missing, "train", "synthetic", tiny_cfg)


def test_bad_features(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.full((4, 3), np.nan, dtype=np.float32))
    np.save(tmp_path / "ok.npy", np.zeros((4, 3), dtype=np.float16))
    with pytest.raises(DiffTripletError, match="does not exist"):
        load_features(tmp_path / "none.npy")
    with pytest.raises(DiffTripletError, match=r"flat.npy: features must be 2-D"):
        load_features(tmp_path / "flat.npy")
    with pytest.raises(DiffTripletError, match=r"nan.npy: features contain NaN"):
        load_features(tmp_path / "nan.npy")
    with pytest.raises(DiffTripletError, match="feature size F=4 but the model expects 32"):
        load_features(tmp_path / "ok.npy", feature_dim=32)
    with pytest.raises(DiffTripletError, match="3 feature frames but the labels have 5"):
        load_features(tmp_path / "ok.npy", num_frames=5)
    assert load_features(tmp_path / "ok.npy", num_frames=5, length_mismatch="truncate").dtype == np.float32
