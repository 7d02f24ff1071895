"""Evaluation protocols (spec §2.7): detection AUC / TPR@1%FPR and the mem-curv-diff localization protocol.

Localization: maps are resized bilinearly to ``size``², masks nearest-neighbour and binarised at 0.5;
x = log1p(map) is min–max normalised over the *whole set* and clipped to [0, 1]; for 101 thresholds
θ ∈ linspace(−1e-6, 1+1e-6) the prediction is x > θ, and the best global IoU (ΣI/ΣU), mIoU (empty union = 1)
and pixel accuracy are reported independently (an oracle). The held-out variant fixes the normalisation
and θ* = argmax IoU on a calibration half of the prompts and reports the other half. Soft-map AUROC is
per image (images with both classes) and pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from difflab_core.metrics import roc_auc, tpr_at_fpr

from .errors import MemLocateError, core_errors

__all__ = [
    "detection_metrics",
    "detection_table",
    "localization_metrics",
    "prepare_localization",
    "split_calibration",
    "sweep",
]


# ---------------------------------------------------------------------------------------------- detection
def detection_metrics(scores, labels, *, fpr: float = 0.01, rule: str = "last_below") -> dict[str, Any]:
    """``{"auc", "tpr_at_fpr", "n_pos", "n_neg"}`` with label 1 = memorized; non-finite scores are dropped."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise MemLocateError(f"detection_metrics: {s.size} scores but {y.size} labels")
    keep = np.isfinite(s)
    s, y = s[keep], y[keep].astype(int)
    with core_errors("detection_metrics"):
        return {
            "auc": roc_auc(s, y),
            "tpr_at_fpr": tpr_at_fpr(s, y, fpr=fpr, rule=rule),
            "n_pos": int(y.sum()),
            "n_neg": int((1 - y).sum()),
        }


SUBSETS = {"global": ("global",), "local": ("local",), "all": ("global", "local", "unknown")}


def detection_table(
    records: Sequence[dict],
    scores: dict[str, np.ndarray],
    *,
    fpr: float = 0.01,
    rule: str = "last_below",
) -> dict[str, float | None]:
    """``det_{subset}_{method}_{auc,tpr1}`` for subsets global (global + none), local (local + none) and all.

    ``records`` carry ``label`` and ``kind``; ``scores[method]`` one score per record. A subset without both
    classes gives None.
    """
    kinds = [r.get("kind", "unknown") for r in records]
    labels = np.asarray([r.get("label") if r.get("label") is not None else -1 for r in records])
    out: dict[str, float | None] = {}
    for subset, pos_kinds in SUBSETS.items():
        sel = np.asarray(
            [(k in pos_kinds and lab == 1) or lab == 0 for k, lab in zip(kinds, labels, strict=True)]
        )
        for method, s in scores.items():
            s = np.asarray(s, dtype=np.float64)
            y = labels[sel]
            if len(np.unique(y)) < 2:
                out[f"det_{subset}_{method}_auc"] = out[f"det_{subset}_{method}_tpr1"] = None
                continue
            m = detection_metrics(s[sel], y, fpr=fpr, rule=rule)
            out[f"det_{subset}_{method}_auc"] = m["auc"]
            out[f"det_{subset}_{method}_tpr1"] = m["tpr_at_fpr"]
    return out


# ---------------------------------------------------------------------------------------------- localization
def _as_batch(x, what: str) -> torch.Tensor:
    if isinstance(x, (list, tuple)):
        x = [torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).float() for v in x]
        shapes = {tuple(v.shape) for v in x}
        if len(shapes) > 1:
            raise MemLocateError(
                f"{what}: items differ in shape {sorted(shapes)}; resize them to one size first"
            )
        x = torch.stack(x)
    x = torch.as_tensor(x).float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise MemLocateError(f"{what}: expected [N, h, w], got {tuple(x.shape)}")
    return x


def prepare_localization(maps, masks, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps bilinearly and masks nearest-neighbour resized to size², masks scaled to [0, 1] and binarised."""
    m = _as_batch(maps, "maps")
    k = _as_batch(masks, "masks")
    if m.shape[0] != k.shape[0]:
        raise MemLocateError(f"localization: {m.shape[0]} maps but {k.shape[0]} masks")
    if not torch.isfinite(m).all():
        raise MemLocateError("localization: maps contain NaN or infinite values")
    m = F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if k.max() > 1:
        k = k / 255.0
    k = F.interpolate(k[:, None], size=(size, size), mode="nearest")[:, 0]
    return m, (k > 0.5)


def _log_norm(maps: torch.Tensor, lo: float | None = None, hi: float | None = None):
    x = torch.log1p(maps.clamp_min(0).double())
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.clamp(0, 1), lo, hi


def sweep(x: torch.Tensor, masks: torch.Tensor, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """IoU, mIoU and pixel accuracy of ``x > θ`` for every θ; x [N, H, W] in [0, 1], masks bool [N, H, W].

    Counts come from one bucketing pass: x > θ_j ⇔ j < (number of thresholds below x).
    """
    th = np.asarray(thresholds, dtype=np.float64)
    n_t = th.size
    xs = x.detach().cpu().double().numpy().reshape(x.shape[0], -1)
    ms = masks.detach().cpu().numpy().reshape(masks.shape[0], -1).astype(bool)
    tp = np.zeros((xs.shape[0], n_t))
    pp = np.zeros((xs.shape[0], n_t))
    for i in range(xs.shape[0]):
        idx = np.searchsorted(th, xs[i], side="left")  # number of thresholds strictly below x
        # pred at θ_j is x > θ_j ⇔ idx > j; count_j = #{idx > j} = suffix sum of bincount from j+1
        all_counts = np.bincount(idx, minlength=n_t + 1)
        pos_counts = np.bincount(idx[ms[i]], minlength=n_t + 1)
        pp[i] = np.cumsum(all_counts[::-1])[::-1][1:]
        tp[i] = np.cumsum(pos_counts[::-1])[::-1][1:]
    gt = ms.sum(axis=1)[:, None].astype(np.float64)
    total = ms.shape[1]
    union = pp + gt - tp
    fp = pp - tp
    tn = total - gt - fp
    per_iou = np.where(union > 0, tp / np.where(union > 0, union, 1), 1.0)
    s_i, s_u = tp.sum(axis=0), union.sum(axis=0)
    iou = np.where(s_u > 0, s_i / np.where(s_u > 0, s_u, 1), 1.0)
    acc = (tp + tn).sum(axis=0) / (total * xs.shape[0])
    return {"iou": iou, "miou": per_iou.mean(axis=0), "acc": acc}


def split_calibration(
    groups: Sequence[Any], strata: Sequence[Any] | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split items 50/50 by group (prompt), stratified by ``strata`` (type): (calibration idx, test idx).

    Groups are sorted within each stratum before a seeded shuffle, so the split does not depend on input order.
    """
    groups = [str(g) for g in groups]
    strata = ["all"] * len(groups) if strata is None else [str(s) for s in strata]
    if len(strata) != len(groups):
        raise MemLocateError(f"split_calibration: {len(groups)} groups but {len(strata)} strata")
    rng = np.random.default_rng(seed)
    cal_groups: set[str] = set()
    for stratum in sorted(set(strata)):
        gs = sorted({g for g, s in zip(groups, strata, strict=True) if s == stratum})
        order = rng.permutation(len(gs))
        cal_groups.update(gs[j] for j in order[: (len(gs) + 1) // 2])
    cal = np.asarray([i for i, g in enumerate(groups) if g in cal_groups], dtype=int)
    test = np.asarray([i for i, g in enumerate(groups) if g not in cal_groups], dtype=int)
    return cal, test


def _auroc(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float | None, float | None]:
    per = []
    for m, k in zip(maps, masks, strict=True):
        y = k.flatten().numpy()
        if y.any() and not y.all():
            per.append(roc_auc(m.flatten().double().numpy(), y))
    y_all = masks.flatten().numpy()
    pooled = roc_auc(maps.flatten().double().numpy(), y_all) if y_all.any() and not y_all.all() else None
    return (float(np.mean(per)) if per else None), pooled


def localization_metrics(
    maps,
    masks,
    *,
    size: int = 256,
    thresholds: int = 101,
    heldout: bool = True,
    split_seed: int = 0,
    groups: Sequence[Any] | None = None,
    strata: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The §2.7 localization protocol on maps [N, h, w] (raw BE maps) and masks [N, H, W].

    ``groups`` (prompt of each map) and ``strata`` (its type) drive the held-out split; by default each map
    is its own prompt and there is one stratum. Returns best_{iou,miou,acc} with their thresholds, auroc,
    auroc_pooled and, with ``heldout``, heldout_{iou,miou,acc,threshold}.
    """
    m, k = prepare_localization(maps, masks, size)
    th = np.linspace(-1e-6, 1 + 1e-6, thresholds)
    x, _, _ = _log_norm(m)
    res = sweep(x, k, th)
    out: dict[str, Any] = {}
    for name in ("iou", "miou", "acc"):
        j = int(np.argmax(res[name]))
        out[f"best_{name}"] = float(res[name][j])
        out[f"best_{name}_threshold"] = float(th[j])
    out["auroc"], out["auroc_pooled"] = _auroc(m, k)
    out["n"] = int(m.shape[0])
    if heldout:
        grp = list(range(m.shape[0])) if groups is None else list(groups)
        if len(grp) != m.shape[0]:
            raise MemLocateError(f"localization_metrics: {len(grp)} groups for {m.shape[0]} maps")
        cal, test = split_calibration(grp, strata, seed=split_seed)
        if len(cal) == 0 or len(test) == 0:
            out.update(heldout_iou=None, heldout_miou=None, heldout_acc=None, heldout_threshold=None)
            return out
        xc, lo, hi = _log_norm(m[cal])
        j = int(np.argmax(sweep(xc, k[cal], th)["iou"]))
        xt, _, _ = _log_norm(m[test], lo, hi)
        rt = sweep(xt, k[test], th[j : j + 1])
        out.update(
            heldout_iou=float(rt["iou"][0]),
            heldout_miou=float(rt["miou"][0]),
            heldout_acc=float(rt["acc"][0]),
            heldout_threshold=float(th[j]),
        )
    return out
