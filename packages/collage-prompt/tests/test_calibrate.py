"""Cost calibration probe (spec §8.2) against a stub that reports usage by a known base/per-tile rule."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from collage_prompt.calibrate import calibrate_image_tokens, parse_sizes
from collage_prompt.cli import app
from collage_prompt.client import OpenAIChatClient
from collage_prompt.cost import CostModel
from collage_prompt.errors import CollagePromptError

SENTINEL = "sk-test-SENTINEL"
BASE, PER_TILE = 65, 129
# 512-px tiles at high detail, worked by hand from OpenAI's rule (fit in 2048, short side down to 768)
TILES = {(512, 512): 1, (1024, 512): 2, (1024, 1024): 4, (2048, 4096): 6, (300, 200): 1}
SIZES = "512x512,1024x512,1024x1024,2048x4096"


def usage_by_rule(body: dict) -> dict:
    """A chat reply whose usage is 7 + len(text) // 4 text tokens plus BASE + PER_TILE * tiles per image."""
    tokens = 7
    for part in body["messages"][0]["content"]:
        if part["type"] == "text":
            tokens += len(part["text"]) // 4
        else:
            png = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            tokens += BASE + PER_TILE * TILES[Image.open(io.BytesIO(png)).size]
    return {
        "status": 200,
        "body": {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1},
        },
    }


@pytest.fixture
def client(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    stub.script = [usage_by_rule]
    return OpenAIChatClient("gpt-4o", base_url=stub.url, timeout=5.0)


def test_fit_recovers_base_and_per_tile_exactly(stub, client):
    cal = calibrate_image_tokens(client, parse_sizes(SIZES), workers=1)
    assert (cal.base, cal.per_tile) == pytest.approx((BASE, PER_TILE), abs=1e-9)
    assert cal.max_residual == 0 and cal.cost_usd > 0
    assert [p["tiles"] for p in cal.points] == [1, 2, 4, 6]
    assert [p["image_tokens"] for p in cal.points] == [BASE + PER_TILE * t for t in (1, 2, 4, 6)]
    assert stub.calls == 5
    text_only = [r for r in stub.requests if len(r["messages"][0]["content"]) == 1]
    assert len(text_only) == 1  # the text probe carries no image
    entry = cal.entry()
    assert (entry["family"], entry["base"], entry["per_tile"]) == ("tile", BASE, PER_TILE)


def test_bad_probes(stub, client):
    with pytest.raises(CollagePromptError, match="at least two tile counts"):
        calibrate_image_tokens(client, [(512, 512), (300, 200)])
    stub.script = [stub.ok("ok", usage=False)]
    with pytest.raises(CollagePromptError, match="reports no usage"):
        calibrate_image_tokens(client, parse_sizes(SIZES), workers=1)
    stub.script = [stub.error(401)]
    with pytest.raises(CollagePromptError, match="no answer for probe"):
        calibrate_image_tokens(client, parse_sizes(SIZES), workers=1)
    with pytest.raises(CollagePromptError, match="--sizes"):
        parse_sizes("512,512")


def test_cli_calibrate_writes_a_cost_model_the_cost_command_reads(stub, client, tmp_path):
    out = tmp_path / "rules.json"
    args = ["cost", "--calibrate", "--base-url", stub.url, "--model", "gpt-4o", "--sizes", SIZES]
    dry = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert dry.exit_code == 1 and "--yes" in dry.output and stub.calls == 0 and not out.exists()
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--yes"])
    assert result.exit_code == 0, result.output
    fit = json.loads(result.stdout)
    assert (fit["base"], fit["per_tile"]) == pytest.approx((BASE, PER_TILE))
    assert SENTINEL not in result.output and SENTINEL not in out.read_text()
    rule = CostModel.load(out, extend_shipped=True)
    assert rule.image_tokens(1024, 1024, "high", "gpt-4o") == BASE + 4 * PER_TILE
    assert rule.image_tokens(512, 512, "high", "gpt-4-turbo") == 255  # shipped entries kept
    est = CliRunner().invoke(app, ["cost", "--grid", "3x3", "--cost-model", str(out)])
    assert est.exit_code == 0 and json.loads(est.output)["image_tokens"] == BASE + PER_TILE


def test_bad_cost_model_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"my-model": {"family": "tile", "base": "x"}}))
    with pytest.raises(CollagePromptError, match=r"rules\.json: model 'my-model' needs"):
        CostModel.load(path, extend_shipped=True)
    result = CliRunner().invoke(app, ["cost", "--cost-model", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
