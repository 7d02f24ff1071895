"""Spec §5 test 5: frame/video metrics against hand computations and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from forgery_kd import ForgeryKDError
from forgery_kd.metrics import average_precision, eer, frame_metrics, per_type_metrics, video_metrics


def test_perfect_separation():
    m = frame_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert m == {"acc": 1.0, "auc": 1.0, "eer": 0.0, "ap": 1.0}


def test_hand_computed_six_samples():
    p = [0.9, 0.8, 0.4, 0.6, 0.3, 0.1]
    y = [1, 0, 1, 1, 0, 0]
    # pairs (pos, neg): 0.9 beats all 3; 0.4 beats 0.3, 0.1; 0.6 beats 0.3, 0.1 -> 7 of 9
    m = frame_metrics(p, y)
    assert m["auc"] == pytest.approx(7 / 9)
    # threshold 0.5: predictions 1,1,0,1,0,0 -> correct: 1,0,0,1,1,1 -> 4/6
    assert m["acc"] == pytest.approx(4 / 6)
    # ranking 0.9(+) 0.8(-) 0.6(+) 0.4(+) ...: AP = (1/3)(1/1 + 2/3 + 3/4)
    assert m["ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # ROC points (fpr, fnr): (0,1) (0,2/3) (1/3,2/3) (1/3,1/3) (1/3,0) ... -> min |fnr - fpr| at fpr 1/3
    assert m["eer"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=60)  # labels >= 1 collapse to fake
    y[:2] = [0, 1]
    p = np.round(rng.random(60), 1)  # ties included
    fake = (y >= 1).astype(int)
    m = frame_metrics(p, y)
    assert m["auc"] == pytest.approx(roc_auc_score(fake, p))
    assert m["ap"] == pytest.approx(average_precision_score(fake, p))
    fpr, tpr, _ = roc_curve(fake, p, drop_intermediate=False)
    assert m["eer"] == pytest.approx(fpr[np.nanargmin(np.abs((1 - tpr) - fpr))])
    assert m["acc"] == pytest.approx(np.mean((p >= 0.5) == fake))
    assert eer(p, y) == m["eer"] and average_precision(p, y) == m["ap"]


def test_video_aggregation_with_different_frame_counts():
    p = [0.2, 0.4, 0.9, 0.3, 0.5, 0.7]
    y = [0, 0, 1, 1, 1, 1]
    vids = ["a", "a", "b", "b", "b", "b"]  # means: a 0.3, b 0.6
    m = video_metrics(p, y, vids)
    assert m == frame_metrics([0.3, 0.6], [0, 1])
    assert m["acc"] == 1.0


def test_single_class_raises_and_per_type():
    with pytest.raises(ForgeryKDError, match="both classes"):
        frame_metrics([0.1, 0.9], [1, 1])
    out = per_type_metrics([0.1, 0.2, 0.9, 0.15], [0, 0, 1, 1], ["real", "real", "FF-DF", "FF-NT"])
    assert out["FF-DF"]["auc"] == 1.0 and out["FF-NT"]["auc"] == 0.5
