"""`prepare`: raw FaceForensics++ / Celeb-DF v2 trees to DeepfakeBench frames + JSON."""

import json

import numpy as np
import pytest

from forgery_kd import DeepfakeBenchDataset, FaceCropper, ForgeryKDError
from forgery_kd.prepare import prepare_celebdf, prepare_faceforensics

av = pytest.importorskip("av")


def write_video(path, n=4, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 32, 3), (value + 30 * i) % 255, np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_faceforensics_layout(tmp_path):
    raw = tmp_path / "ff"
    for vid in ("000", "001", "002", "003"):
        write_video(raw / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    for vid in ("000_001", "001_000", "002_003"):
        write_video(raw / "manipulated_sequences/Deepfakes/c23/videos" / f"{vid}.mp4", value=100)
    for folder in ("Face2Face", "FaceSwap", "NeuralTextures"):
        (raw / "manipulated_sequences" / folder / "c23/videos").mkdir(parents=True)
    (raw / "train.json").write_text(json.dumps([["000", "001"]]))
    (raw / "val.json").write_text(json.dumps([]))
    (raw / "test.json").write_text(json.dumps([["002", "003"]]))
    info = prepare_faceforensics(raw, tmp_path / "out", frames=2, cropper=FaceCropper("none", size=16))
    assert info["videos"] == 7 and info["face_fraction"] == 0.0
    train = DeepfakeBenchDataset(
        info["json"].parent, "FaceForensics++", "train", rgb_root=tmp_path / "out", img_size=16
    )
    assert train.labels.count(0) == 4 and train.labels.count(1) == 4  # 2 real + 2 fake videos × 2 frames
    test = DeepfakeBenchDataset(
        info["json"].parent, "FaceForensics++", "test", rgb_root=tmp_path / "out", img_size=16
    )
    assert set(test.kinds) == {"FF-real", "FF-DF"}
    with pytest.raises(ForgeryKDError, match="c40"):
        prepare_faceforensics(raw, tmp_path / "out40", compression="c40", frames=1)


def test_celebdf_layout_and_label_check(tmp_path):
    raw = tmp_path / "celeb"
    write_video(raw / "Celeb-real/id0_0000.mp4")
    write_video(raw / "YouTube-real/00000.mp4")
    write_video(raw / "Celeb-synthesis/id0_id1_0000.mp4", value=90)
    write_video(raw / "Celeb-synthesis/id1_id0_0000.mp4", value=90)
    (raw / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
    )
    info = prepare_celebdf(raw, tmp_path / "out", frames=2, cropper=FaceCropper("none", size=16))
    test = DeepfakeBenchDataset(
        info["json"].parent, "Celeb-DF-v2", "test", rgb_root=tmp_path / "out", img_size=16
    )
    assert test.labels == [0, 0, 1, 1]
    (raw / "List_of_testing_videos.txt").write_text("0 YouTube-real/00000.mp4\n")
    with pytest.raises(ForgeryKDError, match="contradicts folder YouTube-real"):
        prepare_celebdf(raw, tmp_path / "out2", frames=1)
