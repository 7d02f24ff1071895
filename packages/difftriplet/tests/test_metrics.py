"""TripletEvaluator against ivtmetrics run directly, an independent NumPy AP, and hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from ivtmetrics import Recognition

from difftriplet.errors import DiffTripletError
from difftriplet.metrics import (
    TripletEvaluator,
    canonical_ap,
    reference_video_ap,
    step_average_precision,
)

COMPONENTS = ("ivt", "iv", "it", "i", "v", "t")
SKLEARN_CLIPS = tuple(int(x) for x in sklearn.__version__.split(".")[:2]) >= (1, 6)


def random_videos(seed: int = 0, num_videos: int = 4, every_class: bool = False):
    """Scores rounded to 0.1 (ties) and sparse binary targets (some classes absent per video)."""
    rng = np.random.default_rng(seed)
    videos = []
    for v in range(num_videos):
        frames = 10 + 3 * v
        scores = np.round(rng.random((frames, 131)), 1)
        targets = (rng.random((frames, 131)) < (0.5 if every_class else 0.08)).astype(np.int64)
        if every_class:
            targets[0], targets[1] = 1, 0  # every class has a positive and a negative in every video
        videos.append((f"VID{v + 1:02d}", scores, targets))
    return videos


def evaluator_for(videos, **kwargs) -> TripletEvaluator:
    evaluator = TripletEvaluator(**kwargs)
    for name, scores, targets in videos:
        evaluator.add_video(name, scores, targets)
    return evaluator


def direct_ivtmetrics(videos, space) -> dict[str, dict]:
    """The rendezvous run.py cv protocol, written against ivtmetrics directly."""
    triplets = Recognition(num_class=100)
    parts = {c: Recognition(num_class=space.num_classes(c)) for c in "ivt"}
    for _, scores, targets in videos:
        triplets.update(targets[:, :100], scores[:, :100])
        triplets.video_end()
        for c, rec in parts.items():
            rec.update(targets[:, space.slices[c]], scores[:, space.slices[c]])
            rec.video_end()
    out = {c: triplets.compute_video_AP(c) for c in ("ivt", "iv", "it")}
    out |= {c: rec.compute_video_AP() for c, rec in parts.items()}
    out["topk"] = {k: triplets.topK(k, "ivt") for k in (5, 10, 20)}
    return out


def reference(videos, space, component: str) -> tuple[np.ndarray, float]:
    if component in ("ivt", "iv", "it"):
        take = lambda a: space.decompose(a[:, :100], component)  # noqa: E731
    else:
        take = lambda a: a[:, space.slices[component]]  # noqa: E731
    return reference_video_ap([take(t) for _, _, t in videos], [take(s) for _, s, _ in videos])


def test_canonical_equals_ivtmetrics_and_numpy_reference(space):
    videos = random_videos()
    report = evaluator_for(videos, nan_policy="canonical").compute()
    with canonical_ap():
        direct = direct_ivtmetrics(videos, space)
    for c in COMPONENTS:
        np.testing.assert_array_equal(report.per_class[c], direct[c]["AP"])
        assert getattr(report, f"AP_{c.upper()}") == direct[c]["mAP"]
        per_class, mean = reference(videos, space, c)
        np.testing.assert_allclose(report.per_class[c], per_class, atol=1e-12, rtol=0)
        assert abs(getattr(report, f"AP_{c.upper()}") - mean) < 1e-12
    assert report.topk == direct["topk"]
    assert np.isnan(direct["ivt"]["AP"]).sum() == np.isnan(report.per_class["ivt"]).sum()


def test_installed_equals_plain_ivtmetrics(space):
    videos = random_videos(seed=1, num_videos=2)
    report = evaluator_for(videos, nan_policy="installed").compute()
    direct = direct_ivtmetrics(videos, space)
    for c in COMPONENTS:
        np.testing.assert_array_equal(report.per_class[c], direct[c]["AP"])
        assert getattr(report, f"AP_{c.upper()}") == direct[c]["mAP"]


def test_canonical_context_restores_sklearn():
    import ivtmetrics.recognition as recognition

    before = recognition.average_precision_score
    with canonical_ap():
        assert recognition.average_precision_score is not before
    assert recognition.average_precision_score is before


@pytest.mark.skipif(not SKLEARN_CLIPS, reason="scikit-learn < 1.6 keeps ivtmetrics' -0.0 marker")
def test_absent_class_nan_under_canonical_zero_under_installed():
    scores = np.random.default_rng(0).random((20, 131))
    targets = np.zeros((20, 131), dtype=int)
    targets[:10, 1] = 1
    targets[:10, 100] = 1
    canonical = evaluator_for([("VID01", scores, targets)], nan_policy="canonical").compute()
    installed = evaluator_for([("VID01", scores, targets)], nan_policy="installed").compute()
    assert np.isnan(canonical.per_class["ivt"][2]) and installed.per_class["ivt"][2] == 0.0
    assert canonical.per_class["ivt"][1] == installed.per_class["ivt"][1]
    assert canonical.AP_IVT > installed.AP_IVT


def test_policies_agree_when_every_class_occurs():
    videos = random_videos(seed=2, num_videos=2, every_class=True)
    canonical = evaluator_for(videos, nan_policy="canonical").compute()
    installed = evaluator_for(videos, nan_policy="installed").compute()
    for c in COMPONENTS:
        np.testing.assert_array_equal(canonical.per_class[c], installed.per_class[c])


def test_hand_worked_ap():
    assert step_average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(
        0.8333333333, abs=1e-9
    )
    assert np.isnan(step_average_precision(np.zeros(4), np.array([0.9, 0.8, 0.3, 0.1])))
    # ties are one threshold: both tied items count together (P = 1/2 at R = 1)
    assert step_average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5


def test_hand_worked_decomposition(space):
    y = np.zeros((1, 100), dtype=int)
    y[0, [1, 94]] = 1
    expected = {"i": [0], "v": [2, 9], "t": [0, 14], "iv": [2, 4], "it": [0, 10]}
    for c, ids in expected.items():
        assert np.flatnonzero(space.decompose(y, c)[0]).tolist() == ids
    scores = np.zeros((1, 100))
    scores[0, 1], scores[0, 17] = 0.7, 0.9
    assert space.decompose(scores, "i")[0, 0] == 0.9
    assert space.decompose(scores, "v")[0, 1] == 0.9
    assert space.decompose(scores, "v")[0, 2] == 0.7


def test_compute_twice_is_identical():
    evaluator = evaluator_for(random_videos(seed=3, num_videos=2))
    first, second = evaluator.compute(), evaluator.compute()
    for c in COMPONENTS:
        np.testing.assert_array_equal(first.per_class[c], second.per_class[c])
    assert first.topk == second.topk and first.num_videos == second.num_videos == 2


def test_challenge_protocol(space):
    videos = random_videos(seed=4, num_videos=2)
    cv = evaluator_for(videos, protocol="cv").compute()
    challenge = evaluator_for(videos, protocol="challenge").compute()
    assert len(challenge.per_class["ivt"]) == 94
    np.testing.assert_array_equal(challenge.per_class["ivt"], cv.per_class["ivt"][:94])
    ap_ivt, ap_i, cv_ap_i = challenge.AP_IVT, challenge.AP_I, cv.AP_I
    assert ap_ivt == pytest.approx(np.nanmean(cv.per_class["ivt"][:94]), abs=1e-15)
    assert ap_i == challenge.AP_I_from_triplets == cv.AP_I_from_triplets
    assert cv_ap_i != cv.AP_I_from_triplets  # cv reads the component channels


@pytest.mark.parametrize(("protocol", "nan_policy"), [("cv", "canonical"), ("challenge", "installed")])
def test_fast_path_equals_ivtmetrics(protocol, nan_policy):
    videos = random_videos(seed=5, num_videos=3)
    slow = evaluator_for(videos, protocol=protocol, nan_policy=nan_policy).compute()
    fast = evaluator_for(videos, protocol=protocol, nan_policy=nan_policy, fast=True).compute()
    for key in slow.per_class:
        np.testing.assert_allclose(fast.per_class[key], slow.per_class[key], atol=1e-12, rtol=0)
    for key, value in slow.summary().items():
        assert fast.summary()[key] == pytest.approx(value, abs=1e-12, nan_ok=True)


def test_report_records_versions_and_policy():
    report = evaluator_for(random_videos(seed=6, num_videos=1)).compute()
    data = report.to_dict()
    assert data["nan_policy"] == "canonical" and data["protocol"] == "cv"
    assert data["versions"]["ivtmetrics"] == "0.1.5" and data["versions"]["sklearn"] == sklearn.__version__


def test_bad_evaluator_inputs():
    scores = np.full((5, 131), 0.5)
    targets = np.zeros((5, 131), dtype=int)
    evaluator = TripletEvaluator()
    with pytest.raises(DiffTripletError, match="probs must be"):
        evaluator.add_video("VID01", scores[:, :130], targets)
    with pytest.raises(DiffTripletError, match="do not match"):
        evaluator.add_video("VID01", scores, targets[:4])
    with pytest.raises(DiffTripletError, match=r"\[0, 1\]"):
        evaluator.add_video("VID01", scores * 3, targets)
    with pytest.raises(DiffTripletError, match="NaN"):
        evaluator.add_video("VID01", np.where(scores > 0, np.nan, 0), targets)
    with pytest.raises(DiffTripletError, match="binary"):
        evaluator.add_video("VID01", scores, targets + 2)
    with pytest.raises(DiffTripletError, match="no videos"):
        evaluator.compute()
    with pytest.raises(DiffTripletError, match="nan_policy"):
        TripletEvaluator(nan_policy="zero")
