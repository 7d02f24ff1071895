"""Detection evaluation (Wen et al. convention) and threshold calibration on labelled pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from difflab_core.metrics import roc_auc, roc_curve, tpr_at_fpr

from .errors import MemVideoError

__all__ = ["calibrate_threshold", "evaluate"]


def _arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scores, Mapping):
        if not isinstance(labels, Mapping):
            raise MemVideoError("evaluate: scores is a dict, so labels must be a dict with the same keys")
        missing = [k for k in scores if k not in labels]
        if missing:
            raise MemVideoError(f"evaluate: {len(missing)} scored keys have no label, e.g. {missing[:5]}")
        keys = list(scores)
        scores, labels = [scores[k] for k in keys], [labels[k] for k in keys]
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise MemVideoError(f"evaluate: scores {s.shape} and labels {y.shape} must be equal-length 1-D")
    if not np.isfinite(s).all():
        raise MemVideoError("evaluate: scores contain NaN or infinite values")
    if y.all() or not y.any():
        raise MemVideoError(f"evaluate: labels hold one class only ({int(y.sum())} positives of {y.size})")
    return s, y


def evaluate(
    scores: Sequence[float] | Mapping[str, float], labels: Sequence[Any] | Mapping[str, Any]
) -> dict:
    """ROC AUC and TPR@1%FPR (the TPR at the last ROC point with FPR < 0.01, Wen et al.).

    ``scores``/``labels`` are equal-length sequences, or dicts keyed alike (e.g. from `prompt_scores`).
    """
    s, y = _arrays(scores, labels)
    return {
        "auc": roc_auc(s, y),
        "tpr_at_1fpr": tpr_at_fpr(s, y, 0.01, rule="last_below"),
        "n_pos": int(y.sum()),
        "n_neg": int((~y).sum()),
    }


def calibrate_threshold(scores: Sequence[float], labels: Sequence[Any], target_fpr: float = 0.01) -> float:
    """The lowest threshold whose false-positive rate (score >= threshold on negatives) is <= ``target_fpr``,
    for tau_c / tau_m calibration on human-labelled pairs."""
    if not 0 <= target_fpr < 1:
        raise MemVideoError(f"calibrate_threshold: target_fpr must be in [0, 1), got {target_fpr}")
    s, y = _arrays(scores, labels)
    fpr, _, thr = roc_curve(s, y)
    ok = np.flatnonzero(fpr <= target_fpr)
    return float(thr[ok[-1]])
