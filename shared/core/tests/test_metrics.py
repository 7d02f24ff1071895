"""Tests of difflab_core.metrics against independent computations (sklearn, skimage, numpy, brute force)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity
from sklearn import metrics as skm
from torch import nn

from difflab_core.errors import DifflabError
from difflab_core.metrics import (
    PixelEmbedder,
    SSCDEmbedder,
    frechet_distance,
    gaussian_window,
    knn,
    masked_rmse,
    rmse,
    roc_auc,
    roc_curve,
    ssim,
    ssim_map,
    tpr_at_fpr,
)

# --------------------------------------------------------------------------------------------------- ROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_curve_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)  # rounding makes many ties
    assert len(np.unique(scores)) < n // 2
    assert roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)

    fpr, tpr, thr = roc_curve(torch.tensor(scores), labels.astype(bool))
    e_fpr, e_tpr, e_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, e_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, e_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr, e_thr)
    assert np.isinf(thr[0]) and (np.diff(thr) < 0).all()


def test_roc_auc_perfect_and_inverted() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5


def test_roc_single_class_raises() -> None:
    with pytest.raises(DifflabError, match="one class"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(DifflabError, match="one class"):
        roc_curve([0.1, 0.2], [0, 0])
    with pytest.raises(DifflabError, match="0/1"):
        roc_auc([0.1, 0.2], [0, 2])


def _crafted() -> tuple[np.ndarray, np.ndarray]:
    # 5 positives, 10 negatives; sorted by score: P P N P P N N N N N N N N N P
    pos = [0.95, 0.9, 0.8, 0.7, 0.05]
    neg = [0.85, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15]
    return np.array(pos + neg), np.array([1] * 5 + [0] * 10)


def test_tpr_at_fpr_rules_differ_on_crafted_roc() -> None:
    scores, labels = _crafted()
    # ROC (fpr, tpr) at thresholds inf, .95, .9, .85, .8, .7, .6, ...:
    # (0,0) (0,.2) (0,.4) (.1,.4) (.1,.6) (.1,.8) (.2,.8) ...
    # target FPR 0.12: last point with FPR < 0.12 is threshold 0.7 -> TPR 0.8;
    # the closest FPR is 0.1 (distance 0.02), first reached at threshold 0.85 -> TPR 0.4.
    assert tpr_at_fpr(scores, labels, fpr=0.12, rule="last_below") == pytest.approx(0.8)
    assert tpr_at_fpr(scores, labels, fpr=0.12, rule="closest") == pytest.approx(0.4)
    # target 0.1: last point with FPR < 0.1 is threshold 0.9 -> 0.4; closest (exactly 0.1, first) -> 0.4
    assert tpr_at_fpr(scores, labels, fpr=0.1, rule="last_below") == pytest.approx(0.4)
    assert tpr_at_fpr(scores, labels, fpr=0.1, rule="closest") == pytest.approx(0.4)
    # target 1.0: last FPR < 1 is at threshold 0.15 (FPR 1.0 is only reached by the last negative) -> 0.8
    assert tpr_at_fpr(scores, labels, fpr=1.0, rule="last_below") == pytest.approx(0.8)
    assert tpr_at_fpr(scores, labels, fpr=1.0, rule="closest") == pytest.approx(0.8)


def test_tpr_at_fpr_tie_between_positive_and_negative() -> None:
    scores, labels = _crafted()
    scores = scores.copy()
    scores[2] = 0.85  # a positive now ties with the top negative: the ROC jumps (0,.4) -> (.1,.6)
    assert tpr_at_fpr(scores, labels, fpr=0.1, rule="last_below") == pytest.approx(0.4)
    assert tpr_at_fpr(scores, labels, fpr=0.1, rule="closest") == pytest.approx(0.6)


def test_tpr_at_fpr_matches_sklearn_reading() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    e_fpr, e_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    for target in (0.01, 0.05, 0.1):
        assert tpr_at_fpr(scores, labels, target) == e_tpr[np.where(e_fpr < target)[0][-1]]
        assert tpr_at_fpr(scores, labels, target, rule="closest") == e_tpr[np.argmin(np.abs(e_fpr - target))]
    with pytest.raises(DifflabError, match="fpr"):
        tpr_at_fpr(scores, labels, 0.0)
    with pytest.raises(DifflabError, match="rule"):
        tpr_at_fpr(scores, labels, 0.1, rule="nearest")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- SSIM


def _smooth_images(seed: int, b: int = 2, c: int = 3, h: int = 40, w: int = 36) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h // 4, w // 4, generator=gen, dtype=torch.float64)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.rand(b, c, h, w, generator=gen, dtype=torch.float64)).clamp(0, 1)


def test_gaussian_window() -> None:
    g = gaussian_window(11, 1.5, dtype=torch.float64)
    x = np.arange(11) - 5
    e = np.exp(-(x**2) / (2 * 1.5**2))
    np.testing.assert_allclose(g.numpy(), e / e.sum(), rtol=1e-12)
    with pytest.raises(DifflabError, match="odd"):
        gaussian_window(10)


def test_ssim_matches_skimage() -> None:
    x = _smooth_images(0)
    y = (x + 0.15 * (_smooth_images(1) - 0.5)).clamp(0, 1)
    smap = ssim_map(x, y)
    assert smap.shape == (2, 40, 36)
    pad = 5  # skimage's scalar averages the map without (win_size - 1) // 2 border pixels
    for i in range(2):
        xi = x[i].permute(1, 2, 0).numpy()
        yi = y[i].permute(1, 2, 0).numpy()
        kw = dict(
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
        )
        mssim, full = structural_similarity(xi, yi, full=True, **kw)
        # our padding is scipy's 'reflect' as skimage uses, so the maps agree everywhere, borders included
        np.testing.assert_allclose(smap[i].numpy(), full.mean(axis=-1), atol=1e-10)
        assert smap[i, pad:-pad, pad:-pad].mean().item() == pytest.approx(mssim, abs=1e-10)
        assert ssim(x, y)[i].item() == pytest.approx(full.mean(), abs=1e-10)


def test_ssim_identity_symmetry_and_gradient() -> None:
    x = _smooth_images(2).float()
    y = _smooth_images(3).float()
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(ssim(x, y).numpy(), ssim(y, x).numpy(), atol=1e-6)
    assert (ssim(x, y) < 0.9).all()

    y = y.clone().requires_grad_(True)
    loss = (1 - ssim(x, y)).sum()
    loss.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # a small step along the negative gradient increases SSIM
    with torch.no_grad():
        stepped = y - 1e-2 * y.grad / y.grad.abs().max()
    assert (ssim(x, stepped) > ssim(x, y.detach())).all()


# --------------------------------------------------------------------------------------------------- embedders


def test_pixel_embedder_is_pearson_correlation() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 8, 8, generator=gen)
    b = torch.rand(2, 3, 8, 8, generator=gen)
    b[0] = 0.5 * a[1] + 0.2  # affine copy: correlation 1
    emb = PixelEmbedder()
    e = emb.embed(a)
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-6)
    sim = emb.similarity(a, b)
    assert sim.shape == (3, 2)
    expected = np.corrcoef(a.flatten(1).numpy(), b.flatten(1).numpy())[:3, 3:]
    np.testing.assert_allclose(sim.detach().numpy(), expected, atol=1e-5)
    assert sim[1, 0].item() == pytest.approx(1.0, abs=1e-5)

    resized = PixelEmbedder(size=4)
    big = F.interpolate(a, size=(16, 16), mode="nearest")
    assert resized.similarity(big, a).diagonal().min().item() > 0.95
    with pytest.raises(DifflabError, match="size"):
        emb.similarity(big, a)


class _TinyDescriptor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) * 3.0


def _save_stub(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    module = _TinyDescriptor().eval()
    path = tmp_path / "sscd_stub.torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return path, module


def test_sscd_torchscript_stub(tmp_path: Path) -> None:
    path, module = _save_stub(tmp_path)
    emb = SSCDEmbedder.from_torchscript(path)
    assert emb.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 256, 256, generator=gen, requires_grad=True)
    out = emb.embed(x)
    assert out.shape == (2, 8)
    # 256x256 needs no resize: crop the centre 224 and map [0,1] -> [-1,1] by hand
    with torch.no_grad():
        ref = F.normalize(module((x[:, :, 16:240, 16:240] - 0.5) * 2.0), dim=1)
    np.testing.assert_allclose(out.detach().numpy(), ref.numpy(), atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    sim = emb.similarity(x.detach(), x.detach())
    np.testing.assert_allclose(sim.diagonal().detach().numpy(), 1.0, atol=1e-6)


def _pil_bilinear(x: torch.Tensor, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize a [3,H,W] float image channel by channel with PIL's (antialiasing) bilinear filter."""
    chans = [Image.fromarray(c.numpy().astype(np.float32)).resize(size_wh, Image.BILINEAR) for c in x]
    return np.stack([np.asarray(c) for c in chans])


@pytest.mark.parametrize(("h", "w"), [(120, 200), (400, 300)])
def test_sscd_preprocess_matches_pil(tmp_path: Path, h: int, w: int) -> None:
    path, _ = _save_stub(tmp_path)
    emb = SSCDEmbedder.from_torchscript(path)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2))
    # shorter side -> 256, longer side truncated like torchvision; then centre crop 224, (x - 0.5) / 0.5
    nh, nw = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
    ref = _pil_bilinear(x[0], (nw, nh))
    top, left = round((nh - 224) / 2), round((nw - 224) / 2)
    ref = (ref[:, top : top + 224, left : left + 224] - 0.5) / 0.5
    got = emb.preprocess(x)
    assert got.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(got[0].numpy(), ref, atol=2e-3)


def test_sscd_missing_or_bad_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.torchscript.pt"
    with pytest.raises(DifflabError, match=r"nope\.torchscript\.pt"):
        SSCDEmbedder.from_torchscript(missing)
    bad = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(DifflabError, match=r"state_dict\.pt"):
        SSCDEmbedder.from_torchscript(bad)


# --------------------------------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_matches_brute_force(metric: str) -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(13, 6, generator=gen, dtype=torch.float64)
    keys = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    vals, idx = knn(q, keys, k=4, metric=metric, chunk=7)  # chunks of 7 force the running merge
    assert vals.shape == idx.shape == (13, 4)

    qn, kn = q.numpy(), keys.numpy()
    if metric == "cosine":
        full = (qn / np.linalg.norm(qn, axis=1, keepdims=True)) @ (
            kn / np.linalg.norm(kn, axis=1, keepdims=True)
        ).T
        order = np.argsort(-full, axis=1)[:, :4]
    else:
        full = np.sqrt(((qn[:, None, :] - kn[None, :, :]) ** 2).sum(-1))
        order = np.argsort(full, axis=1)[:, :4]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_allclose(vals.numpy(), np.take_along_axis(full, order, axis=1), atol=1e-9)

    with pytest.raises(DifflabError, match="k must"):
        knn(q, keys, k=51)


# --------------------------------------------------------------------------------------------------- RMSE


def test_rmse_and_masked_rmse() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    b = torch.rand(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    d = (a - b).numpy()
    np.testing.assert_allclose(rmse(a, b).numpy(), [np.sqrt((d[i] ** 2).mean()) for i in range(2)])

    mask = torch.zeros(2, 5, 4)
    mask[0, :2] = 1.0
    mask[1, :, 3] = 0.7
    mask[1, 0, 0] = 0.4  # below 0.5: not selected
    exp = [np.sqrt((d[0][:, :2] ** 2).mean()), np.sqrt((d[1][:, :, 3] ** 2).mean())]
    for m in (mask, mask[:, None]):
        np.testing.assert_allclose(masked_rmse(a, b, m).numpy(), exp)
    shared = mask[0]
    np.testing.assert_allclose(
        masked_rmse(a, b, shared).numpy(), [np.sqrt((d[i][:, :2] ** 2).mean()) for i in range(2)]
    )
    assert torch.isnan(masked_rmse(a, b, torch.zeros(5, 4))).all()
    with pytest.raises(DifflabError, match="mask"):
        masked_rmse(a, b, torch.ones(3, 5, 4))


# --------------------------------------------------------------------------------------------------- FID


def _frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent route: tr sqrt(Sa Sb) = sum of sqrt eigenvalues of the symmetric Sa^1/2 Sb Sa^1/2."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = (a - mu_a).T @ (a - mu_a) / (len(a) - 1)
    cb = (b - mu_b).T @ (b - mu_b) / (len(b) - 1)
    ev, vec = np.linalg.eigh(ca)
    root = vec @ np.diag(np.sqrt(np.clip(ev, 0, None))) @ vec.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 1.0
    expected = _frechet_reference(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
    # two 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2
    x = rng.normal(size=(1000, 1))
    y = 3.0 * x + 2.0
    assert frechet_distance(x, y) == pytest.approx(
        (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2, rel=1e-8
    )
    with pytest.raises(DifflabError, match="dims"):
        frechet_distance(a, b[:, :3])
