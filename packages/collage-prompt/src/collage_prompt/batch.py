"""Resumable batches of VLM requests: retries with backoff, shared rate limits and a budget cap.

Finished requests are appended to ``{store_dir}/results.jsonl`` (``difflab_core.store``) and skipped on
resume; failures go to ``failures.jsonl`` and are retried only with ``retry_failed=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from collage_prompt.client import (
    ItemError,
    RetryableError,
    RunFatalError,
    VLMClient,
    VLMRequest,
    VLMResponse,
)
from collage_prompt.cost import CostModel, PriceTable, estimate_text_tokens
from collage_prompt.errors import CollagePromptError
from collage_prompt.prompt import ParseResult, parse_answer
from collage_prompt.reask import reask_request
from difflab_core.store import ResultStore

__all__ = ["BatchSummary", "RateLimiter", "RetryPolicy", "run_batch", "store_key"]

logger = logging.getLogger(__name__)
SHUTDOWN_WAIT_S = 30.0


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``n`` waits U(0, min(cap, base * 2**n)) s,
    or the server's ``retry-after`` hint when given."""

    max_attempts: int = 6
    base: float = 1.0
    cap: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise CollagePromptError(f"RetryPolicy.max_attempts={self.max_attempts}: must be >= 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        with self._lock:
            return self._rng.uniform(0.0, min(self.cap, self.base * 2**attempt))


class RateLimiter:
    """Token buckets for requests per minute and (estimated) tokens per minute, shared by all workers.

    After a 429, :meth:`cooldown` pauses every worker until the given time has passed.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        now = clock()
        self._req = float(rpm or 0)
        self._tok = float(tpm or 0)
        self._last = now
        self._cool_until = now

    def _refill(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        self._last = now
        if self.rpm:
            self._req = min(self.rpm, self._req + dt * self.rpm / 60.0)
        if self.tpm:
            self._tok = min(self.tpm, self._tok + dt * self.tpm / 60.0)

    def acquire(self, tokens: int = 0) -> None:
        """Block until one request of ``tokens`` estimated tokens may be sent."""
        if self.tpm and tokens > self.tpm:
            raise CollagePromptError(f"one request needs ~{tokens} tokens, more than tpm={self.tpm}")
        while True:
            with self._lock:
                now = self.clock()
                self._refill(now)
                wait_s = max(0.0, self._cool_until - now)
                if self.rpm and self._req < 1:
                    wait_s = max(wait_s, (1 - self._req) * 60.0 / self.rpm)
                if self.tpm and self._tok < tokens:
                    wait_s = max(wait_s, (tokens - self._tok) * 60.0 / self.tpm)
                if wait_s <= 0:
                    if self.rpm:
                        self._req -= 1
                    if self.tpm:
                        self._tok -= tokens
                    return
            self.sleep(wait_s)

    def cooldown(self, seconds: float) -> None:
        """Pause all workers for ``seconds`` from now."""
        with self._lock:
            self._cool_until = max(self._cool_until, self.clock() + seconds)


@dataclass
class BatchSummary:
    """Outcome of :func:`run_batch`. ``status``: complete, budget_reached, aborted or interrupted.

    ``records`` maps each request key to its stored result record (this run's and earlier ones); requests
    that repeat an earlier one of the same call (``n_duplicates``) share its record. ``n_calls`` counts every
    request sent (retries and re-asks included), ``n_reasks`` the re-asks.
    """

    status: str
    n_requests: int
    n_ok: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    n_duplicates: int = 0
    n_calls: int = 0
    n_reasks: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    records: dict[str, dict] = field(default_factory=dict)


def _n_answered(parsed: ParseResult) -> int:
    return sum(label is not None for label in parsed.labels)


def store_key(req: VLMRequest, client) -> str:
    """SHA-256 over the model, host, sampling settings and the request (image bytes, prompt, detail)."""
    parts = {
        "model": getattr(client, "model", ""),
        "host": getattr(client, "host", type(client).__name__),
        "temperature": getattr(client, "temperature", None),
        "max_tokens": getattr(client, "max_tokens", None),
        "request": req.key,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_batch(
    requests: Sequence[VLMRequest],
    client: VLMClient,
    store: str | Path,
    *,
    workers: int = 4,
    max_cost_usd: float | None = None,
    retry_failed: bool = False,
    retry: RetryPolicy | None = None,
    limiter: RateLimiter | None = None,
    max_reask: int = 0,
    categories=None,
    prices: PriceTable | None = None,
    cost_model: CostModel | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchSummary:
    """Send every request not already in ``store`` (a folder) and record the answers.

    Identical requests (the same :func:`store_key`) are sent once; every caller finds the answer in
    ``summary.records[req.key]``.

    ``max_cost_usd`` reserves each request's estimated cost before sending and stops submitting when the next
    one would exceed it (status ``budget_reached``). A :class:`RunFatalError` stops submission (``aborted``);
    an :class:`ItemError` or exhausted retries record a failure and the run goes on. Ctrl-C stops
    submission, waits up to 30 s for requests in flight and returns ``interrupted``.

    ``max_reask`` (0 or 1 in practice) re-asks an answer that parses ``failed`` or ``partial`` against
    ``categories`` with a format reminder (:func:`~collage_prompt.reask.reask_request`); the record keeps the
    answer naming more cells (``first_text`` holds the original), ``reasks`` and ``parse_status``, and its
    usage and ``cost_usd`` include the re-asks, which also reserve budget like any request.
    """
    if workers < 1:
        raise CollagePromptError(f"run_batch: workers={workers} must be >= 1")
    if max_reask < 0:
        raise CollagePromptError(f"run_batch: max_reask={max_reask} must be >= 0")
    if max_reask and categories is None:
        raise CollagePromptError("run_batch: max_reask needs categories to check the answers against")
    retry = retry or RetryPolicy()
    limiter = limiter or RateLimiter(sleep=sleep)
    prices = prices or PriceTable.load()
    cost_model = cost_model or CostModel.load()
    model = getattr(client, "model", "")
    priced = model in prices.prices
    if not priced:
        logger.warning(
            "no price for model %r: costs are reported as 0 and max_cost_usd cannot be enforced", model
        )
    results = ResultStore(store, name="results")
    failures = ResultStore(store, name="failures", key="fail_id")
    failed_keys: dict[str, int] = {}
    for r in failures.records():
        failed_keys[r["key"]] = failed_keys.get(r["key"], 0) + 1
    summary = BatchSummary(status="complete", n_requests=len(requests))
    lock = threading.Lock()
    spent = reserved = 0.0
    stop = threading.Event()

    def estimate_usd(req: VLMRequest) -> float:
        if not priced:
            return 0.0
        pt = req.image_tokens(cost_model, model) + estimate_text_tokens(req.prompt)
        ct = getattr(client, "max_tokens", None) or 8 * req.k + 16
        return prices.usd(pt, ct, model)

    def call(req: VLMRequest) -> tuple[VLMResponse, int]:
        """Send ``req`` through the rate limiter and the retry policy: ``(response, attempts)``."""
        tokens = estimate_text_tokens(req.prompt) + 1000
        for n in range(retry.max_attempts):
            limiter.acquire(tokens)
            with lock:
                summary.n_calls += 1
            try:
                return client.complete(req), n + 1
            except RetryableError as exc:
                if n + 1 == retry.max_attempts:
                    raise ItemError(f"gave up after {retry.max_attempts} attempts: {exc}") from None
                delay = retry.delay(n, exc.retry_after)
                if exc.rate_limited:
                    limiter.cooldown(delay)
                logger.info("retrying in %.1f s: %s", delay, exc)
                sleep(delay)
        raise AssertionError("unreachable")

    def charge(resp: VLMResponse) -> float:
        nonlocal spent
        usd = prices.usd(resp.prompt_tokens, resp.completion_tokens, model) if priced else 0.0
        with lock:
            spent += usd
        return usd

    def reask(req: VLMRequest, rec: dict) -> None:
        """Re-ask up to ``max_reask`` times while the answer parses failed/partial; keep the answer that
        names the most cells and add the re-asks' usage and cost to ``rec``."""
        nonlocal reserved
        parsed = parse_answer(rec["text"], req.k, categories)
        for i in range(1, max_reask + 1):
            if parsed.status == "ok" or stop.is_set():
                break
            ask = reask_request(req, parsed, i)
            est = estimate_usd(ask)
            with lock:
                over = max_cost_usd is not None and spent + reserved + est > max_cost_usd
                if not over:
                    reserved += est
            if over:
                rec["reask_skipped"] = "budget"
                break
            try:
                resp, n = call(ask)
            except ItemError as exc:
                rec["reask_error"] = str(exc)
                break
            finally:
                with lock:
                    reserved -= est
            usd = charge(resp)
            with lock:
                summary.n_reasks += 1
            rec["reasks"] = i
            rec["first_text"] = rec.get("first_text", rec["text"])
            rec["cost_usd"] += usd
            rec["prompt_tokens"] += resp.prompt_tokens
            rec["completion_tokens"] += resp.completion_tokens
            rec["usage_estimated"] = rec["usage_estimated"] or resp.usage_estimated
            rec["attempts"] += n
            again = parse_answer(resp.text, req.k, categories)
            if _n_answered(again) >= _n_answered(parsed):
                rec.update(
                    text=resp.text,
                    finish_reason=resp.finish_reason,
                    truncated=resp.finish_reason == "length",
                )
                parsed = again
        rec["parse_status"] = parsed.status

    def attempt(req: VLMRequest) -> dict:
        resp, n = call(req)
        rec = {
            "text": resp.text,
            "prompt_tokens": resp.prompt_tokens,
            "completion_tokens": resp.completion_tokens,
            "usage_estimated": resp.usage_estimated,
            "finish_reason": resp.finish_reason,
            "truncated": resp.finish_reason == "length",
            "latency_s": resp.latency_s,
            "model": resp.model,
            "cost_usd": charge(resp),
            "attempts": n,
        }
        if max_reask:
            reask(req, rec)
        return rec

    def finish(key: str, req: VLMRequest, fut: Future, est: float) -> None:
        nonlocal reserved
        with lock:
            reserved -= est
        try:
            rec = fut.result()
        except RunFatalError as exc:
            stop.set()
            summary.status, summary.error = "aborted", str(exc)
            return
        except ItemError as exc:
            n = failed_keys.get(key, 0)
            failed_keys[key] = n + 1
            failures.append(
                {
                    "fail_id": f"{key}/{n}",
                    "key": key,
                    "request_key": req.key,
                    "error": str(exc),
                    "meta": req.meta,
                }
            )
            summary.n_failed += 1
            return
        rec = {"key": key, "request_key": req.key, "status": "ok", **rec, "meta": req.meta}
        results.append(rec)
        summary.records[req.key] = rec
        summary.n_ok += 1

    distinct: dict[str, VLMRequest] = {}
    for req in requests:
        distinct.setdefault(store_key(req, client), req)
    summary.n_duplicates = len(requests) - len(distinct)
    pending: dict[Future, tuple[str, VLMRequest, float]] = {}
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for key, req in distinct.items():
            if results.done(key):
                summary.records[req.key] = next(r for r in results.records() if r["key"] == key)
                summary.n_skipped += 1
                continue
            if key in failed_keys and not retry_failed:
                summary.n_skipped += 1
                continue
            while len(pending) >= workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    k, r, e = pending.pop(fut)
                    finish(k, r, fut, e)
            if stop.is_set():
                break
            est = estimate_usd(req)
            with lock:
                over = max_cost_usd is not None and spent + reserved + est > max_cost_usd
                if not over:
                    reserved += est
            if over:
                summary.status = "budget_reached"
                break
            pending[pool.submit(attempt, req)] = (key, req, est)
        for fut in list(pending):
            k, r, e = pending.pop(fut)
            finish(k, r, fut, e)
    except KeyboardInterrupt:
        summary.status = "interrupted"
        stop.set()
        done, _ = wait(list(pending), timeout=SHUTDOWN_WAIT_S)
        for fut in done:
            k, r, e = pending.pop(fut)
            if fut.exception() is None or isinstance(fut.exception(), (ItemError, RunFatalError)):
                finish(k, r, fut, e)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    summary.cost_usd = sum(r.get("cost_usd", 0.0) for r in summary.records.values())
    return summary
