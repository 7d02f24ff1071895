"""Spec §5 test 6 and §7: the DeepfakeBench JSON loader, the CSV loader and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from forgery_kd import DeepfakeBenchDataset, ForgeryKDError, FrameCSVDataset
from forgery_kd.data import even_indices


def write_frames(root, video, n, mode="RGB"):
    folder = root / video
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new(mode, (10, 12), color=(i * 10) % 255 if mode == "L" else None).save(folder / f"{i}.png")
    return [f"{video}/{i}.png" for i in range(n)]


@pytest.fixture
def ff_json(tmp_path):
    frames = write_frames(tmp_path, "real/000", 12)
    fake = write_frames(tmp_path, "fake/000_003", 3, mode="L")
    c40 = write_frames(tmp_path, "real40/001", 4)
    tree = {
        "FaceForensics++": {
            "FF-real": {
                "test": {
                    "c23": {"000": {"label": "FF-real", "frames": frames[::-1]}},
                    "c40": {"001": {"label": "FF-real", "frames": c40}},
                }
            },
            "FF-DF": {"test": {"c23": {"000_003": {"label": "FF-DF", "frames": fake}}, "c40": {}}},
        }
    }
    (tmp_path / "FaceForensics++.json").write_text(json.dumps(tree))
    return tmp_path


def test_frame_num_sampling_and_integer_stem_sorting(ff_json):
    ds = DeepfakeBenchDataset(ff_json, ["FaceForensics++"], "test", frame_num=4, rgb_root=ff_json, img_size=8)
    real = [r.path.name for r in ds.records if r.label == 0]
    # 12 frames sorted 0..11 (10.png after 9.png), 4 evenly spaced: 0, 4, 7, 11
    assert real == ["0.png", "4.png", "7.png", "11.png"] == [f"{i}.png" for i in even_indices(12, 4)]
    assert ds.labels == [0, 0, 0, 0, 1, 1, 1]  # the fake video has only 3 frames: all used
    item = ds[4]
    assert item["image"].shape == (3, 8, 8) and item["label"] == 1  # greyscale converted and resized
    assert ds.video_ids[0].endswith("real/000") and ds.kinds[-1] == "FF-DF"


def test_c40_suffix_selects_the_compression(ff_json):
    ds = DeepfakeBenchDataset(ff_json, ["FaceForensics++_c40"], "test", rgb_root=ff_json, img_size=8)
    assert [r.path.parent.name for r in ds.records] == ["001"] * 4


def test_unknown_label_and_missing_key_name_the_file(ff_json):
    tree = json.loads((ff_json / "FaceForensics++.json").read_text())
    tree["FaceForensics++"]["FF-DF"]["test"]["c23"]["000_003"]["label"] = "FF-XX"
    (ff_json / "FaceForensics++.json").write_text(json.dumps(tree))
    with pytest.raises(ForgeryKDError, match=r"FaceForensics\+\+\.json.*'FF-XX'"):
        DeepfakeBenchDataset(ff_json, "FaceForensics++", "test", rgb_root=ff_json)
    with pytest.raises(ForgeryKDError, match=r"missing key FaceForensics\+\+/FF-real/train"):
        DeepfakeBenchDataset(ff_json, "FaceForensics++", "train", rgb_root=ff_json)
    (ff_json / "Broken.json").write_text("{not json")
    with pytest.raises(ForgeryKDError, match=r"Broken\.json: not valid JSON"):
        DeepfakeBenchDataset(ff_json, "Broken", "test")
    with pytest.raises(ForgeryKDError, match="does not exist"):
        DeepfakeBenchDataset(ff_json, "Celeb-DF-v2", "test")


def test_missing_frames_are_skipped_then_fail_over_the_limit(ff_json):
    (ff_json / "real/000/4.png").unlink()
    with pytest.raises(ForgeryKDError, match="1 of 7 frames are missing"):
        DeepfakeBenchDataset(ff_json, "FaceForensics++", "test", frame_num=4, rgb_root=ff_json)
    ds = DeepfakeBenchDataset(
        ff_json, "FaceForensics++", "test", frame_num=4, rgb_root=ff_json, max_missing=0.2
    )
    assert len(ds) == 6 and len(ds.missing) == 1


def test_unreadable_frame_names_the_file(ff_json):
    (ff_json / "real/000/0.png").write_bytes(b"not a png")
    ds = DeepfakeBenchDataset(ff_json, "FaceForensics++", "test", frame_num=4, rgb_root=ff_json)
    with pytest.raises(ForgeryKDError, match=r"0\.png: cannot read image"):
        ds[0]


def test_csv_dataset(tmp_path):
    write_frames(tmp_path, "v1", 2)
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    (tmp_path / "v2").mkdir()
    Image.fromarray(rgba).save(tmp_path / "v2" / "0.png")
    (tmp_path / "list.csv").write_text(
        "path,label,video_id,split\nv1/0.png,0,v1,test\nv1/1.png,0,v1,test\nv2/0.png,FF-DF,v2,test\nv2/0.png,1,v2,train\n"
    )
    ds = FrameCSVDataset(tmp_path / "list.csv", tmp_path, split="test", img_size=6)
    assert ds.labels == [0, 0, 1] and ds.video_ids == ["v1", "v1", "v2"]
    assert ds[2]["image"].shape == (3, 6, 6)
    (tmp_path / "bad.csv").write_text("path,label\nv1/0.png,0\n")
    with pytest.raises(ForgeryKDError, match="missing columns"):
        FrameCSVDataset(tmp_path / "bad.csv", tmp_path)
