import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from mem_locate.evaluate import detection_metrics, localization_metrics, prepare_localization, sweep


def test_detection_auc_and_rules():
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    y = (s + rng.normal(size=200) > 0).astype(int)
    assert detection_metrics(s, y)["auc"] == pytest.approx(roc_auc_score(y, s))
    # 60 negatives 0..59 (FPR steps of 1/60); positives 60.5, 59 (tied with a negative) and 30: the ROC has
    # (0, 1/3) and (1/60, 2/3); last_below 1% reads FPR 0, closest reads 1/60 ≈ 0.0167
    scores = np.r_[np.arange(60.0), [60.5, 59.0, 30.0]]
    labels = np.r_[np.zeros(60), np.ones(3)].astype(int)
    last = detection_metrics(scores, labels, rule="last_below")["tpr_at_fpr"]
    closest = detection_metrics(scores, labels, rule="closest")["tpr_at_fpr"]
    assert last == pytest.approx(1 / 3) and closest == pytest.approx(2 / 3)


def _squares(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(n):
        m = np.zeros((size, size))
        y, x = rng.integers(0, size - 12, 2)
        m[y : y + 12, x : x + 12] = 1
        masks.append(m)
        maps.append(gaussian_filter(m, 1.0))
    return np.stack(maps), np.stack(masks)


def test_blurred_squares_reach_high_iou():
    maps, masks = _squares()
    out = localization_metrics(maps, masks, size=64)
    assert out["best_iou"] >= 0.9 and out["best_miou"] >= 0.9 and out["best_acc"] >= 0.97
    assert out["auroc"] > 0.99


def test_sweep_matches_brute_force_and_empty_union():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 8)
    masks = torch.rand(3, 8, 8) > 0.6
    masks[2] = False  # empty mask
    x[2] = 0.0  # and an empty prediction at every θ ≥ 0 → union 0 → IoU 1
    th = np.linspace(-1e-6, 1 + 1e-6, 11)
    res = sweep(x, masks, th)
    for j, t in enumerate(th):
        pred = x > t
        inter = (pred & masks).sum(dim=(1, 2)).double()
        union = (pred | masks).sum(dim=(1, 2)).double()
        per = torch.where(union > 0, inter / union.clamp_min(1), torch.ones(3, dtype=torch.float64))
        assert res["miou"][j] == pytest.approx(float(per.mean()))
        assert res["iou"][j] == pytest.approx(float(inter.sum() / union.sum()))
        assert res["acc"][j] == pytest.approx(float((pred == masks).double().mean()))
    assert res["miou"][1] > 0  # image 2 contributes 1 when θ ≥ 0


def test_global_normalisation_differs_from_per_image():
    # A's background (0.2) is brighter than B's target (0.1): one global θ cannot fit both, per image it can
    a = np.full((8, 8), 0.2)
    a[:4] = 1.0
    b = np.zeros((8, 8))
    b[4:] = 0.1
    masks = np.stack([a == 1.0, b > 0]).astype(float)
    out = localization_metrics(np.stack([a, b]), masks, size=8, heldout=False)
    per_image = [
        localization_metrics(m[None], k[None], size=8, heldout=False)["best_iou"]
        for m, k in zip([a, b], masks, strict=True)
    ]
    assert per_image == [1.0, 1.0]
    assert out["best_iou"] < 1.0


def test_heldout_threshold_ignores_order_and_perfect_auroc():
    maps, masks = _squares(n=8, seed=1)
    groups = [f"g{i}" for i in range(8)]
    out = localization_metrics(maps, masks, size=32, groups=groups, strata=["TV"] * 8)
    perm = np.random.default_rng(3).permutation(8)
    out2 = localization_metrics(
        maps[perm], masks[perm], size=32, groups=[groups[i] for i in perm], strata=["TV"] * 8
    )
    assert out["heldout_threshold"] == out2["heldout_threshold"]
    assert out["heldout_iou"] == pytest.approx(out2["heldout_iou"])
    perfect = localization_metrics(masks * 3.0, masks, size=32, heldout=False)
    assert perfect["auroc"] == 1.0 and perfect["auroc_pooled"] == 1.0


def test_mask_preparation():
    m, k = prepare_localization(np.ones((1, 4, 4)), np.full((1, 2, 2), 200.0), size=8)
    assert m.shape == (1, 8, 8) and bool(k.all())
