"""Tests of difflab_core.store: crash-safe resume, rank shards, merge and run-config fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab_core.errors import DifflabError
from difflab_core.store import ResultStore, fingerprint, write_run_config


def _parse_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_resume_after_torn_write(tmp_path: Path) -> None:
    keys = [f"item{i}" for i in range(6)]
    store = ResultStore(tmp_path)
    for k in keys[:3]:
        store.append({"key": k, "score": float(len(k))})
    path = tmp_path / "results.jsonl"
    # a crash mid-write leaves half a JSON line without a newline
    with open(path, "ab") as f:
        f.write(b'{"key": "item3", "sco')

    resumed = ResultStore(tmp_path)
    assert len(resumed) == 3
    todo = [k for k in keys if not resumed.done(k)]
    assert todo == keys[3:]
    for k in todo:
        resumed.append({"key": k, "score": float(len(k))})

    rows = _parse_jsonl(path)
    assert [r["key"] for r in rows] == keys
    assert ResultStore(tmp_path).keys() == keys


def test_last_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": 1, "v": 2}\n{"key": 2, "v": 3}', encoding="utf-8")
    store = ResultStore(tmp_path)
    assert store.keys() == [1, 2]
    store.append({"key": 3, "v": 4})
    assert [r["key"] for r in _parse_jsonl(path)] == [1, 2, 3]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", oops}\n{"key": "c"}\n', encoding="utf-8")
    with pytest.raises(DifflabError, match=r"results\.jsonl: line 2"):
        ResultStore(tmp_path)


def test_record_without_key_field_is_rejected(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, key="prompt_id")
    with pytest.raises(DifflabError, match="prompt_id"):
        store.append({"key": "x"})
    (tmp_path / "results.jsonl").write_text('{"other": 1}\n', encoding="utf-8")
    with pytest.raises(DifflabError, match="line 1"):
        ResultStore(tmp_path, key="prompt_id")


def test_duplicate_append_raises(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.append({"key": "a", "v": 1})
    with pytest.raises(DifflabError, match="already recorded"):
        store.append({"key": "a", "v": 2})
    # also across processes / reopen
    with pytest.raises(DifflabError, match="already recorded"):
        ResultStore(tmp_path).append({"key": "a", "v": 3})
    assert len(_parse_jsonl(tmp_path / "results.jsonl")) == 1


def test_values_are_converted_to_json(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, name="scores")
    store.append({"key": 0, "a": np.float32(0.5), "b": torch.tensor([1, 2]), "p": Path("x/y")})
    expected = {"key": 0, "a": 0.5, "b": [1, 2], "p": "x/y"}
    assert store.records() == [expected]
    assert _parse_jsonl(tmp_path / "scores.jsonl") == [expected]


def test_two_ranks_then_merge(tmp_path: Path) -> None:
    keys = list(range(10))
    stores = [ResultStore(tmp_path, rank=r) for r in (0, 1)]
    for k in keys:
        stores[k % 2].append({"key": k, "sq": k * k})
    assert (tmp_path / "results.rank0.jsonl").exists() and (tmp_path / "results.rank1.jsonl").exists()

    # a fresh view on any rank sees the other rank's work
    view = ResultStore(tmp_path, rank=1)
    assert all(view.done(k) for k in keys)

    main = ResultStore(tmp_path)
    assert sorted(main.keys()) == keys
    with pytest.raises(DifflabError, match="main process"):
        view.merge()
    out = main.merge()
    assert out == tmp_path / "results.jsonl"
    assert not list(tmp_path.glob("results.rank*.jsonl"))
    rows = _parse_jsonl(out)
    assert sorted(r["key"] for r in rows) == keys
    assert len(rows) == len(keys)
    assert all(r["sq"] == r["key"] ** 2 for r in rows)
    # rank order: rank 0 records first
    assert [r["key"] for r in rows] == [*range(0, 10, 2), *range(1, 10, 2)]
    assert len(ResultStore(tmp_path)) == len(keys)


def test_merge_keeps_main_and_first_shard_occurrence(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"key": "a", "src": "main"}\n', encoding="utf-8")
    (tmp_path / "results.rank0.jsonl").write_text(
        '{"key": "a", "src": "r0"}\n{"key": "b", "src": "r0"}\n', encoding="utf-8"
    )
    (tmp_path / "results.rank1.jsonl").write_text(
        '{"key": "b", "src": "r1"}\n{"key": "c", "src": "r1"}\n{"key": "d", "sr', encoding="utf-8"
    )
    main = ResultStore(tmp_path)
    main.merge()
    rows = _parse_jsonl(tmp_path / "results.jsonl")
    assert rows == [
        {"key": "a", "src": "main"},
        {"key": "b", "src": "r0"},
        {"key": "c", "src": "r1"},
    ]


def test_other_names_are_separate(tmp_path: Path) -> None:
    ResultStore(tmp_path, name="a").append({"key": 1})
    ResultStore(tmp_path, name="a", rank=3).append({"key": 2})
    assert len(ResultStore(tmp_path, name="b")) == 0
    assert ResultStore(tmp_path, name="a").keys() == [1, 2]


def test_fingerprint_is_canonical_sha256() -> None:
    cfg = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    canon = '{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}'
    assert fingerprint(cfg) == hashlib.sha256(canon.encode()).hexdigest()[:16]
    assert fingerprint({"a": {"y": True, "z": None}, "b": (1, 2.5, "x")}) == fingerprint(cfg)
    assert fingerprint({"a": np.int64(3)}) == fingerprint({"a": 3})
    assert fingerprint({"a": 3}) != fingerprint({"a": 4})


def test_run_config_mismatch_and_new_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = {"model": "tiny", "steps": 10}
    path = write_run_config(run, cfg)
    written = json.loads(path.read_text())
    assert written["fingerprint"] == fingerprint(cfg)
    ResultStore(run).append({"key": "k1"})

    write_run_config(run, cfg)  # same config resumes
    assert ResultStore(run).done("k1")

    with pytest.raises(DifflabError, match="new_run=True"):
        write_run_config(run, {"model": "tiny", "steps": 20})
    assert ResultStore(run).done("k1")

    write_run_config(run, {"model": "tiny", "steps": 20}, new_run=True)
    prev = list(run.glob("previous-*"))
    assert len(prev) == 1
    assert json.loads((prev[0] / "config.json").read_text())["fingerprint"] == fingerprint(cfg)
    assert _parse_jsonl(prev[0] / "results.jsonl") == [{"key": "k1"}]
    assert not ResultStore(run).done("k1")
    assert json.loads((run / "config.json").read_text())["steps"] == 20

    # a second start-over keeps the first archive
    write_run_config(run, cfg, new_run=True)
    assert len(list(run.glob("previous-*"))) == 2


def test_explicit_fingerprint_field_is_used(tmp_path: Path) -> None:
    write_run_config(tmp_path, {"fingerprint": "abc", "note": "first"})
    write_run_config(tmp_path, {"fingerprint": "abc", "note": "second"})  # only the fingerprint matters
    with pytest.raises(DifflabError, match="'abc'"):
        write_run_config(tmp_path, {"fingerprint": "abd"})


def test_cached_stage_runs_once_per_config_and_recomputes_a_torn_result(tmp_path):
    from difflab_core.store import cached_stage

    calls = []

    def compute(stage):
        calls.append(stage)
        (stage / "grid.txt").write_text("x")
        return {"value": len(calls)}

    first = cached_stage(tmp_path, "sample", {"n": 4}, compute)
    assert first == {"value": 1} and (calls[0] / "grid.txt").exists()
    assert cached_stage(tmp_path, "sample", {"n": 4}, compute) == {"value": 1} and len(calls) == 1
    assert cached_stage(tmp_path, "sample", {"n": 8}, compute) == {"value": 2} and calls[1] != calls[0]
    (calls[0] / "result.json").write_text('{"value": ')  # killed while writing
    assert cached_stage(tmp_path, "sample", {"n": 4}, compute) == {"value": 3}
