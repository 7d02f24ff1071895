"""Shared fixtures: the digits dataset, a fitted simulator classifier, and a loopback OpenAI-compatible stub."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from collage_prompt.data import offline_dataset

    return offline_dataset("digits", size=32)


@pytest.fixture(scope="session")
def classifier(digits):
    from collage_prompt.simulate import CellClassifier

    idx = np.arange(0, 600)
    return CellClassifier().fit([digits.images[i] for i in idx], digits.labels[idx])


class StubServer:
    """Minimal ``/v1/chat/completions`` on 127.0.0.1. ``script`` is a list of replies consumed in order
    (the last one repeats): ``{"status", "body", "headers", "delay"}``, or a callable of the request body returning
    one; ``calls`` counts requests."""

    def __init__(self) -> None:
        self.script: list[dict] = []
        self.calls = 0
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.calls += 1
                    stub.requests.append(body)
                    stub.auth_headers.append(self.headers.get("authorization", ""))
                    reply = (
                        stub.script[min(stub.calls - 1, len(stub.script) - 1)]
                        if stub.script
                        else ok_reply("[0: 'zero']")
                    )
                if callable(reply):
                    reply = reply(body)
                if reply.get("delay"):
                    time.sleep(reply["delay"])
                data = json.dumps(reply.get("body", {})).encode()
                try:
                    self.send_response(reply.get("status", 200))
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.get("headers", {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    ok = staticmethod(lambda *a, **kw: ok_reply(*a, **kw))
    error = staticmethod(lambda *a, **kw: error_reply(*a, **kw))


def ok_reply(text: str, usage: bool = True, finish: str = "stop") -> dict:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}
    return {"status": 200, "body": body}


def error_reply(status: int, code: str = "error", headers: dict | None = None) -> dict:
    return {
        "status": status,
        "body": {"error": {"message": f"stub {status}", "type": code, "code": code}},
        "headers": headers or {},
    }


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()
