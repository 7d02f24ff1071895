import os

import numpy as np
import pytest
import torch

from mem_video import MemVideoError, VideoClip, read_video, to_clip, to_clips, write_video


def _clip(frames=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth content survives lossy codecs
    base = torch.rand(frames, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return VideoClip(x, fps=8.0, id="c")


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_pyav_roundtrip(tmp_path, codec):
    clip = _clip()
    path = write_video(tmp_path / f"v_{codec}.mp4", clip, codec=codec)
    back = read_video(path)
    assert back.frames.shape == (16, 3, 32, 32)
    assert back.fps == pytest.approx(8.0)
    assert (back.frames - clip.frames).abs().mean() < 0.05


def test_read_skimage_gif():
    import skimage

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "no_time_for_that_tiny.gif")
    clip = read_video(path)
    assert clip.num_frames == 24
    assert clip.frames.shape[1] == 3
    assert float(clip.frames.min()) >= 0 and float(clip.frames.max()) <= 1


def test_frame_folder_and_npy(tmp_path):
    from PIL import Image

    clip = _clip(frames=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(clip.frames):
        Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"{i:03d}.png"
        )
    back = read_video(folder)
    assert back.num_frames == 5
    assert torch.allclose(back.frames, clip.frames, atol=1 / 255 + 1e-6)
    npy = write_video(tmp_path / "a.npy", clip)
    assert torch.allclose(read_video(npy).frames, clip.frames, atol=1 / 255 + 1e-6)
    npz = write_video(tmp_path / "a.npz", VideoClip(clip.frames, fps=12.0))
    assert read_video(npz).fps == 12.0


def test_read_options(tmp_path):
    path = write_video(tmp_path / "a.npz", _clip(frames=16))
    assert read_video(path, fps=4.0).num_frames == 8
    assert read_video(path, max_frames=3).num_frames == 3
    assert read_video(path, size=(16, 24)).size == (16, 24)
    assert read_video(path, start_s=1.0).num_frames == 8


def test_to_clip_layouts():
    x = torch.rand(4, 3, 8, 8)
    ref = to_clip(x).frames
    assert torch.equal(to_clip(x.permute(0, 2, 3, 1).numpy()).frames, ref)
    assert torch.equal(to_clip(x.permute(1, 0, 2, 3)).frames, ref)
    assert torch.allclose(to_clip(x * 2 - 1).frames, ref, atol=1e-6)
    batch = to_clips(np.stack([x.permute(0, 2, 3, 1).numpy()] * 2))
    assert len(batch) == 2 and torch.equal(batch[1].frames, ref)
    from PIL import Image

    pil = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for f in x]
    assert to_clip(pil).frames.shape == (4, 3, 8, 8)

    class Out:
        frames = x[None]

    assert torch.equal(to_clip(Out()).frames, ref)


def test_to_clip_ambiguous_layout_raises():
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(MemVideoError, match="layout"):
        to_clip(x)
    assert to_clip(x, layout="CFHW").frames.shape == (3, 3, 8, 8)


def test_bad_inputs(tmp_path):
    with pytest.raises(MemVideoError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MemVideoError, match=r"broken\.mp4"):
        read_video(bad)
    folder = tmp_path / "mixed"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "0.png")
    Image.new("RGB", (9, 8)).save(folder / "1.png")
    with pytest.raises(MemVideoError, match="mismatched sizes"):
        read_video(folder)
    with pytest.raises(MemVideoError, match="NaN"):
        VideoClip(torch.full((2, 3, 4, 4), float("nan")))
