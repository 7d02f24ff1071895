"""Decision thresholds picked on held-out real/fake scores, stored with the exported detector.

An exported detector flags ``P(fake) >= threshold``. Uncalibrated it uses 0.5, which suits a balanced
training set but says nothing about how many real images get flagged. :func:`calibrate_threshold` picks,
on held-out scores, the lowest threshold whose false-positive rate is at most ``target_fpr`` (the most
fakes caught under that cap) and also reports the threshold that maximises Youden's J = TPR − FPR.
:func:`calibrate_detector` scores a held-out split with the detector itself and writes the result into the
detector folder's ``config.json``, so :class:`~forgery_kd.detect.ForgeryDetector` uses it by default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difflab_core.metrics import roc_curve

from .errors import ForgeryKDError, core_errors
from .models import CONFIG_FILE

__all__ = [
    "DEFAULT_TARGET_FPR",
    "ThresholdCalibration",
    "calibrate_detector",
    "calibrate_threshold",
    "write_calibration",
]

DEFAULT_TARGET_FPR = 0.05


@dataclass(frozen=True)
class ThresholdCalibration:
    """A threshold on ``P(fake)`` (flag when ``score >= threshold``) and what it does on the held-out scores.

    ``fpr``/``tpr`` are the rates of ``threshold`` on those scores (``fpr <= target_fpr``);
    ``youden_threshold`` maximises ``youden_j = tpr - fpr`` (reported, not used by default).
    """

    threshold: float
    target_fpr: float
    fpr: float
    tpr: float
    youden_threshold: float
    youden_j: float
    n_real: int
    n_fake: int
    split: str = ""
    """Where the scores came from (for the record, e.g. ``val``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_threshold(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    target_fpr: float = DEFAULT_TARGET_FPR,
    *,
    split: str = "",
) -> ThresholdCalibration:
    """Pick thresholds on held-out ``scores`` (``[N]`` P(fake)) with ``labels`` (``[N]``, 0 real, >= 1 fake).

    The target-FPR threshold is the lowest observed score ``t`` with ``#{real >= t} / #real <= target_fpr``;
    when even the highest real score is too many, it lies just above the highest real score (nothing real
    is flagged). Youden's threshold is the observed score with the largest ``tpr - fpr`` (the highest such
    score on ties).
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ForgeryKDError(f"target_fpr={target_fpr}: use a false-positive rate in [0, 1)")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.size != y.size:
        raise ForgeryKDError(f"calibrate_threshold: {s.size} scores but {y.size} labels")
    with core_errors("calibrate_threshold"):
        fpr, tpr, thresholds = roc_curve(s, y >= 1)
    allowed = np.flatnonzero(fpr <= target_fpr + 1e-12)[-1]  # fpr rises with the index: the last allowed
    # when only "flag nothing" keeps the rate, sit just above the highest real score
    threshold = float(thresholds[allowed]) if allowed else float(np.nextafter(s[y < 1].max(), np.inf))
    j = tpr - fpr
    # skip the +inf point; the first index within rounding of the maximum is the highest such threshold
    best = 1 + int(np.flatnonzero(j[1:] >= j[1:].max() - 1e-12)[0])
    return ThresholdCalibration(
        threshold=threshold,
        target_fpr=float(target_fpr),
        fpr=float(fpr[allowed]),
        tpr=float(tpr[allowed]),
        youden_threshold=float(thresholds[best]),
        youden_j=float(j[best]),
        n_real=int((y < 1).sum()),
        n_fake=int((y >= 1).sum()),
        split=split,
    )


def write_calibration(directory: str | os.PathLike[str], calibration: ThresholdCalibration) -> Path:
    """Store ``calibration`` in an exported detector's ``config.json``: ``threshold`` and a ``calibration``
    block. Returns the config path."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ForgeryKDError(f"{path} does not exist; {directory} is not an exported forgery-kd detector")
    config = json.loads(path.read_text())
    if config.get("kind") != "detector":
        raise ForgeryKDError(f"{path}: kind is {config.get('kind')!r}, expected 'detector'")
    config["threshold"] = calibration.threshold
    config["calibration"] = calibration.to_dict()
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def calibrate_detector(
    directory: str | os.PathLike[str],
    dataset,
    target_fpr: float = DEFAULT_TARGET_FPR,
    *,
    split: str = "val",
    device: str = "auto",
) -> ThresholdCalibration:
    """Score every frame of ``dataset`` (held out from training, e.g. ``DataConfig.dataset("val")``) with the
    detector exported to ``directory``, exactly as it scores images in use, then pick and store the threshold
    (frame level; a video is flagged when its mean frame score reaches it)."""
    from .detect import ForgeryDetector

    detector = ForgeryDetector.load(directory, device=device)
    records = getattr(dataset, "records", None)
    if not records:
        raise ForgeryKDError(
            "calibrate_detector: the dataset holds no frame records (use a forgery-kd dataset)"
        )
    scores = detector.predict_images([r.path for r in records])
    calibration = calibrate_threshold(scores, [r.label for r in records], target_fpr, split=split)
    write_calibration(directory, calibration)
    return calibration
