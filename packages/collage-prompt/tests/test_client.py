"""OpenAIChatClient and run_batch against a loopback OpenAI-compatible stub server (no network)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from collage_prompt.batch import RetryPolicy, run_batch
from collage_prompt.client import (
    ItemError,
    OpenAIChatClient,
    RetryableError,
    RunFatalError,
    VLMRequest,
    encode_png,
)

SENTINEL = "sk-test-SENTINEL"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)


def _request(i: int = 0, k: int = 4) -> VLMRequest:
    image = Image.fromarray(np.full((64, 64, 3), i % 256, dtype=np.uint8))
    return VLMRequest(encode_png(image), f"prompt {i}", "high", k, {"i": i})


def _client(stub, **kw) -> OpenAIChatClient:
    return OpenAIChatClient("gpt-4o", base_url=stub.url, timeout=kw.pop("timeout", 5.0), **kw)


def _run(reqs, client, tmp_path, sleeps=None, **kw):
    sleeps = [] if sleeps is None else sleeps
    return run_batch(
        reqs,
        client,
        tmp_path / "store",
        workers=1,
        sleep=sleeps.append,
        retry=RetryPolicy(max_attempts=4),
        **kw,
    )


def test_200_returns_text_usage_and_sends_image(stub, key_env):
    stub.script = [stub.ok("Here is the prediction: [0: 'zero']")]
    resp = _client(stub).complete(_request())
    assert resp.text == "Here is the prediction: [0: 'zero']"
    assert (resp.prompt_tokens, resp.completion_tokens, resp.usage_estimated) == (300, 20, False)
    content = stub.requests[0]["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1]["image_url"]["detail"] == "high"
    assert stub.auth_headers[0] == f"Bearer {SENTINEL}"


def test_429_retry_after_is_honoured(stub, key_env, tmp_path):
    stub.script = [stub.error(429, "rate_limit_exceeded", {"retry-after": "1"}), stub.ok("[0: 'zero']")]
    sleeps: list[float] = []
    summary = _run([_request()], _client(stub), tmp_path, sleeps)
    assert summary.status == "complete" and summary.n_ok == 1
    assert stub.calls == 2
    assert sleeps[0] == pytest.approx(1.0)


def test_500_500_200_succeeds(stub, key_env, tmp_path):
    stub.script = [stub.error(500), stub.error(500), stub.ok("[0: 'zero']")]
    summary = _run([_request()], _client(stub), tmp_path)
    assert summary.n_ok == 1 and stub.calls == 3


def test_read_timeout_then_200(stub, key_env, tmp_path):
    stub.script = [{**stub.ok("late"), "delay": 1.5}, stub.ok("[0: 'zero']")]
    summary = _run([_request()], _client(stub, timeout=0.5), tmp_path)
    assert summary.n_ok == 1 and stub.calls == 2
    assert next(iter(summary.records.values()))["text"] == "[0: 'zero']"


def test_401_aborts_the_run(stub, key_env, tmp_path):
    stub.script = [stub.error(401, "invalid_api_key")]
    summary = _run([_request(i) for i in range(3)], _client(stub), tmp_path)
    assert summary.status == "aborted" and stub.calls == 1 and summary.n_ok == 0
    assert SENTINEL not in summary.error


def test_400_records_item_error_and_continues(stub, key_env, tmp_path):
    stub.script = [stub.error(400, "invalid_request_error"), stub.ok("[0: 'zero']")]
    summary = _run([_request(0), _request(1)], _client(stub), tmp_path)
    assert summary.status == "complete"
    assert (summary.n_failed, summary.n_ok, stub.calls) == (1, 1, 2)


def test_insufficient_quota_aborts(stub, key_env, tmp_path):
    stub.script = [stub.error(429, "insufficient_quota")]
    summary = _run([_request(0), _request(1)], _client(stub), tmp_path)
    assert summary.status == "aborted" and stub.calls == 1


def test_length_finish_marks_truncation_and_parses_partially(stub, key_env, tmp_path):
    from collage_prompt.prompt import parse_answer

    stub.script = [stub.ok("Here is the prediction: [0: 'one', 1: 'two', 2: 'th", finish="length")]
    summary = _run([_request()], _client(stub), tmp_path)
    rec = next(iter(summary.records.values()))
    assert rec["truncated"] is True
    parsed = parse_answer(rec["text"], 4, ["one", "two", "three", "four"])
    assert parsed.status == "partial" and parsed.matched[:2] == [0, 1] and parsed.matched[2:] == [None, None]


def test_missing_usage_is_estimated(stub, key_env):
    stub.script = [stub.ok("[0: 'zero']", usage=False)]
    resp = _client(stub).complete(_request())
    assert resp.usage_estimated
    assert resp.prompt_tokens >= 255  # one 64-px high-detail image tile at least
    assert resp.completion_tokens == 3


def test_client_errors_are_classified(stub, key_env):
    client = _client(stub)
    for reply, kind in [
        (stub.error(404), RunFatalError),
        (stub.error(422), ItemError),
        (stub.error(503), RetryableError),
    ]:
        stub.script = [reply]
        stub.calls = 0
        with pytest.raises(kind):
            client.complete(_request())


def test_secret_never_leaks(stub, key_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = _client(stub)
    assert SENTINEL not in repr(client)
    stub.script = [stub.error(429, headers={"retry-after": "0"}), stub.ok("[0: 'zero']"), stub.error(401)]
    _run([_request(0), _request(1)], client, tmp_path)
    assert SENTINEL not in caplog.text
    for f in (tmp_path / "store").iterdir():
        assert SENTINEL not in f.read_text()
    with pytest.raises(RunFatalError) as err:
        client.complete(_request(5))
    assert SENTINEL not in str(err.value) and SENTINEL not in repr(err.value)


def test_no_key_with_base_url_sends_placeholder(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub.script = [stub.ok("[0: 'zero']")]
    _client(stub).complete(_request())
    assert stub.auth_headers[0] == "Bearer EMPTY"


def test_no_key_without_base_url_is_an_error(monkeypatch):
    from collage_prompt.errors import CollagePromptError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(CollagePromptError, match="OPENAI_API_KEY"):
        OpenAIChatClient("gpt-4o")


class KillAfter:
    """Wraps a client and raises KeyboardInterrupt on call ``n + 1`` (a Ctrl-C mid-run)."""

    def __init__(self, client, n: int) -> None:
        self.inner, self.n, self.model, self.calls = client, n, client.model, 0
        self.host, self.temperature, self.max_tokens = client.host, client.temperature, client.max_tokens

    def complete(self, req):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.inner.complete(req)


def test_resume_after_kill_sends_only_missing(stub, key_env, tmp_path):
    stub.script = [stub.ok("[0: 'zero']")]
    reqs = [_request(i) for i in range(12)]
    first = _run(reqs, KillAfter(_client(stub), 5), tmp_path)
    assert first.status == "interrupted" and first.n_ok == 5 and stub.calls == 5
    second = _run(reqs, _client(stub), tmp_path)
    assert second.status == "complete" and second.n_skipped == 5 and second.n_ok == 7
    assert stub.calls == 12
    assert len(second.records) == 12


def test_budget_stops_submission(stub, key_env, tmp_path):
    stub.script = [stub.ok("[0: 'zero']")]
    reqs = [_request(i) for i in range(10)]
    summary = _run(reqs, _client(stub, max_tokens=50), tmp_path, max_cost_usd=0.003)
    assert summary.status == "budget_reached"
    assert 0 < stub.calls < 10
    assert summary.cost_usd <= 0.003


def test_failed_items_retried_only_on_request(stub, key_env, tmp_path):
    stub.script = [stub.error(400)]
    _run([_request(0)], _client(stub), tmp_path)
    stub.script, stub.calls = [stub.ok("[0: 'zero']")], 0
    assert _run([_request(0)], _client(stub), tmp_path).n_skipped == 1 and stub.calls == 0
    summary = _run([_request(0)], _client(stub), tmp_path, retry_failed=True)
    assert summary.n_ok == 1 and stub.calls == 1


def test_identical_requests_in_one_batch_are_sent_once(stub, key_env, tmp_path):
    stub.script = [stub.ok("[0: 'zero']")]
    a, b = _request(1), _request(2)
    twin = _request(1)  # a separate object with the same image and prompt
    summary = run_batch([a, b, twin, a], _client(stub), tmp_path / "store", workers=4)
    assert summary.status == "complete" and stub.calls == 2
    assert (summary.n_requests, summary.n_ok, summary.n_duplicates) == (4, 2, 2)
    assert summary.records[a.key]["text"] == summary.records[twin.key]["text"] == "[0: 'zero']"
    lines = (tmp_path / "store" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    again = run_batch([twin, b, b], _client(stub), tmp_path / "store")
    assert stub.calls == 2 and (again.n_skipped, again.n_duplicates) == (2, 1) and len(again.records) == 2
