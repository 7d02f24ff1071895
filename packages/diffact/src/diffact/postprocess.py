"""Post-processing (§2.7) and segment extraction (§2.8).

* :func:`segments` — maximal runs of one label (end exclusive), background dropped, either end convention.
* :func:`median_smooth` — median filter of each class row, renormalised over classes.
* :func:`restore_full_rate` — nearest-tick upsampling from the model rate back to every frame.
* :func:`purge` — relabel segments of at most ``min_len`` frames with their neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.ndimage import median_filter

from .errors import DiffActError


class Segment(NamedTuple):
    """One segment: frames ``start..end-1`` labelled ``label``."""

    label: str
    start: int
    end: int


def segments(
    labels: Sequence, bg_classes: Sequence[str] = ("background",), end: str = "mstcn"
) -> list[Segment]:
    """Maximal runs of equal labels, skipping ``bg_classes``.

    ``end="mstcn"`` ends the final run at ``len(labels)``; ``"asformer"`` at ``len(labels) - 1``.
    """
    if end not in ("mstcn", "asformer"):
        raise DiffActError(f"segment_end={end!r}: use 'mstcn' or 'asformer'")
    out: list[Segment] = []
    n = len(labels)
    start = 0
    for i in range(1, n + 1):
        if i == n or labels[i] != labels[start]:
            stop = i if (i < n or end == "mstcn") else n - 1
            if str(labels[start]) not in bg_classes:
                out.append(Segment(str(labels[start]), start, stop))
            start = i
    return out


def median_smooth(probs: np.ndarray, size: int) -> np.ndarray:
    """``(C, T)`` probabilities: ``scipy.ndimage.median_filter`` per class row, then columns sum to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    if size < 1:
        raise DiffActError(f"median window must be >= 1, got {size}")
    smoothed = np.stack([median_filter(row, size=size) for row in probs])
    total = smoothed.sum(0, keepdims=True)
    return np.divide(smoothed, total, out=np.full_like(smoothed, 1.0 / len(probs)), where=total > 0)


def restore_full_rate(values: np.ndarray, num_frames: int, sample_rate: int) -> np.ndarray:
    """Values at ticks ``r//2 + k r`` -> every frame ``0..num_frames-1`` by nearest tick.

    Ties go to the earlier tick; frames before the first / after the last tick copy the edge value.
    ``values`` is ``(K,)`` or ``(..., K)``; the result has ``num_frames`` in the last axis.
    """
    values = np.asarray(values)
    k = values.shape[-1]
    if k < 1:
        raise DiffActError("restore_full_rate needs at least one tick")
    r = int(sample_rate)
    x = np.arange(num_frames) - r // 2
    tick = np.clip(-((r - 2 * x) // (2 * r)), 0, k - 1)  # ceil((2x - r) / 2r): nearest, ties down
    return values[..., tick]


def purge(labels: Sequence, min_len: int = 3, segment_end: str = "mstcn") -> list:
    """Relabel every segment of ``<= min_len`` frames (segments found once, on the input).

    The first takes the next label, the last the previous one, an inner one gives its first
    ``len // 2`` frames to the previous label and the rest to the next. With ``"asformer"`` the last
    segment is measured one frame short and its final frame is never relabelled, as in [code].
    """
    out = list(labels)
    segs = segments([str(x) for x in labels], bg_classes=(), end=segment_end)
    if len(segs) < 2:
        return out
    originals = [labels[s.start] for s in segs]
    for e, seg in enumerate(segs):
        duration = seg.end - seg.start
        if duration > min_len:
            continue
        if e == 0:
            out[seg.start : seg.end] = [originals[1]] * duration
        elif e == len(segs) - 1:
            out[seg.start : seg.end] = [originals[e - 1]] * duration
        else:
            mid = seg.start + duration // 2
            out[seg.start : mid] = [originals[e - 1]] * (mid - seg.start)
            out[mid : seg.end] = [originals[e + 1]] * (seg.end - mid)
    return out
