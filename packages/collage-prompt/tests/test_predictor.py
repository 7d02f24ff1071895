"""Predictors: symmetry behaviour, the fast scoring path, learning the simulator's ranking, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from collage_prompt.collect import sample_image_sets
from collage_prompt.grid import symmetry_group
from collage_prompt.predictor import (
    CollageGCN,
    CollageSample,
    OfficialLikeGCN,
    PredictorConfig,
    load_predictor,
    score,
    train_predictor,
)
from collage_prompt.simulate import SimConfig, expected_cell_accuracy

CFG = SimConfig(a_read=0.3, lam=0.5, temperature=1.0)


@pytest.fixture(scope="module")
def image_stats(digits, classifier):
    probs, feats = classifier.predict(digits.images)
    return probs, feats


def _samples(digits, image_stats, n_sets, per_set, seed):
    """Simulated sets labelled with the simulator's exact per-cell accuracy (soft BCE targets), so the test
    measures whether the predictor learns the simulator's effects rather than how much 0/1 noise it averages."""
    probs, feats = image_stats
    rng = np.random.default_rng(seed)
    out = []
    for s, idx in enumerate(
        sample_image_sets(digits.labels, 9, n_sets, 0.3, seed, pool=np.arange(600, len(digits)))
    ):
        for _ in range(per_set):
            perm = rng.permutation(9)
            cells = idx[perm]
            p = expected_cell_accuracy(probs[cells], feats[cells], digits.labels[cells], 3, 3, CFG)
            out.append(CollageSample(feats[idx], perm, p.astype(np.float32), float(p.mean()), s))
    return out


def test_orbit_behaviour():
    torch.manual_seed(0)
    feats = np.random.default_rng(0).normal(size=(9, 16)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(9)
    orbit = np.stack([perm[s] for s in symmetry_group(3, 3)])
    official = score(OfficialLikeGCN(16, 3, 3), feats, orbit)
    gcn = CollageGCN(16, 3, 3)
    torch.nn.init.normal_(gcn.head.weight)  # zero at init (training starts from the additive path)
    ours = score(gcn, feats, orbit)
    assert np.allclose(official, official[0], atol=1e-5)
    assert np.ptp(ours) > 1e-4


def test_fast_scoring_equals_forward():
    torch.manual_seed(0)
    model = CollageGCN(16, 3, 3).eval()
    torch.nn.init.normal_(model.head.weight)
    feats = np.random.default_rng(0).normal(size=(9, 16)).astype(np.float32)
    perms = np.stack([np.random.default_rng(i).permutation(9) for i in range(50)])
    slow = model(torch.from_numpy(feats)[None], torch.from_numpy(perms)).detach().numpy()
    assert np.allclose(score(model, feats, perms), slow, atol=1e-5)


def test_learns_simulator_ranking_and_resumes(digits, image_stats, tmp_path):
    probs, feats = image_stats
    train = _samples(digits, image_stats, 200, 4, seed=0)
    cfg = PredictorConfig(hidden=32, epochs=20, batch_size=128, lr=3e-3)
    model = train_predictor(train, (3, 3), cfg, tmp_path / "p")
    rhos = []
    rng = np.random.default_rng(99)
    for idx in sample_image_sets(digits.labels, 9, 20, 0.3, seed=123, pool=np.arange(600, len(digits))):
        perms = np.stack([rng.permutation(9) for _ in range(32)])
        truth = np.array(
            [
                expected_cell_accuracy(probs[idx[p]], feats[idx[p]], digits.labels[idx[p]], 3, 3, CFG).mean()
                for p in perms
            ]
        )
        rhos.append(spearmanr(score(model, feats[idx], perms), truth).statistic)
    # the spec's bar: mean within-set Spearman > 0.2 on held-out sets against the simulator's expectation
    assert np.nanmean(rhos) > 0.2
    # a second call on the same folder resumes from the final checkpoint and ends with the same weights
    again = train_predictor(train, (3, 3), cfg, tmp_path / "p")
    loaded = load_predictor(tmp_path / "p")
    for a, b, c in zip(
        model.state_dict().values(), again.state_dict().values(), loaded.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_official_like_trains(digits, image_stats, tmp_path):
    train = _samples(digits, image_stats, 40, 4, seed=1)
    model = train_predictor(
        train, (3, 3), PredictorConfig(kind="official_like", hidden=16, epochs=2), tmp_path / "o"
    )
    assert model.symmetry_invariant
    out = score(model, train[0].feats, np.stack([s.perm for s in train[:4]]))
    assert out.shape == (4,) and np.isfinite(out).all()


def test_additive_path_is_the_logistic_regression(digits, image_stats, tmp_path):
    """Stage 1 of training is a plain logistic regression of per-cell 0/1 answers on the additive inputs:
    scikit-learn's unpenalised fit on the same inputs gives the same probabilities; stage 2 leaves it frozen."""
    from sklearn.linear_model import LogisticRegression

    _, feats = image_stats
    rng = np.random.default_rng(5)
    samples = []
    for s, idx in enumerate(
        sample_image_sets(digits.labels, 9, 60, 0.3, 5, pool=np.arange(600, len(digits)))
    ):
        for _ in range(3):
            cells = (rng.random(9) < 0.8).astype(np.float32)
            samples.append(CollageSample(feats[idx], rng.permutation(9), cells, float(cells.mean()), s))
    model = train_predictor(samples, (3, 3), PredictorConfig(hidden=8, epochs=2), tmp_path / "p")
    f = torch.from_numpy(np.stack([x.feats for x in samples]).astype(np.float32))
    p = torch.from_numpy(np.stack([x.perm for x in samples]))
    with torch.no_grad():
        z = model.additive_inputs(f, p).reshape(-1, model.additive.in_features).double().numpy()
        ours = torch.sigmoid(model.additive(torch.from_numpy(z).float())).squeeze(-1).numpy()
    y = np.concatenate([x.cell_correct for x in samples])
    reference = LogisticRegression(penalty=None, max_iter=5000, tol=1e-10).fit(z, y).predict_proba(z)[:, 1]
    assert np.abs(ours - reference).max() < 2e-3
    assert not model.additive.weight.requires_grad
