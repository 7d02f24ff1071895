"""max_reask (spec §7 "Malformed answers"): one re-ask with a format reminder, its cost counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from collage_prompt.batch import RetryPolicy, run_batch
from collage_prompt.client import OpenAIChatClient, VLMRequest, encode_png
from collage_prompt.cost import PriceTable
from collage_prompt.errors import CollagePromptError
from collage_prompt.prompt import parse_answer

CATS = ["zero", "one", "two", "three"]
GOOD = "Here is the prediction: [0: 'zero', 1: 'one', 2: 'two', 3: 'three']"


@pytest.fixture
def client(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SENTINEL")
    return OpenAIChatClient("gpt-4o", base_url=stub.url, timeout=5.0)


def _request(i: int = 0) -> VLMRequest:
    image = Image.fromarray(np.full((64, 64, 3), i, dtype=np.uint8))
    return VLMRequest(encode_png(image), f"prompt {i}", "high", 4, {"template": "paper-v1"})


def _run(reqs, client, tmp_path, **kw):
    return run_batch(
        reqs, client, tmp_path / "store", workers=1, sleep=lambda s: None, retry=RetryPolicy(2), **kw
    )


@pytest.mark.parametrize("bad", ["I cannot tell.", "Here is the prediction: [0: 'zero', 1: 'one']"])
def test_malformed_then_good_is_reasked_once_and_costed(stub, client, tmp_path, bad):
    stub.script = [stub.ok(bad), stub.ok(GOOD)]
    summary = _run([_request()], client, tmp_path, max_reask=1, categories=CATS)
    rec = summary.records[_request().key]
    assert stub.calls == 2 and summary.n_calls == 2 and summary.n_reasks == 1
    assert rec["text"] == GOOD and rec["first_text"] == bad and rec["reasks"] == 1
    assert rec["parse_status"] == "ok"
    assert parse_answer(rec["text"], 4, CATS).matched == [0, 1, 2, 3]
    one = PriceTable.load().usd(300, 20, "gpt-4o")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (600, 40)
    assert rec["cost_usd"] == pytest.approx(2 * one) and summary.cost_usd == pytest.approx(2 * one)
    first, second = (m["messages"][0]["content"] for m in stub.requests)
    assert second[0]["text"].startswith(first[0]["text"])
    assert "0: '<label>', 1: '<label>', 2: '<label>', 3: '<label>'" in second[0]["text"]
    assert second[1]["image_url"]["url"] == first[1]["image_url"]["url"]


def test_only_failed_answers_are_reasked_and_at_most_once(stub, client, tmp_path):
    stub.script = [stub.ok(GOOD)]
    summary = _run([_request()], client, tmp_path / "a", max_reask=1, categories=CATS)
    assert stub.calls == 1 and summary.n_reasks == 0
    stub.script, stub.calls = [stub.ok("")], 0
    summary = _run([_request(1)], client, tmp_path / "b", max_reask=1, categories=CATS)
    rec = summary.records[_request(1).key]
    assert stub.calls == 2 and rec["parse_status"] == "failed" and rec["reasks"] == 1
    stub.script, stub.calls = [stub.ok("no idea")], 0
    summary = _run([_request(2)], client, tmp_path / "c")
    assert stub.calls == 1 and "reasks" not in summary.records[_request(2).key]


def test_a_worse_reask_keeps_the_first_answer(stub, client, tmp_path):
    partial = "Here is the prediction: [0: 'zero', 1: 'one', 2: 'two']"
    stub.script = [stub.ok(partial), stub.ok("sorry")]
    rec = _run([_request()], client, tmp_path, max_reask=1, categories=CATS).records[_request().key]
    assert rec["text"] == partial and rec["parse_status"] == "partial" and rec["reasks"] == 1


def test_reask_needs_categories(client, tmp_path):
    with pytest.raises(CollagePromptError, match="max_reask needs categories"):
        _run([_request()], client, tmp_path, max_reask=1)


def test_reask_reserves_budget_like_any_request(stub, client, tmp_path):
    stub.script = [stub.ok("no idea at all"), stub.ok(GOOD)]
    # the first request's estimate (~$0.0011) fits; spent ($0.00095) plus the re-ask's estimate does not
    summary = _run([_request()], client, tmp_path, max_reask=1, categories=CATS, max_cost_usd=0.0015)
    rec = summary.records[_request().key]
    assert stub.calls == 1 and rec["reask_skipped"] == "budget" and summary.cost_usd <= 0.0015
