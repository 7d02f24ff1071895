"""`collage-prompt run --max-reask 1 --fallback` against the loopback stub: re-asks, fallbacks and costs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from collage_prompt.cli import app
from collage_prompt.cost import PriceTable

CLASSES = ["cat", "dog", "eel", "fox"]


def _folder(root):
    for i, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((24, 24, 3), 60 * i, dtype=np.uint8)).save(root / cls / "a.png")
    return root


def test_run_with_reask_and_fallback(stub, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SENTINEL")
    root = _folder(tmp_path / "images")
    stub.script = [
        stub.ok("Here is the prediction: [0: 'cat', 1: 'bird', 2: 'eel']"),  # partial: cell 3 missing
        stub.ok("Here is the prediction: [0: 'cat', 1: 'bird', 2: 'eel', 3: 'wolf']"),  # re-ask: all named
        stub.ok("Here is the prediction: ['dog']"),  # fallback for cell 1 (out of list)
        stub.ok("Here is the prediction: ['fox']"),  # fallback for cell 3 (out of list)
    ]
    out = tmp_path / "run"
    args = ["run", str(root), "--grid", "2x2", "--base-url", stub.url, "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--max-reask", "1", "--fallback", "--yes"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    one = PriceTable.load().usd(300, 20, "gpt-4o")
    assert stub.calls == 4 and report["calls"] == 4 and report["reasks"] == 1
    assert report["fallback_cells"] == 2 and report["cost_usd"] == pytest.approx(4 * one)
    assert report["fallback_cost_usd"] == pytest.approx(2 * one) and report["acc"] == 1.0
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["class"] for r in labels] == CLASSES
    assert [r["source"] for r in labels] == ["collage", "fallback", "collage", "fallback"]
    assert [r["fallback_reason"] for r in labels] == [None, "out_of_list", None, "out_of_list"]
    assert [r["image_id"].split("/")[-2] for r in labels] == CLASSES
    assert "sk-test-SENTINEL" not in (out / "results.jsonl").read_text()


def test_plain_run_writes_labels_and_uses_the_cost_model(stub, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SENTINEL")
    root = _folder(tmp_path / "images")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"gpt-4o": {"family": "tile", "base": 1000, "per_tile": 1000}}))
    stub.script = [stub.ok("Here is the prediction: [0: 'cat', 1: 'bird', 2: 'eel']")]
    out = tmp_path / "run"
    args = ["run", str(root), "--grid", "2x2", "--base-url", stub.url, "--out", str(out), "--yes"]
    plain = CliRunner().invoke(app, args)
    priced = CliRunner().invoke(app, [*args, "--cost-model", str(rules)])
    assert plain.exit_code == 0 and priced.exit_code == 0, plain.output + priced.output
    assert stub.calls == 1  # the second run resumes from the store
    dollars = [float(r.output.split("estimated $")[1].split()[0]) for r in (plain, priced)]
    assert dollars[1] > dollars[0]  # 2,000 image tokens instead of 255
    report = json.loads(plain.output.strip().splitlines()[-1])
    assert (report["calls"], report["acc"]) == (1, 0.5) and "fallback_cells" not in report
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["class"] for r in labels] == ["cat", None, "eel", None]
    assert [r["answer"] for r in labels] == ["cat", "bird", "eel", None]
    assert {r["source"] for r in labels} == {"collage"}
