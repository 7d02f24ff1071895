"""The benchmark's ``--live`` path against the loopback stub server: costs from the reported usage, the spend
cap, resume from ``--out``, and the API key kept out of every output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "collage_prompt.py"
SECRET = "sk-test-never-shown-9f2c"
USAGE = (300, 20)  # the stub's reported prompt / completion tokens per call
USD_PER_CALL = USAGE[0] * 2.5e-6 + USAGE[1] * 10.0e-6  # gpt-4o in the shipped price table


def _answerer(stub):
    """Answer every cell 'seven' for the grid the prompt names (a standard prompt: one label)."""

    def answer(body: dict) -> dict:
        grid = re.search(r"(\d)x(\d) grid", json.dumps(body["messages"]))
        k = int(grid.group(1)) * int(grid.group(2)) if grid else 1
        if k == 1:
            return stub.ok("Here is the prediction: ['seven']")
        return stub.ok("Here is the prediction: [" + ", ".join(f"{i}: 'seven'" for i in range(k)) + "]")

    return answer


def _run(stub, out: Path, cap: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCHMARK), "--quick", "--live", "--base-url", stub.url, "--yes"]
    cmd += ["--max-cost-usd", str(cap), "--out", str(out), "--n-train", "2", "--n-test", "2"]
    cmd += ["--exhaustive-sets", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(not BENCHMARK.is_file(), reason="runs from the repository checkout only")
def test_live_run_costs_cap_resume_and_secrecy(stub, tmp_path):
    stub.script = [_answerer(stub)]
    out = tmp_path / "live"
    done = _run(stub, out, cap=1.0)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["live"]["model"] == "gpt-4o" and result["simulator"] is None
    assert result["predictor_spearman_within_set_3x3"] is None  # no simulator expectation in a live run
    # every figure priced from the usage the endpoint reported: one call per collage or image
    assert result["usd_per_1k_images_3x3"] == pytest.approx(1000 * USD_PER_CALL / 9, rel=1e-9)
    assert result["usd_per_1k_images_2x2"] == pytest.approx(1000 * USD_PER_CALL / 4, rel=1e-9)
    assert result["usd_per_1k_images_standard"] == pytest.approx(1000 * USD_PER_CALL, rel=1e-9)
    assert result["parse_success_rate"] == 1.0
    calls = stub.calls
    assert 2 * (2 * 4 + 3 * 2) <= calls <= 2 * (2 * 4 + 3 * 2) + 2 * 13  # collages + standard images

    # a rerun with the same --out sends nothing: every answer is in the stores
    again = _run(stub, out, cap=1.0)
    assert again.returncode == 0, again.stderr[-2000:]
    assert stub.calls == calls
    assert json.loads(again.stdout)["acc_3x3_random"] == result["acc_3x3_random"]

    # a cap below one request's estimated cost sends nothing and says why
    fresh = tmp_path / "capped"
    capped = _run(stub, fresh, cap=0.5 * USD_PER_CALL)
    assert capped.returncode != 0 and "no 2x2 collage was answered" in capped.stderr
    assert stub.calls == calls

    for proc in (done, again, capped):
        assert SECRET not in proc.stdout + proc.stderr
    for path in [*out.rglob("*"), *fresh.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
