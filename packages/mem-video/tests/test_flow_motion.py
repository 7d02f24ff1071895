import math

import pytest
import torch

from mem_video import (
    FarnebackFlow,
    MemVideoError,
    NaturalMotionFilter,
    RAFTFlow,
    VideoClip,
    flow_similarity,
    ofs_k,
    video_flows,
)


def _texture(size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 6, size // 6, generator=g)
    return torch.nn.functional.interpolate(
        base, size=(size, size), mode="bicubic", align_corners=False
    ).clamp(0, 1)


def test_farneback_recovers_shift():
    tex = _texture()
    a = tex[..., 8:72, 8:72]
    b = tex[..., 7:71, 6:70]  # content moves by (+2, +1) px in (x, y)
    flow = FarnebackFlow().estimate(a, b)
    assert flow.shape == (1, 2, 64, 64)
    inner = flow[0, :, 12:-12, 12:-12].mean(dim=(1, 2))
    assert abs(float(inner[0]) - 2.0) < 0.3 and abs(float(inner[1]) - 1.0) < 0.3


def test_raft_random_weights_and_size_checks(tmp_path):
    raft = RAFTFlow(None, "small", num_flow_updates=1, device="cpu")
    out = raft.estimate(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    assert out.shape == (1, 2, 128, 128)
    for bad in (120, 132):
        with pytest.raises(MemVideoError, match=r"multiples of 8|>= 128"):
            raft.estimate(torch.rand(1, 3, bad, bad), torch.rand(1, 3, bad, bad))
    from safetensors.torch import save_file

    state = raft.model.state_dict()
    path = tmp_path / "raft_small.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    pth = tmp_path / "raft_small.pth"
    torch.save(state, pth)
    for p in (path, pth):
        again = RAFTFlow(p, "small", device="cpu").model.state_dict()
        assert again.keys() == state.keys()
        assert all(torch.equal(again[k], state[k]) for k in state)
    with pytest.raises(MemVideoError, match="do not match raft_large"):
        RAFTFlow(path, "large", device="cpu")


def test_video_flows_units_and_errors():
    tex = _texture(160)
    frames = torch.stack([tex[0, :, 20:84, 20 + 2 * t : 84 + 2 * t] for t in range(5)])
    flows = video_flows(VideoClip(frames), FarnebackFlow(), size=64, grid=8)
    assert flows.shape == (4, 2, 8, 8)
    # the content moves left by 2 px per frame: -2/64 of the width
    assert float(flows[:, 0, 2:-2, 2:-2].mean()) == pytest.approx(-2 / 64, abs=0.3 / 64)
    with pytest.raises(MemVideoError, match="at least 2 frames"):
        video_flows(VideoClip(frames[:1]), FarnebackFlow(), size=64)
    with pytest.raises(MemVideoError, match="flow_size"):
        video_flows(VideoClip(frames), RAFTFlow(None, "small", device="cpu"), size=64)


def _random_flows(t, seed, g=8):
    return torch.randn(t, 2, g, g, generator=torch.Generator().manual_seed(seed))


def test_ofs_identical_shifted_random():
    a = _random_flows(15, 0)
    m = ofs_k(a, a, 8)
    assert m.score == pytest.approx(1.0, abs=1e-6) and m.offset == 0
    ref = _random_flows(20, 1)
    gen = ref[5:15].clone()  # gen transition t is ref transition t + 5
    m = ofs_k(gen, ref, 8)
    assert m.score == pytest.approx(1.0, abs=1e-6) and m.offset == 5
    assert ofs_k(_random_flows(15, 2), _random_flows(15, 3), 8).score < 0.5
    assert ofs_k(_random_flows(3, 4), _random_flows(15, 5), 8).k == 3
    assert ofs_k(_random_flows(6, 4), _random_flows(9, 5), "all").k == 6


def test_flow_similarity_matches_cosine_and_zero_flows():
    a, b = _random_flows(3, 0), _random_flows(4, 1)
    s = flow_similarity(a, b)
    manual = torch.nn.functional.cosine_similarity(a.flatten(1)[:, None], b.flatten(1)[None], dim=2)
    assert torch.allclose(s, manual, atol=1e-5)
    z = torch.zeros(3, 2, 8, 8)
    s0 = flow_similarity(z, b)
    assert torch.equal(s0, torch.zeros(3, 4))
    assert ofs_k(z, z, 2).score == 0.0
    w = flow_similarity(a, a, weighted=True)
    assert torch.allclose(torch.diagonal(w), torch.ones(3), atol=1e-5)


def _field(fn, t=6, g=16):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
    u, v = fn(xs, ys)
    return torch.stack([u, v])[None].expand(t, 2, g, g).clone() * 0.02


def test_nmf_static_and_camera_rules():
    nmf = NaturalMotionFilter()
    noise = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 1e-4
    assert nmf.classify(noise).reason == "static"
    pan = _field(lambda x, y: (torch.ones_like(x), 0.5 * torch.ones_like(x)))
    zoom = _field(lambda x, y: (x, y))
    rot = _field(lambda x, y: (-y * math.pi / 8, x * math.pi / 8))
    for f in (pan, zoom, rot):
        assert nmf.classify(f + noise).reason == "camera"
    assert NaturalMotionFilter(camera_model="homography").classify(pan + noise).reason == "camera"


def test_nmf_sprites_and_residual_mode():
    f = torch.zeros(6, 2, 16, 16)
    f[:, 0, 2:5, 2:5] = 0.05
    f[:, 1, 10:13, 9:12] = -0.04
    nmf = NaturalMotionFilter()
    assert not nmf.classify(f).natural
    pan = _field(lambda x, y: (torch.ones_like(x), torch.zeros_like(x)))
    sprite = torch.zeros_like(pan)
    sprite[:, :, 6:8, 6:8] = 0.2
    res = NaturalMotionFilter(mode="residual").object_motion(pan + sprite)
    # the camera flow is gone: away from the sprite almost nothing is left
    outside = res.clone()
    outside[:, :, 6:8, 6:8] = 0
    assert outside.abs().max() < 0.01
    assert float(torch.nn.functional.cosine_similarity(res.flatten(), sprite.flatten(), dim=0)) > 0.95


def test_ofs_matches_brute_force():
    from mem_video.motion import ofs_from_similarity

    for seed in range(4):
        s = torch.randn(
            7 + seed, 11 - seed, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        k = 4
        best = (-float("inf"), 0, 0)
        for t in range(s.shape[0] - k + 1):
            for u in range(s.shape[1] - k + 1):
                v = sum(float(s[t + m, u + m]) for m in range(k)) / k
                if v > best[0]:
                    best = (v, u - t, t)
        m = ofs_from_similarity(s, k)
        assert m.score == pytest.approx(best[0], abs=1e-9)
        assert (m.offset, m.start) == best[1:]
