"""VLM clients: the request/response types, an OpenAI-compatible chat client and a cache-only replay client.

Clients raise :class:`RetryableError` (try again later), :class:`ItemError` (this request cannot succeed)
or :class:`RunFatalError` (stop the run: bad key, unknown model, no quota). Retrying is :mod:`batch`'s job.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from collage_prompt.cost import CostModel, estimate_text_tokens
from collage_prompt.errors import CollagePromptError
from collage_prompt.prompt import build_messages

__all__ = [
    "ItemError",
    "OpenAIChatClient",
    "ReplayClient",
    "RetryableError",
    "RunFatalError",
    "VLMClient",
    "VLMRequest",
    "VLMResponse",
    "encode_png",
]

logger = logging.getLogger(__name__)


class RetryableError(CollagePromptError):
    """A transient failure (rate limit, timeout, 5xx); ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class ItemError(CollagePromptError):
    """This request cannot succeed (bad request, content filter); the run continues."""


class RunFatalError(CollagePromptError):
    """The run cannot go on (authentication, permission, unknown model, exhausted quota)."""


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (fast compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class VLMRequest:
    """One question about one image (``image_png=b""``: a text-only question, e.g. a calibration probe).

    ``meta`` is layout metadata kept locally (grid, template, image ids, and for simulation the true labels);
    it is never sent to a server.
    """

    image_png: bytes
    prompt: str
    detail: str = "high"
    k: int = 1
    meta: dict = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            h = hashlib.sha256()
            h.update(self.image_png)
            h.update(self.prompt.encode("utf-8"))
            h.update(self.detail.encode("ascii"))
            self.key = h.hexdigest()

    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the PNG (``(0, 0)`` for a text-only request)."""
        if not self.image_png:
            return 0, 0
        with Image.open(io.BytesIO(self.image_png)) as im:
            return im.size

    def image_tokens(self, cost_model: CostModel, model: str) -> int:
        """Estimated input tokens of the image under ``cost_model`` (0 for a text-only request)."""
        if not self.image_png:
            return 0
        w, h = self.image_size()
        return cost_model.image_tokens(w, h, self.detail, model)


@dataclass
class VLMResponse:
    """A reply: text, token usage (``usage_estimated`` when the server reported none) and timing."""

    text: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False
    finish_reason: str | None = "stop"
    latency_s: float = 0.0
    model: str = ""


@runtime_checkable
class VLMClient(Protocol):
    """Anything that answers a :class:`VLMRequest`."""

    model: str

    def complete(self, req: VLMRequest) -> VLMResponse: ...


class OpenAIChatClient:
    """Chat-completions client for OpenAI or any compatible server (vLLM, Ollama, llama.cpp) via ``base_url``.

    The key is read from the environment variable ``api_key_env`` only, and never logged, stored or shown in
    ``repr``. With ``base_url`` set and no key, the placeholder ``"EMPTY"`` is sent. The SDK runs with
    ``max_retries=0``: :func:`collage_prompt.batch.run_batch` owns retries.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        detail: str = "high",
        max_tokens: int | None = None,
        max_tokens_param: str = "max_tokens",
        temperature: float = 0.0,
        timeout: float = 60.0,
        extra_body: dict | None = None,
        json_mode: bool = False,
        cost_model: CostModel | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise CollagePromptError(
                "OpenAIChatClient needs the 'openai' package: pip install openai"
            ) from exc
        self._openai = openai
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise CollagePromptError(
                    f"no API key: set the environment variable {api_key_env} (keys are never taken as arguments)"
                )
            logger.info("no key in %s; sending the placeholder 'EMPTY' to %s", api_key_env, base_url)
            key = "EMPTY"
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise CollagePromptError(
                f"max_tokens_param={max_tokens_param!r}: use 'max_tokens' or 'max_completion_tokens'"
            )
        self.model = model
        self.base_url = base_url
        self.detail = detail
        self.max_tokens = max_tokens
        self.max_tokens_param = max_tokens_param
        self.temperature = temperature
        self.extra_body = extra_body
        self.json_mode = json_mode
        self.cost_model = cost_model or CostModel.load()
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)

    def __repr__(self) -> str:
        return f"OpenAIChatClient(model={self.model!r}, base_url={self.base_url!r}, api_key=<redacted>)"

    @property
    def host(self) -> str:
        """The endpoint the requests go to (part of store keys)."""
        return self.base_url or "api.openai.com"

    def complete(self, req: VLMRequest) -> VLMResponse:
        """Send one request; map SDK errors to Retryable/Item/RunFatal errors."""
        o = self._openai
        kwargs: dict = {
            "model": self.model,
            "messages": build_messages(req.image_png, req.prompt, req.detail)
            if req.image_png
            else [{"role": "user", "content": [{"type": "text", "text": req.prompt}]}],
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            kwargs[self.max_tokens_param] = self.max_tokens
        if self.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        start = time.monotonic()
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except o.RateLimitError as exc:
            if _error_code(exc) == "insufficient_quota":
                raise RunFatalError(f"{self.host}: quota exhausted (insufficient_quota)") from None
            raise RetryableError(
                f"{self.host}: rate limited (429)", _retry_after(exc), rate_limited=True
            ) from None
        except (o.AuthenticationError, o.PermissionDeniedError) as exc:
            raise RunFatalError(
                f"{self.host}: {type(exc).__name__} ({exc.status_code}); check the key in the environment"
            ) from None
        except o.NotFoundError as exc:
            raise RunFatalError(
                f"{self.host}: model {self.model!r} or endpoint not found ({exc.status_code})"
            ) from None
        except (o.BadRequestError, o.UnprocessableEntityError) as exc:
            raise ItemError(f"{self.host}: request rejected ({exc.status_code}): {_short(exc)}") from None
        except (o.InternalServerError, o.ConflictError) as exc:
            raise RetryableError(
                f"{self.host}: server error ({exc.status_code})", _retry_after(exc)
            ) from None
        except o.APITimeoutError:
            raise RetryableError(f"{self.host}: request timed out") from None
        except o.APIConnectionError:
            raise RetryableError(f"{self.host}: connection failed") from None
        except o.APIStatusError as exc:
            raise ItemError(f"{self.host}: unexpected status {exc.status_code}") from None
        latency = time.monotonic() - start
        if not resp.choices:
            raise ItemError(f"{self.host}: reply without choices")
        choice = resp.choices[0]
        text = choice.message.content if choice.message is not None else None
        if choice.finish_reason == "content_filter":
            raise ItemError(f"{self.host}: answer blocked by the content filter")
        usage = resp.usage
        if usage is not None and usage.prompt_tokens is not None:
            pt, ct, est = int(usage.prompt_tokens), int(usage.completion_tokens or 0), False
        else:
            pt = req.image_tokens(self.cost_model, self.model) + estimate_text_tokens(req.prompt)
            ct, est = estimate_text_tokens(text or ""), True
        return VLMResponse(text, pt, ct, est, choice.finish_reason, latency, resp.model or self.model)


def _error_code(exc) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return err.get("code") or err.get("type")
    return getattr(exc, "code", None)


def _retry_after(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _short(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else None
        if msg:
            return str(msg)[:200]
    return json.dumps(body)[:200] if body is not None else type(exc).__name__


class ReplayClient:
    """Answers from a store of earlier responses (records with ``key``, ``text`` and usage); never calls a server."""

    def __init__(self, records, model: str = "replay") -> None:
        self.model = model
        self._by_key = {r["key"]: r for r in records if r.get("status", "ok") == "ok"}

    def complete(self, req: VLMRequest) -> VLMResponse:
        """The recorded response for ``req.key``, or :class:`ItemError` when it was never recorded."""
        rec = self._by_key.get(req.key)
        if rec is None:
            raise ItemError(f"replay: no recorded response for request {req.key[:12]}")
        return VLMResponse(
            rec.get("text"),
            int(rec.get("prompt_tokens", 0)),
            int(rec.get("completion_tokens", 0)),
            bool(rec.get("usage_estimated", False)),
            rec.get("finish_reason", "stop"),
            0.0,
            rec.get("model", self.model),
        )
