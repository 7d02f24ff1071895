"""The simulated VLM: determinism, the three paper findings, parser round trip, and SimConfig.fit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from collage_prompt.collect import collage_request, sample_image_sets
from collage_prompt.grid import GridSpec, grid_adjacency
from collage_prompt.prompt import parse_answer
from collage_prompt.simulate import (
    SimConfig,
    SimulatedVLM,
    expected_cell_accuracy,
    expected_collage_accuracy,
)

SPEC = GridSpec(2, 2, target_side=96)


@pytest.fixture(scope="module")
def runs(digits, classifier):
    """300 answered 2x2 collages of held-out digits with strong effects, so 300 collages show them."""
    cfg = SimConfig(a_read=0.3, lam=0.5, temperature=1.0)
    sim = SimulatedVLM(classifier, digits.classes, cfg)
    pool = np.arange(600, len(digits))
    sets = sample_image_sets(digits.labels, 4, 300, 0.3, seed=3, pool=pool)
    out = []
    for s, idx in enumerate(sets):
        req = collage_request(digits, idx, np.random.default_rng(s).permutation(4), SPEC)
        resp = sim.complete(req)
        parsed = parse_answer(resp.text, 4, digits.classes)
        out.append((req, resp, parsed))
    return sim, out


def test_deterministic_per_request(runs):
    sim, out = runs
    req, resp, _ = out[0]
    assert sim.complete(req).text == resp.text


def test_answers_round_trip_through_parser(runs):
    _, out = runs
    ok = np.mean([p.status == "ok" for _, _, p in out])
    assert ok >= 0.95
    assert all(r.prompt_tokens >= 85 and r.completion_tokens > 0 for _, r, _ in out)


def test_position_neighbour_and_grouping_effects(runs):
    _, out = runs
    adj = grid_adjacency(2, 2) > 0
    correct = np.array(
        [[m == t for m, t in zip(p.matched, req.meta["truth"], strict=False)] for req, _, p in out],
        dtype=float,
    )
    assert correct[:, 0].mean() > correct[:, 3].mean()  # top-left beats bottom-right
    neighbour_hits = chance_hits = errors = 0
    grouped, alone = [], []
    for (req, _, p), row in zip(out, correct, strict=False):
        truth = np.array(req.meta["truth"])
        for c in range(4):
            nb = truth[adj[c]]
            (grouped if (nb == truth[c]).any() else alone).append(row[c])
            if p.matched[c] is None or row[c]:
                continue
            errors += 1
            neighbour_hits += p.matched[c] in set(nb.tolist())
            chance_hits += (
                len(set(nb.tolist()) - {truth[c]}) / 9
            )  # a uniform wrong answer hits a neighbour label
    assert errors > 10
    assert neighbour_hits / errors > 2 * chance_hits / errors
    assert np.mean(grouped) > np.mean(alone)


def test_expected_accuracy_matches_sampling(digits, classifier):
    """The analytic per-cell expectation agrees with the simulator's empirical rate over many requests."""
    cfg = SimConfig(a_read=0.3, lam=0.5, temperature=1.0, malformed_rate=0.0)
    sim = SimulatedVLM(classifier, digits.classes, cfg)
    idx = np.array([700, 701, 702, 703])
    cells = [digits.images[i] for i in idx]
    probs, feats = sim._cells(*_collage(digits, idx), 1.0)
    truth = digits.labels[idx]
    expected = expected_cell_accuracy(probs, feats, truth, 2, 2, cfg)
    hits = np.zeros(4)
    n = 300
    for s in range(n):
        req = collage_request(digits, idx, [0, 1, 2, 3], SPEC)
        req.key = hashlib.sha256(str(s).encode()).hexdigest()
        parsed = parse_answer(sim.complete(req).text, 4, digits.classes)
        hits += np.array(parsed.matched) == truth
    assert np.all(np.abs(hits / n - expected) < 0.1), (hits / n, expected, len(cells))


def _collage(digits, idx):
    from collage_prompt.grid import render_collage

    image, _ = render_collage([digits.images[i] for i in idx], [0, 1, 2, 3], SPEC)
    return image, SPEC


def test_simconfig_fit_recovers_effects(runs):
    sim, out = runs
    records = []
    for req, _, p in out:
        _, feats = sim._cells(*_collage_from_request(req), 1.0)
        f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        truth = req.meta["truth"]
        records.append(
            {
                "k": 4,
                "correct": [m == t for m, t in zip(p.matched, truth, strict=False)],
                "answers": [-1 if m is None else m for m in p.matched],
                "truth": truth,
                "cos": (f @ f.T).tolist(),
                "adjacency": grid_adjacency(2, 2).tolist(),
            }
        )
    fitted = SimConfig.fit(records)
    assert fitted.a_read > 0.05 and fitted.lam > 0.05 and 0.0 < fitted.group_gain <= 1.0


def _collage_from_request(req):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(req.image_png)).convert("RGB"), SPEC


def test_expected_collage_accuracy_matches_per_arrangement(digits, classifier):
    probs, feats = classifier.predict(digits.images[600:609])
    truth = digits.labels[600:609]
    perms = np.stack([np.random.default_rng(i).permutation(9) for i in range(20)])
    cfg = SimConfig(a_read=0.3, lam=0.5)
    ref = [expected_cell_accuracy(probs[p], feats[p], truth[p], 3, 3, cfg).mean() for p in perms]
    assert np.allclose(expected_collage_accuracy(probs, feats, truth, perms, 3, 3, cfg), ref, atol=1e-9)
