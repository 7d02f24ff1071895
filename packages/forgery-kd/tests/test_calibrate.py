"""Threshold calibration (spec §8.2): a hand-worked example, a brute-force cross-check, and the stored
threshold that an exported detector then uses."""

import json

import numpy as np
import pytest
import torch

from forgery_kd import (
    ForgeryDetector,
    ForgeryKDError,
    Student,
    calibrate_detector,
    calibrate_threshold,
    export_student,
    write_calibration,
)

REAL = [0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90]
FAKE = [0.35, 0.55, 0.75, 0.85, 0.95]


def _example():
    return REAL + FAKE, [0] * len(REAL) + [1] * len(FAKE)


def test_hand_worked_thresholds():
    scores, labels = _example()
    # FPR <= 10 %: one of ten real scores may be flagged, so t must exceed 0.80; the lowest observed score
    # above it is the fake 0.85, which flags the real 0.90 (FPR 0.1) and the fakes 0.85, 0.95 (TPR 0.4)
    c = calibrate_threshold(scores, labels, target_fpr=0.10)
    assert (c.threshold, c.fpr, c.tpr, c.n_real, c.n_fake) == (0.85, 0.1, 0.4, 10, 5)
    # FPR <= 5 %: no real may be flagged, t > 0.90 -> 0.95 (TPR 0.2)
    c = calibrate_threshold(scores, labels)
    assert (c.target_fpr, c.threshold, c.fpr, c.tpr) == (0.05, 0.95, 0.0, 0.2)
    # Youden's J = TPR - FPR peaks at 0.4 for t = 0.75 (0.6 - 0.2), 0.55 (0.8 - 0.4) and 0.35 (1.0 - 0.6);
    # the highest of them is reported
    assert c.youden_threshold == 0.75 and c.youden_j == pytest.approx(0.4)


def test_nothing_real_may_be_flagged_and_no_fake_scores_higher():
    c = calibrate_threshold([0.2, 0.9, 0.1, 0.5], [0, 0, 1, 1], target_fpr=0.0)
    assert c.threshold > 0.9 and c.threshold == pytest.approx(0.9) and (c.fpr, c.tpr) == (0.0, 0.0)


def test_matches_brute_force_over_observed_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 2)  # rounding makes ties
    for target in (0.01, 0.05, 0.2):
        c = calibrate_threshold(scores, labels, target)
        rates = {
            t: ((scores[labels == 0] >= t).mean(), (scores[labels == 1] >= t).mean())
            for t in np.unique(scores)
        }
        allowed = [t for t, (fpr, _) in rates.items() if fpr <= target]
        assert c.threshold == min(allowed) and (c.fpr, c.tpr) == rates[min(allowed)]
        j_best = max(tpr - fpr for fpr, tpr in rates.values())
        assert c.youden_j == pytest.approx(j_best)


def test_bad_input():
    with pytest.raises(ForgeryKDError, match="only one class"):
        calibrate_threshold([0.1, 0.2], [0, 0])
    with pytest.raises(ForgeryKDError, match="target_fpr"):
        calibrate_threshold([0.1, 0.2], [0, 1], target_fpr=1.5)
    with pytest.raises(ForgeryKDError, match="2 scores but 3 labels"):
        calibrate_threshold([0.1, 0.2], [0, 1, 1])


def test_detector_uses_the_stored_threshold(data_config, tmp_path):
    torch.manual_seed(0)
    directory = export_student(Student("test_efficientnet"), tmp_path / "det", img_size=32)
    plain = ForgeryDetector.load(directory, device="cpu")
    assert plain.threshold == 0.5 and plain.calibration is None and plain.path == directory
    assert "uncalibrated default 0.5" in plain.threshold_source
    assert len(plain.weights_sha256) == 64

    val = data_config.dataset("val")
    c = calibrate_detector(directory, val, target_fpr=0.25, device="cpu")
    scores = np.array(plain.predict_images([r.path for r in val.records]))
    real = scores[np.array(val.labels) == 0]
    assert c.split == "val" and c.n_real == len(real) and (real >= c.threshold).mean() == c.fpr <= 0.25
    stored = json.loads((directory / "config.json").read_text())
    assert stored["threshold"] == c.threshold and stored["calibration"] == c.to_dict()
    calibrated = ForgeryDetector.load(directory, device="cpu")
    assert calibrated.threshold == c.threshold and "calibrated for FPR <= 25%" in calibrated.threshold_source
    with pytest.raises(ForgeryKDError, match="not an exported forgery-kd detector"):
        write_calibration(tmp_path, c)
