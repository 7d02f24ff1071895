"""`screenlab run --base-url` against a loopback OpenAI-compatible stub server (no network): usage as the
server reports it, the key never written anywhere, and a rejected key stopping the run with exit status 3."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from typer.testing import CliRunner

from screenlab.cli import app

SENTINEL = "sk-test-SENTINEL"
ANSWER = "Here is the prediction: [0: 'red', 1: 'red', 2: 'blue', 3: 'blue']"


@pytest.fixture
def server():
    state = {"status": 200, "calls": 0, "keys": set()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            state["calls"] += 1
            state["keys"].add(self.headers.get("Authorization"))
            if state["status"] == 200:
                body = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-4o",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020},
                }
            else:
                body = {
                    "error": {
                        "message": "bad key",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
            data = json.dumps(body).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def folder(tmp_path):
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "photos" / name / f"{i}.png")
    return tmp_path / "photos"


def test_an_endpoint_run_reports_the_servers_usage_and_never_the_key(server, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    out = tmp_path / "run"
    args = ["run", str(folder), "--base-url", server["url"], "--grid", "2", "--baseline", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # one collage, then each distinct image alone: the two red and the two blue images are identical files,
    # and an identical request is sent once
    assert server["calls"] == 1 + 2 and server["keys"] == {f"Bearer {SENTINEL}"}
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert figures["collage"]["prompt_tokens"] == 1000 and figures["one_per_call"]["prompt_tokens"] == 2000
    assert figures["one_per_call"]["requests"] == 2
    # the stub answers "blue, blue, red, red" order-blind: the 2x2 collage (blue/0, blue/1, red/0, red/1) is
    # labelled red, red, blue, blue, so none is right; alone each image gets 'red' (the first slot)
    assert figures["labels"]["accuracy"] == 0.0 and figures["one_per_call"]["accuracy"] == 0.5
    assert "key from $OPENAI_API_KEY: found" in result.output
    written = [
        p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".html")
    ]
    assert SENTINEL not in result.output and not any(SENTINEL in text for text in written)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and server["calls"] == 3  # everything was answered: nothing is sent again


def test_a_rejected_key_stops_the_run_with_one_line(server, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    server["status"] = 401
    args = ["run", str(folder), "--base-url", server["url"], "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "AuthenticationError" in errors[0] and SENTINEL not in result.output
