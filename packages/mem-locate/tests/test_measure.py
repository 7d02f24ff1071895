import pytest
import torch

from difflab_core.metrics import SSCDEmbedder, rmse, ssim
from mem_locate.errors import MemLocateError
from mem_locate.measure import load_sscd, localized_similarity, masked_sse, webster_template_match


def test_ls_reduces_to_plain_metrics():
    torch.manual_seed(0)
    g = torch.rand(3, 3, 16, 16)
    r = torch.rand(2, 3, 16, 16)
    ones = torch.ones(4, 4)
    out = localized_similarity(g, r, ones, metric="ssim")
    for i in range(2):
        torch.testing.assert_close(out["matrix"][i], ssim(g, r[i : i + 1].expand_as(g)), atol=1e-5, rtol=1e-5)
    pix = localized_similarity(g, r, ones, metric="pixel")
    for i in range(2):
        torch.testing.assert_close(
            pix["matrix"][i], 1 - rmse(g, r[i : i + 1].expand_as(g)), atol=1e-6, rtol=1e-6
        )
    assert pix["mean"] == pytest.approx(float(pix["matrix"].max(0).values.mean()))
    same = localized_similarity(g, g[:1], torch.rand(3, 4, 4) + 0.1)
    assert same["matrix"][0, 0] == pytest.approx(1.0)


def test_ls_weights_the_masked_region():
    g = torch.zeros(1, 3, 8, 8)
    r = torch.zeros(1, 3, 8, 8)
    r[..., 4:] = 1.0  # differs only in the right half
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    assert localized_similarity(g, r, left, metric="pixel")["max"] == pytest.approx(1.0)
    # w = 2 on the right half, where (g − r)² = 1: mean(w·d²) = 1
    assert localized_similarity(g, r, 1 - left, metric="pixel")["max"] == pytest.approx(0.0, abs=1e-6)
    assert localized_similarity(g, r, None, metric="pixel")["max"] == pytest.approx(1 - 0.5**0.5)


class _Stub(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_sscd_path(tmp_path):
    path = tmp_path / "stub.pt"
    torch.jit.script(_Stub()).save(str(path))
    emb = load_sscd(path)
    assert isinstance(emb, SSCDEmbedder)
    g = torch.rand(2, 3, 32, 32)
    out = localized_similarity(g, g[:1], torch.ones(8, 8), metric="sscd", embedder=emb)
    assert out["matrix"][0, 0] == pytest.approx(1.0, abs=1e-5)
    assert out["unmasked"]["matrix"].shape == (1, 2)
    with pytest.raises(MemLocateError, match="does not exist"):
        load_sscd(tmp_path / "nope.pt")


def test_webster():
    t = torch.rand(1, 3, 32, 32)
    m = torch.zeros(1, 32, 32)
    m[:, :8, :8] = 1
    assert bool(webster_template_match(t, t, m)[0])
    sse = masked_sse(t, 1 - t, m)
    tt = torch.nn.functional.interpolate(t, size=256, mode="bilinear", align_corners=False)
    mm = torch.nn.functional.interpolate(m[:, None], size=256, mode="nearest")
    expect = (((tt - (1 - tt)) * mm) ** 2).sum() / mm.mean()
    assert float(sse[0]) == pytest.approx(float(expect), rel=1e-5)
