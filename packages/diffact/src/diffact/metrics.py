"""The MS-TCN segmentation metrics (§2.8): Acc, Edit, F1@{10,25,50}, with both last-segment conventions.

Labels are compared as strings. ``segment_end="mstcn"`` ends the last segment at ``len(seq)``;
``"asformer"`` ends it at ``len(seq) - 1`` (DiffAct's and ASFormer's ``eval.py``), which only moves F1.
Acc and the F1 counts are pooled over videos; Edit is averaged over videos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import SEGMENT_ENDS
from .errors import DiffActError
from .postprocess import Segment, segments

DEFAULT_OVERLAPS = (0.1, 0.25, 0.5)
PREDICTION_HEADER = "### Frame level recognition: ###"


def _levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def edit_score(
    pred: Sequence[str],
    gt: Sequence[str],
    bg_classes: Sequence[str] = ("background",),
    segment_end: str = "mstcn",
) -> float:
    """``(1 - Lev(P, Y) / max(|P|, |Y|)) * 100`` over segment label lists; 100 when both are empty."""
    p = [s.label for s in segments(pred, bg_classes, segment_end)]
    y = [s.label for s in segments(gt, bg_classes, segment_end)]
    if not p and not y:
        return 100.0
    return (1.0 - _levenshtein(p, y) / max(len(p), len(y))) * 100.0


def _f_counts(p_segs: list[Segment], y_segs: list[Segment], overlap: float) -> tuple[int, int, int]:
    if not y_segs:
        return 0, len(p_segs), 0
    y_start = np.array([s.start for s in y_segs], dtype=float)
    y_end = np.array([s.end for s in y_segs], dtype=float)
    y_label = [s.label for s in y_segs]
    hits = np.zeros(len(y_segs), dtype=bool)
    tp = fp = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        for seg in p_segs:
            inter = np.minimum(seg.end, y_end) - np.maximum(seg.start, y_start)
            union = np.maximum(seg.end, y_end) - np.minimum(seg.start, y_start)
            iou = (inter / union) * np.array([seg.label == lab for lab in y_label])
            idx = int(np.argmax(iou))  # first maximum; NaN counts as maximal
            if iou[idx] >= overlap and not hits[idx]:
                tp += 1
                hits[idx] = True
            else:
                fp += 1
    return tp, fp, int(len(y_segs) - hits.sum())


def f_score_counts(
    pred: Sequence[str],
    gt: Sequence[str],
    overlap: float,
    bg_classes: Sequence[str] = ("background",),
    segment_end: str = "mstcn",
) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of the MS-TCN segmental F1 at IoU threshold ``overlap`` for one video."""
    return _f_counts(segments(pred, bg_classes, segment_end), segments(gt, bg_classes, segment_end), overlap)


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """``2PR / (P + R) * 100``, 0 when undefined."""
    tp, fp, fn = int(tp), int(fp), int(fn)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else float("nan")
    return 0.0 if np.isnan(f1) else f1 * 100.0


@dataclass
class SegmentationMetrics:
    """Accumulates videos with :meth:`update`; :meth:`compute` gives the pooled MS-TCN numbers."""

    bg_classes: tuple[str, ...] = ("background",)
    overlaps: tuple[float, ...] = DEFAULT_OVERLAPS
    segment_end: str = "mstcn"
    _correct: int = 0
    _total: int = 0
    _edits: list[float] = field(default_factory=list)
    _counts: np.ndarray | None = None
    _videos: list[dict[str, float | str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.segment_end not in SEGMENT_ENDS:
            raise DiffActError(f"segment_end={self.segment_end!r}: use one of {SEGMENT_ENDS}")
        self.bg_classes = tuple(self.bg_classes)
        self._counts = np.zeros((len(self.overlaps), 3), dtype=np.int64)

    def update(self, pred: Sequence, gt: Sequence, video: str = "") -> dict[str, float | str]:
        """Add one video (frame labels, compared as strings); returns its own metrics."""
        pred = [str(x) for x in pred]
        gt = [str(x) for x in gt]
        if len(pred) != len(gt):
            raise DiffActError(
                f"video {video!r}: prediction has {len(pred)} frames but ground truth {len(gt)}"
            )
        correct = sum(p == y for p, y in zip(pred, gt, strict=True))
        edit = edit_score(pred, gt, self.bg_classes, self.segment_end)
        p_segs = segments(pred, self.bg_classes, self.segment_end)
        y_segs = segments(gt, self.bg_classes, self.segment_end)
        counts = np.array([_f_counts(p_segs, y_segs, o) for o in self.overlaps], dtype=np.int64)
        self._correct += correct
        self._total += len(gt)
        self._edits.append(edit)
        self._counts += counts
        own: dict[str, float | str] = {"video": video, "Acc": 100.0 * correct / max(len(gt), 1), "Edit": edit}
        for o, c in zip(self.overlaps, counts, strict=True):
            own[_f1_name(o)] = f1_from_counts(*c)
        self._videos.append(own)
        return own

    def compute(self) -> dict[str, float]:
        """``{"Acc", "Edit", "F1@10", "F1@25", "F1@50", "AVG"}`` over every video added so far."""
        if not self._total:
            raise DiffActError("no videos were added to SegmentationMetrics")
        out = {"Acc": 100.0 * self._correct / self._total, "Edit": float(np.mean(self._edits))}
        for o, c in zip(self.overlaps, self._counts, strict=True):
            out[_f1_name(o)] = f1_from_counts(*c)
        out["AVG"] = float(np.mean(list(out.values())))
        return out

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """Pooled ``(TP, FP, FN)`` per overlap."""
        return {
            _f1_name(o): tuple(int(v) for v in c) for o, c in zip(self.overlaps, self._counts, strict=True)
        }

    def per_video(self) -> list[dict[str, float | str]]:
        return list(self._videos)


def _f1_name(overlap: float) -> str:
    return f"F1@{round(overlap * 100):d}"


def read_prediction(path: str | os.PathLike[str]) -> list[str]:
    """Frame labels from an MS-TCN prediction file (the header line, then names separated by spaces)."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"prediction file {path} does not exist")
    lines = path.read_text().splitlines()
    body = lines[1:] if lines and lines[0].strip() == PREDICTION_HEADER else lines
    return " ".join(body).split()


def evaluate_dirs(
    gt_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    videos: Sequence[str],
    bg_classes: Sequence[str] = ("background",),
    segment_end: str = "mstcn",
) -> SegmentationMetrics:
    """Score ``pred_dir/<video>.txt`` (MS-TCN prediction files) against ``gt_dir/<video>.txt``."""
    from .data import read_labels

    metrics = SegmentationMetrics(tuple(bg_classes), segment_end=segment_end)
    missing = [v for v in videos if not (Path(pred_dir) / f"{v}.txt").is_file()]
    if missing:
        raise DiffActError(f"{pred_dir}: no prediction for {len(missing)} videos: {missing}")
    for video in videos:
        gt = read_labels(Path(gt_dir) / f"{video}.txt")
        pred = read_prediction(Path(pred_dir) / f"{video}.txt")
        if len(pred) != len(gt):
            raise DiffActError(
                f"{Path(pred_dir) / f'{video}.txt'}: {len(pred)} frames but ground truth "
                f"{Path(gt_dir) / f'{video}.txt'} has {len(gt)}"
            )
        metrics.update(pred, gt, video)
    return metrics
