import pytest
import torch

from mem_video import (
    ClipSource,
    FolderSource,
    MemVideoError,
    VideoClip,
    VideoIndex,
    WebVidSource,
    read_prompts,
    write_video,
)


def _clip(fps=8.0, n=4):
    return VideoClip(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)), fps=fps)


def test_folder_and_webvid_sources(tmp_path):
    write_video(tmp_path / "a" / "v1.npz", _clip())
    write_video(tmp_path / "v2.npz", _clip())
    (tmp_path / "caps.csv").write_text("path,caption\na/v1.npz,a red ball\n")
    items = list(FolderSource(tmp_path, tmp_path / "caps.csv"))
    assert [i.id for i in items] == ["a/v1", "v2"] and items[0].caption == "a red ball"
    (tmp_path / "bad.csv").write_text("path,caption\nmissing.mp4,x\n")
    with pytest.raises(MemVideoError, match="1 caption paths do not exist"):
        FolderSource(tmp_path, tmp_path / "bad.csv")
    (tmp_path / "web.csv").write_text("videoid,name\n1,x\n")
    with pytest.raises(MemVideoError, match="missing columns"):
        WebVidSource(tmp_path / "web.csv", tmp_path)


def test_mixed_fps_needs_motion_fps(tmp_path):
    a, b = _clip(8.0), _clip(12.0)
    a.id, b.id = "a", "b"
    with pytest.raises(MemVideoError, match="mixed frame rates"):
        VideoIndex.build(ClipSource([a, b]), tmp_path, motion_fps=None, flow_size=(16, 16), grid=4)


def test_read_prompts(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt_id": "x", "prompt": "a cat", "label": "content"}\n')
    assert read_prompts(tmp_path / "p.jsonl")[0]["label"] == "content"
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert [r["prompt_id"] for r in read_prompts(tmp_path / "p.txt")] == ["p0000", "p0001"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(MemVideoError, match="no 'prompt' field"):
        read_prompts(tmp_path / "bad.jsonl")
