"""Hybrid fallback (spec §8.4): bad or doubtful cells are re-queried one image per call, cost counted."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from collage_prompt.client import OpenAIChatClient
from collage_prompt.collect import collage_request
from collage_prompt.cost import PriceTable
from collage_prompt.errors import CollagePromptError
from collage_prompt.fallback import fallback_reasons, run_with_fallback
from collage_prompt.grid import GridSpec
from collage_prompt.prompt import parse_answer
from collage_prompt.simulate import SimConfig, SimulatedVLM


class CountingClient:
    """Wraps a client and records every request it answers."""

    def __init__(self, inner) -> None:
        self.inner, self.model, self.sent = inner, inner.model, []

    def complete(self, req):
        self.sent.append(req)
        return self.inner.complete(req)


def test_reasons_per_cell():
    parsed = parse_answer("[0: 'zero', 1: 'banana', 2: 'two']", 4, ["zero", "one", "two", "three"])
    assert fallback_reasons(parsed) == [None, "out_of_list", None, "missing"]
    assert fallback_reasons(parsed, [0.9, 0.9, 0.2, 0.9], tau=0.5) == [
        None,
        "out_of_list",
        "low_confidence",
        "missing",
    ]


def test_stub_fallback_exactly_for_bad_cells(stub, monkeypatch, tmp_path, digits):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SENTINEL")
    client = OpenAIChatClient("gpt-4o", base_url=stub.url, timeout=5.0)
    assert list(digits.labels[:4]) == [0, 1, 2, 3]
    req = collage_request(digits, [0, 1, 2, 3], range(4), GridSpec(2, 2))
    stub.script = [
        stub.ok("Here is the prediction: [0: 'zero', 1: 'banana', 2: 'two']"),
        stub.ok("Here is the prediction: ['one']"),
        stub.ok("Here is the prediction: ['three']"),
    ]
    run = run_with_fallback([req], client, tmp_path / "store", digits, workers=1)
    assert stub.calls == 3 and run.n_calls == 3
    cells = run.cells[0]
    assert [a.matched for a in cells] == [0, 1, 2, 3]
    assert [a.source for a in cells] == ["collage", "fallback", "collage", "fallback"]
    assert [a.reason for a in cells] == [None, "out_of_list", None, "missing"]
    assert [a.image_index for a in run.fallback_cells] == [1, 3]
    for sent, image in zip(stub.requests[1:], [1, 3], strict=True):
        single = collage_request(digits, [image], [0], GridSpec(1, 1))
        content = sent["messages"][0]["content"]
        assert content[0]["text"] == single.prompt
        assert content[1]["image_url"]["url"].endswith(base64.b64encode(single.image_png).decode())
    one = PriceTable.load().usd(300, 20, "gpt-4o")
    assert run.cost_usd == pytest.approx(3 * one)
    stored = [json.loads(x) for x in (tmp_path / "store" / "results.jsonl").read_text().splitlines()]
    assert [(r["meta"].get("cell"), r["meta"].get("reason")) for r in stored] == [
        (None, None),
        (1, "out_of_list"),
        (3, "missing"),
    ]
    assert all(r["meta"]["fallback_of"] == req.key for r in stored[1:])
    again = run_with_fallback([req], client, tmp_path / "store", digits, workers=1)  # resumes: no new calls
    assert stub.calls == 3 and [a.matched for a in again.cells[0]] == [0, 1, 2, 3]


def test_simulator_fallback_for_low_scores(tmp_path, digits, classifier):
    sim = CountingClient(SimulatedVLM(classifier, digits.classes, SimConfig(malformed_rate=0.0)))
    spec = GridSpec(2, 2, target_side=96)
    sets = [[600, 601, 602, 603], [604, 605, 606, 607], [608, 609, 610, 611]]
    reqs = [collage_request(digits, s, [3, 1, 0, 2], spec) for s in sets]
    scores = np.random.default_rng(0).uniform(0, 1, (3, 4))
    run = run_with_fallback(reqs, sim, tmp_path / "store", digits, cell_scores=scores, tau=0.4)
    low = {(r, c) for r in range(3) for c in range(4) if scores[r, c] < 0.4}
    assert 0 < len(low) < 12
    singles = sim.sent[3:]
    assert len(sim.sent) == 3 + len(low) and all(q.k == 1 for q in singles)
    row_of = {q.key: r for r, q in enumerate(reqs)}
    assert {(row_of[q.meta["fallback_of"]], q.meta["cell"]) for q in singles} == low
    for q in singles:
        assert q.meta["image_ids"] == [reqs[row_of[q.meta["fallback_of"]]].meta["image_ids"][q.meta["cell"]]]
    got = {(r, c) for r, row in enumerate(run.cells) for c, a in enumerate(row) if a.source == "fallback"}
    assert got == low
    stored = [json.loads(x) for x in (tmp_path / "store" / "results.jsonl").read_text().splitlines()]
    assert len(stored) == 3 + len(low)
    assert run.cost_usd == pytest.approx(sum(r["cost_usd"] for r in stored)) and run.fallback.cost_usd > 0
    assert run.fallback.cost_usd == pytest.approx(sum(r["cost_usd"] for r in run.fallback.records.values()))


def test_bad_input(tmp_path, digits):
    req = collage_request(digits, [0, 1, 2, 3], range(4), GridSpec(2, 2))
    with pytest.raises(CollagePromptError, match="cell_scores rows"):
        run_with_fallback([req], None, tmp_path, digits, cell_scores=[])
    req.meta.pop("image_ids")
    with pytest.raises(CollagePromptError, match="image_ids"):
        run_with_fallback([req], None, tmp_path, digits)


def test_predicted_cell_accuracy_matches_the_collage_score():
    from collage_prompt.fallback import predicted_cell_accuracy
    from collage_prompt.predictor import CollageGCN, OfficialLikeGCN, score

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = CollageGCN(8, 2, 2, hidden=16, proj=8)
    feats = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    perms = np.array([[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]])
    cells = predicted_cell_accuracy(model, feats, perms)
    assert cells.shape == (3, 4) and ((cells > 0) & (cells < 1)).all()
    np.testing.assert_allclose(cells.mean(1), score(model, feats, perms), atol=1e-6)
    with pytest.raises(CollagePromptError, match="per-cell scores need a CollageGCN"):
        predicted_cell_accuracy(OfficialLikeGCN(8, 2, 2), feats, perms)


def test_a_single_image_request_does_not_fall_back_to_itself(stub, monkeypatch, tmp_path, digits):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SENTINEL")
    client = OpenAIChatClient("gpt-4o", base_url=stub.url, timeout=5.0)
    stub.script = [stub.ok("Here is the prediction: ['banana']")]
    run = run_with_fallback([collage_request(digits, [5], [0], GridSpec(1, 1))], client, tmp_path, digits)
    assert stub.calls == 1 and run.fallback is None and run.cells[0][0].matched is None
