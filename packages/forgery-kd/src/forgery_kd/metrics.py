"""Frame- and video-level detection metrics, following DeepfakeBench ``training/metrics/utils.py``.

Labels ``>= 1`` count as fake; scores are ``P(fake)``. ``frame_metrics`` returns ACC (threshold 0.5),
ROC AUC, EER (the FPR where ``|FNR − FPR|`` is smallest on the ROC curve) and average precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from difflab_core.errors import DifflabError
from difflab_core.metrics import roc_auc, roc_curve

from .errors import ForgeryKDError

__all__ = ["average_precision", "eer", "frame_metrics", "per_type_metrics", "video_metrics"]


def _scores_labels(p: Any, y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(p, dtype=np.float64).reshape(-1)
    labels = (np.asarray(y).reshape(-1) >= 1).astype(np.int64)
    if scores.shape != labels.shape:
        raise ForgeryKDError(f"{where}: {scores.size} scores but {labels.size} labels")
    if scores.size == 0:
        raise ForgeryKDError(f"{where}: no samples")
    if not np.isfinite(scores).all():
        raise ForgeryKDError(f"{where}: scores contain NaN or inf")
    if labels.min() == labels.max():
        raise ForgeryKDError(
            f"{where}: only {'fake' if labels[0] else 'real'} samples; AUC/EER/AP need both classes"
        )
    return scores, labels


def eer(p: Any, y: Any) -> float:
    """Equal error rate: the FPR at the ROC point where ``|FNR − FPR|`` is smallest."""
    scores, labels = _scores_labels(p, y, "eer")
    fpr, tpr, _ = roc_curve(scores, labels)
    i = int(np.nanargmin(np.abs((1.0 - tpr) - fpr)))
    return float(fpr[i])


def average_precision(p: Any, y: Any) -> float:
    """Average precision ``Σ_n (R_n − R_{n−1}) P_n`` over distinct score thresholds (scikit-learn's AP)."""
    scores, labels = _scores_labels(p, y, "average_precision")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def frame_metrics(p: Any, y: Any) -> dict[str, float]:
    """``{"acc", "auc", "eer", "ap"}`` over frames; raises :class:`ForgeryKDError` with one class only."""
    scores, labels = _scores_labels(p, y, "frame_metrics")
    try:
        auc = roc_auc(scores, labels)
    except DifflabError as err:
        raise ForgeryKDError(f"frame_metrics: {err}") from err
    acc = float(((scores >= 0.5).astype(np.int64) == labels).mean())
    return {"acc": acc, "auc": auc, "eer": eer(scores, labels), "ap": average_precision(scores, labels)}


def video_scores(p: Any, y: Any, video_ids: Sequence[Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Mean ``P(fake)`` per video (first-seen order): ``(ids, scores, labels)``; a video's label is its max."""
    scores = np.asarray(p, dtype=np.float64).reshape(-1)
    labels = (np.asarray(y).reshape(-1) >= 1).astype(np.int64)
    if not (scores.size == labels.size == len(video_ids)):
        raise ForgeryKDError(
            f"video_metrics: {scores.size} scores, {labels.size} labels and {len(video_ids)} video ids"
        )
    index: dict[Any, int] = {}
    groups = np.array([index.setdefault(v, len(index)) for v in video_ids])
    counts = np.bincount(groups)
    mean = np.bincount(groups, weights=scores) / counts
    label = np.zeros(len(index), dtype=np.int64)
    np.maximum.at(label, groups, labels)
    return list(index), mean, label


def video_metrics(p: Any, y: Any, video_ids: Sequence[Any]) -> dict[str, float]:
    """Average ``P(fake)`` over each video's frames, then :func:`frame_metrics` over videos."""
    _, scores, labels = video_scores(p, y, video_ids)
    return frame_metrics(scores, labels)


def per_type_metrics(
    p: Any, y: Any, types: Sequence[str], real_types: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Frame metrics of each manipulation type against all real frames.

    ``types[i]`` names frame i's label (e.g. ``FF-DF``); types whose frames are all real are the
    negatives (or give them in ``real_types``).
    """
    scores = np.asarray(p, dtype=np.float64).reshape(-1)
    labels = (np.asarray(y).reshape(-1) >= 1).astype(np.int64)
    kinds = np.asarray(list(types))
    if not (scores.size == labels.size == kinds.size):
        raise ForgeryKDError(
            f"per_type_metrics: {scores.size} scores, {labels.size} labels, {kinds.size} types"
        )
    real = labels == 0 if real_types is None else np.isin(kinds, list(real_types))
    if not real.any():
        raise ForgeryKDError("per_type_metrics: no real frames to compare each manipulation with")
    out = {}
    for kind in sorted(set(kinds[~real].tolist())):
        pick = real | (kinds == kind)
        out[kind] = frame_metrics(scores[pick], labels[pick])
    return out
