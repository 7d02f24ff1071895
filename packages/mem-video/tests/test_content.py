import warnings

import pytest
import torch

from difflab_core.metrics import roc_auc
from mem_video import (
    TinyImageEmbedder,
    content_match,
    create_embedder,
    default_tau_c,
    video_level_match,
)
from mem_video.embed import check_tau


def test_embeddings_unit_norm_and_ncc():
    e = TinyImageEmbedder()
    x = torch.rand(5, 3, 40, 48)
    z = e.embed(x)
    assert z.shape == (5, 768)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    # normalised cross-correlation of 16×16 thumbnails, computed independently with numpy
    import numpy as np

    t = torch.nn.functional.interpolate(x, size=(16, 16), mode="area").flatten(1).numpy().astype(np.float64)
    t = t - t.mean(1, keepdims=True)
    ncc = (t[0] @ t[1]) / np.linalg.norm(t[0]) / np.linalg.norm(t[1])
    assert float(z[0] @ z[1]) == pytest.approx(ncc, abs=1e-5)


def test_identical_videos_score_one():
    e = TinyImageEmbedder()
    v = e.embed(torch.rand(8, 3, 32, 32))
    m = content_match(v, v, 0.85)
    assert m.score == pytest.approx(1.0, abs=1e-5)
    assert m.coverage == 1.0
    assert video_level_match(v, v).score == pytest.approx(1.0, abs=1e-5)


def test_one_copied_frame():
    e = TinyImageEmbedder()
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(8, 3, 32, 32, generator=g)
    gen = torch.rand(8, 3, 32, 32, generator=g)
    gen[5] = ref[2]
    m = content_match(e.embed(gen), e.embed(ref), 0.85)
    assert m.score >= 0.99
    assert (m.i, m.j) == (5, 2)
    assert m.coverage == pytest.approx(1 / 8)
    assert video_level_match(e.embed(gen), e.embed(ref)).score < 0.5


def test_image_reference():
    e = TinyImageEmbedder()
    frames = torch.rand(6, 3, 32, 32)
    m = content_match(e.embed(frames), e.embed(frames[3:4]), 0.85)
    assert m.score == pytest.approx(1.0, abs=1e-5) and m.j == 0 and m.i == 3


def test_partial_copies_frame_beats_video_level(sprite_testbed, testbed_audit):
    rows = {r["id"]: r for r in testbed_audit.rows}
    labs = [lab for lab in sprite_testbed.labels if lab["type"] == "partial" or not lab["content"]]
    y = [lab["type"] == "partial" for lab in labs]
    frame = roc_auc([rows[lab["id"]]["content_score"] for lab in labs], y)
    video = roc_auc([rows[lab["id"]]["video_level_score"] for lab in labs], y)
    assert frame == 1.0
    assert frame >= video


def test_thresholds_belong_to_embedders():
    e = create_embedder("tiny")
    assert default_tau_c(e) == 0.85
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert check_tau(e, 0.5) == 0.5
    assert any("SSCD" in str(x.message) for x in w)


def test_sscd_loader_conventions(tmp_path):
    from mem_video import MemVideoError, load_sscd

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 6),
    )
    path = tmp_path / "tiny_sscd.torchscript.pt"
    torch.jit.script(net).save(str(path))
    frames = torch.rand(2, 3, 64, 96)
    dcr = load_sscd(path, "dcr", device="cpu")
    assert dcr.model_input(frames).shape == (2, 3, 224, 224)
    sscd = load_sscd(path, "sscd", device="cpu")
    assert sscd.model_input(frames).shape == (2, 3, 288, 432)
    z = dcr.embed(frames)
    assert z.shape == (2, 6) and torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    assert default_tau_c(dcr) == 0.5 and dcr.config()["preprocess"] == "dcr"
    with pytest.raises(MemVideoError, match="does not exist"):
        load_sscd(tmp_path / "none.pt")
    bad = tmp_path / "state.pt"
    torch.save(net.state_dict(), bad)
    with pytest.raises(MemVideoError, match="TorchScript"):
        load_sscd(bad, device="cpu")
