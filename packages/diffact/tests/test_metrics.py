"""MS-TCN metrics: the spec's hand-worked cases and an independent pure-Python implementation."""

from __future__ import annotations

import math
import random

import pytest

from diffact.errors import DiffActError
from diffact.metrics import SegmentationMetrics, edit_score, evaluate_dirs, f_score_counts


def ref_segments(seq, bg, end):
    """Runs as (label, start, end); the last ends at len-1 under 'asformer'."""
    runs = []
    for i, lab in enumerate(seq):
        if runs and runs[-1][0] == lab:
            runs[-1][2] = i + 1
        else:
            runs.append([lab, i, i + 1])
    if runs and end == "asformer":
        runs[-1][2] = len(seq) - 1
    return [tuple(r) for r in runs if r[0] not in bg]


def ref_levenshtein(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        for j in range(len(b) + 1):
            if i == 0 or j == 0:
                table[i][j] = i + j
            else:
                table[i][j] = min(
                    table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
                )
    return table[-1][-1]


def ref_counts(pred, gt, tau, bg, end):
    p, y = ref_segments(pred, bg, end), ref_segments(gt, bg, end)
    used = [False] * len(y)
    tp = fp = 0
    for lab, s, e in p:
        ious = []
        for ylab, ys, ye in y:
            union = max(e, ye) - min(s, ys)
            if union == 0:
                ious.append(math.nan)
            else:
                ious.append((min(e, ye) - max(s, ys)) / union if lab == ylab else 0.0)
        if not ious:
            fp += 1
            continue
        nans = [i for i, v in enumerate(ious) if math.isnan(v)]
        best = nans[0] if nans else max(range(len(ious)), key=lambda i: (ious[i], -i))
        if not math.isnan(ious[best]) and ious[best] >= tau and not used[best]:
            used[best] = True
            tp += 1
        else:
            fp += 1
    return tp, fp, len(y) - sum(used)


def ref_metrics(pairs, bg=("background",), end="mstcn"):
    correct = sum(a == b for pred, gt in pairs for a, b in zip(pred, gt, strict=True))
    frames = sum(len(gt) for _, gt in pairs)
    edits = []
    for pred, gt in pairs:
        p = [s[0] for s in ref_segments(pred, bg, end)]
        y = [s[0] for s in ref_segments(gt, bg, end)]
        edits.append(100.0 if not p and not y else (1 - ref_levenshtein(p, y) / max(len(p), len(y))) * 100)
    out = {"Acc": 100 * correct / frames, "Edit": sum(edits) / len(edits)}
    for tau, name in ((0.1, "F1@10"), (0.25, "F1@25"), (0.5, "F1@50")):
        tp = fp = fn = 0
        for pred, gt in pairs:
            a, b, c = ref_counts(pred, gt, tau, bg, end)
            tp, fp, fn = tp + a, fp + b, fn + c
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out[name] = 200 * prec * rec / (prec + rec) if prec + rec else 0.0
    out["AVG"] = sum(out.values()) / 5
    return out


def score(pairs, bg=("background",), end="mstcn"):
    m = SegmentationMetrics(bg, segment_end=end)
    for pred, gt in pairs:
        m.update(pred.split() if isinstance(pred, str) else pred, gt.split() if isinstance(gt, str) else gt)
    return m


def close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


@pytest.mark.parametrize(
    ("gt", "pred", "bg", "expected"),
    [
        (
            "a a a b b b b c c c",
            "a a b b b b b b c c",
            (),
            {"Acc": 80, "Edit": 100, "F1@10": 100, "F1@25": 100, "F1@50": 100},
        ),
        (
            "a a a a b b b b b b",
            "a a b a b b b b b c",
            (),
            {"Acc": 80, "Edit": 40, "F1@10": 400 / 7, "F1@25": 400 / 7, "F1@50": 400 / 7},
        ),
        (
            "bg a a bg b b b bg c c",
            "a a a bg b bg b b c c",
            ("bg",),
            {"Acc": 70, "Edit": 75, "F1@10": 600 / 7, "F1@25": 600 / 7, "F1@50": 400 / 7},
        ),
    ],
)
def test_hand_worked_cases(gt, pred, bg, expected) -> None:
    for end in ("mstcn", "asformer"):
        got = score([(pred, gt)], bg, end).compute()
        close({k: got[k] for k in expected}, {k: float(v) for k, v in expected.items()})
        close(got, ref_metrics([(pred.split(), gt.split())], bg, end))


def test_case2_counts() -> None:
    assert f_score_counts(
        ["a", "a", "b", "a", "b", "b", "b", "b", "b", "c"],
        ["a", "a", "a", "a", "b", "b", "b", "b", "b", "b"],
        0.5,
    ) == (2, 3, 0)


def test_last_segment_conventions() -> None:
    seq = ["a", "a", "a", "a", "b"]
    assert f_score_counts(seq, seq, 0.1, (), "mstcn") == (2, 0, 0)
    assert f_score_counts(seq, seq, 0.1, (), "asformer") == (1, 1, 1)
    assert score([(seq, seq)], (), "mstcn").compute()["F1@10"] == 100
    assert score([(seq, seq)], (), "asformer").compute()["F1@10"] == 50
    gt, pred = "a a a a b b", "a a b b b b"
    mstcn, asformer = (
        score([(pred, gt)], (), "mstcn").compute(),
        score([(pred, gt)], (), "asformer").compute(),
    )
    assert mstcn["F1@50"] == 100 and asformer["F1@50"] == 50
    assert mstcn["F1@25"] == asformer["F1@25"] == 100


def test_pooling_over_videos() -> None:
    pairs = [("a a b b b b", "a a a a b b"), ("a a b a b b b b b c", "a a a a b b b b b b")]
    got = score(pairs, ()).compute()
    assert got["Acc"] == pytest.approx(75.0)  # pooled frames, not the per-video mean 73.33
    assert got["Edit"] == pytest.approx(70.0)
    assert got["F1@50"] == pytest.approx(800 / 11)  # TP 4, FP 3, FN 0 pooled; not 78.57
    assert score(pairs, (), "asformer").compute()["F1@50"] == pytest.approx(600 / 11)
    assert score(pairs, (), "mstcn").counts()["F1@50"] == (4, 3, 0)


def test_degenerate_cases() -> None:
    bg = ("background",)
    assert edit_score(["background"] * 3, ["background"] * 3, bg) == 100.0
    assert f_score_counts(["a", "a", "b"], ["background"] * 3, 0.1, bg) == (0, 2, 0)
    got = score([("background background", "background background")], bg).compute()
    assert got["Edit"] == 100 and got["F1@50"] == 0 and got["Acc"] == 100
    # a one-frame final segment under asformer has zero length: 0/0 IoU, never a match
    assert f_score_counts(["a", "b"], ["a", "b"], 0.1, (), "asformer") == (1, 1, 1)
    with pytest.raises(DiffActError, match="frames"):
        SegmentationMetrics().update(["a"], ["a", "b"], "v1")
    with pytest.raises(DiffActError):
        SegmentationMetrics().compute()


def test_random_pairs_match_reference() -> None:
    rng = random.Random(0)
    alphabet = ["background", "a", "b", "c"]
    for i in range(200):
        n = rng.randint(1, 30)
        gt = [rng.choice(alphabet) for _ in range(n)]
        pred = [rng.choice(alphabet) if rng.random() < 0.3 else g for g in gt]
        end = "mstcn" if i % 2 else "asformer"
        close(
            score([(pred, gt)], ("background",), end).compute(),
            ref_metrics([(pred, gt)], ("background",), end),
        )


def test_evaluate_dirs(tmp_path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt" / "v1.txt").write_text("a\na\na\nb\nb\nb\nb\nc\nc\nc\n")
    (tmp_path / "pred" / "v1.txt").write_text("### Frame level recognition: ###\na a b b b b b b c c\n")
    got = evaluate_dirs(tmp_path / "gt", tmp_path / "pred", ["v1"]).compute()
    assert got["Acc"] == 80 and got["Edit"] == 100
    (tmp_path / "pred" / "v1.txt").write_text("### Frame level recognition: ###\na a b\n")
    with pytest.raises(DiffActError, match=r"v1\.txt.*3 frames"):
        evaluate_dirs(tmp_path / "gt", tmp_path / "pred", ["v1"])
    with pytest.raises(DiffActError, match="no prediction"):
        evaluate_dirs(tmp_path / "gt", tmp_path / "pred", ["v2"])
