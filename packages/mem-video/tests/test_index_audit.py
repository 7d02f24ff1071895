import json

import pytest
import torch

from mem_video import (
    ClipSource,
    MemVideoError,
    TinyImageEmbedder,
    VideoIndex,
    audit,
    generate_videos,
    read_video,
)


class _Failing:
    """A source that raises on item ``fail_at`` (an injected crash)."""

    def __init__(self, clips, fail_at=None):
        self.inner = ClipSource(clips)
        self.fail_at = fail_at

    def __iter__(self):
        for n, item in enumerate(self.inner):
            if n == self.fail_at:
                item.clip = None  # loading it now fails
            yield item


def test_index_resume_identical(sprite_testbed, tmp_path):
    clips = sprite_testbed.videos[:6] + sprite_testbed.images[:2]
    kw = {"content_fps": None, "flow_size": (64, 64), "batch_size": 2}
    clean = VideoIndex.build(ClipSource(clips), tmp_path / "clean", **kw)
    with pytest.raises(MemVideoError):
        VideoIndex.build(_Failing(clips, fail_at=5), tmp_path / "resumed", **kw)
    with pytest.raises(MemVideoError, match="manifest"):
        VideoIndex.open(tmp_path / "resumed")
    resumed = VideoIndex.build(ClipSource(clips), tmp_path / "resumed", **kw)
    assert [r["id"] for r in resumed.items] == [c.id for c in clips]
    assert torch.equal(resumed.content, clean.content)
    assert torch.equal(resumed.flows, clean.flows)
    assert torch.equal(resumed.frame_to_item, clean.frame_to_item)
    lines = (tmp_path / "resumed" / "items.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) == len(clips)
    with pytest.raises(MemVideoError, match="built with embedder"):
        VideoIndex.open(tmp_path / "clean", embedder=TinyImageEmbedder(8))
    with pytest.raises(MemVideoError, match="fingerprint"):
        VideoIndex.build(ClipSource(clips), tmp_path / "clean", content_fps=2.0, flow_size=(64, 64))


def test_top1_content_search_finds_source(sprite_testbed, testbed_index):
    clips = {c.id: c for c in sprite_testbed.generated}
    for lab in sprite_testbed.labels:
        if lab["type"] == "both":
            emb = testbed_index.embedder.embed(clips[lab["id"]].frames)
            assert testbed_index.search_content(emb, 1)[0].item == lab["content_source"]
    natural = {r["id"]: r["natural"] for r in testbed_index.items}
    assert all(natural[f"train_static_{n:03d}"] == "static" for n in range(5))


class _Counting:
    """Forwards to a pipeline and counts its calls."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.pipe(*args, **kwargs)


def test_generate_and_audit_tiny_t2v(video_pipe, sprite_testbed, tmp_path):
    pipe = _Counting(video_pipe)
    prompts = [{"prompt_id": "a", "prompt": "a cat"}, {"prompt_id": "b", "prompt": "a dog"}]
    kw = {"num_videos_per_prompt": 1, "num_inference_steps": 2, "num_frames": 4, "guidance_scale": 7.5}
    rows = generate_videos(pipe, prompts, tmp_path / "gen", **kw)
    assert len(rows) == 2 and pipe.calls == 2
    clip = read_video(tmp_path / "gen" / rows[0]["path"])
    assert clip.frames.shape == (4, 3, 32, 32)
    assert rows[1]["seed"] == 1000
    generate_videos(pipe, prompts, tmp_path / "gen", **kw)
    assert pipe.calls == 2  # the rerun skipped both
    index = VideoIndex.build(
        ClipSource(sprite_testbed.videos[:3]), tmp_path / "ix", content_fps=None, flow_size=(32, 32), grid=16
    )
    report = audit(tmp_path / "gen", index, tmp_path / "audit")
    for name in ("scores.jsonl", "summary.json", "report.html"):
        assert (tmp_path / "audit" / name).is_file()
    assert {r["id"] for r in report.rows} == {"a_0", "b_0"}
    assert report.rows[0]["prompt_id"] == "a"
    again = audit(tmp_path / "gen", index, tmp_path / "audit")
    assert again.rows == report.rows
    with pytest.raises(MemVideoError, match="fingerprint"):
        audit(tmp_path / "gen", index, tmp_path / "audit", tau_m=0.9)


def test_audit_bad_inputs(tmp_path, testbed_index):
    with pytest.raises(MemVideoError, match="does not exist"):
        audit(tmp_path / "nope", testbed_index, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemVideoError, match="no videos"):
        audit(tmp_path / "empty", testbed_index, tmp_path / "out2")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"garbage" * 20)
    with pytest.raises(MemVideoError, match=r"x\.mp4"):
        audit(tmp_path / "bad", testbed_index, tmp_path / "out3")
