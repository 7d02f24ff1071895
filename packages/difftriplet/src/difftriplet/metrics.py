"""Video-wise mAP through the real ``ivtmetrics`` (§2.7), with the canonical NaN policy and a fast path.

Every AP is ivtmetrics' ``compute_video_AP``: per-class AP within each video (NaN when the class is
absent from that video), nanmean over videos, then nanmean over classes.

* ``protocol="cv"`` (rendezvous ``run.py``): AP_IVT / AP_IV / AP_IT from a ``Recognition(100)`` fed with
  the triplet channels; AP_I / AP_V / AP_T from ``Recognition(6/10/15)`` fed with the component channels.
* ``protocol="challenge"``: every component decomposed from the triplet scores; AP_IVT ignores the null
  triplets 94–99.
* ``nan_policy="canonical"`` runs ivtmetrics inside :func:`canonical_ap`, which makes classes absent
  from a video NaN again under scikit-learn ≥ 1.6 (it clips ivtmetrics' ``-0.0`` marker to ``+0.0``);
  ``"installed"`` takes whatever the installed versions return.
* ``fast=True`` replaces ivtmetrics' pure-Python decomposition by :meth:`TripletSpace.decompose` and
  scikit-learn's per-class AP by :func:`column_average_precision` (same rule; tested equal) for
  in-training validation.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DiffTripletError
from .labels import TripletSpace

__all__ = [
    "TOP_K",
    "TripletEvaluator",
    "TripletReport",
    "canonical_ap",
    "column_average_precision",
    "reference_video_ap",
    "step_average_precision",
    "versions",
]

TOP_K = (5, 10, 20)
PROTOCOLS = ("cv", "challenge")
NAN_POLICIES = ("canonical", "installed")
NULL_TRIPLETS = 6
_PATCH_LOCK = threading.RLock()


def versions() -> dict[str, str]:
    """Versions that change the figures: ivtmetrics, scikit-learn, numpy."""
    import ivtmetrics
    import sklearn

    return {"ivtmetrics": ivtmetrics.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__}


def _nan_for_absent(average_precision_score: Any) -> Any:
    def canonical(y_true: Any, y_score: Any, *args: Any, **kwargs: Any) -> Any:
        result = average_precision_score(y_true, y_score, *args, **kwargs)
        truth = np.asarray(y_true)
        if truth.ndim == 2 and np.ndim(result) == 1:
            result = np.asarray(result, dtype=float).copy()
            result[~(truth > 0).any(axis=0)] = np.nan
        elif truth.ndim == 1 and not (truth > 0).any():
            result = np.nan
        return result

    return canonical


@contextlib.contextmanager
def canonical_ap() -> Iterator[None]:
    """Make ivtmetrics report NaN for classes with no positive target, as with scikit-learn < 1.6.

    Temporarily replaces the ``average_precision_score`` name ``ivtmetrics.recognition`` resolves with
    a wrapper that calls scikit-learn and sets NaN where a column has no positive. Holds a lock and
    restores the original on exit.
    """
    import ivtmetrics.recognition as recognition

    with _PATCH_LOCK:
        original = recognition.average_precision_score
        recognition.average_precision_score = _nan_for_absent(original)
        try:
            yield
        finally:
            recognition.average_precision_score = original


def _policy(nan_policy: str) -> contextlib.AbstractContextManager[None]:
    return canonical_ap() if nan_policy == "canonical" else contextlib.nullcontext()


def step_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Uninterpolated AP of one class, ties grouped: ``Σ_k (R_k - R_{k-1}) P_k`` over distinct thresholds.

    NaN when ``labels`` has no positive. Pure NumPy (the reference for tests).
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tp = np.cumsum(sorted_labels)[last_of_tie]
    seen = last_of_tie + 1.0
    recall = tp / positives
    precision = tp / seen
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def reference_video_ap(
    targets: Sequence[np.ndarray], scores: Sequence[np.ndarray]
) -> tuple[np.ndarray, float]:
    """Video-wise AP ``(per-class (C,), mean)`` from ``(T_v, C)`` arrays per video, pure NumPy.

    Per video and class :func:`step_average_precision`, nanmean over videos, nanmean over classes.
    """
    table = np.array(
        [
            [step_average_precision(y[:, c], p[:, c]) for c in range(y.shape[1])]
            for y, p in zip(targets, scores, strict=True)
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanmean(table, axis=0)
        return per_class, float(np.nanmean(per_class))


@dataclass
class TripletReport:
    """Video-wise mAPs (fractions in [0, 1]), per-class APs, top-k accuracy and provenance."""

    AP_I: float
    AP_V: float
    AP_T: float
    AP_IV: float
    AP_IT: float
    AP_IVT: float
    per_class: dict[str, np.ndarray]
    topk: dict[int, float]
    AP_I_from_triplets: float
    AP_V_from_triplets: float
    AP_T_from_triplets: float
    protocol: str
    nan_policy: str
    fast: bool
    num_videos: int
    versions: dict[str, str] = field(default_factory=versions)

    def summary(self, percent: bool = False) -> dict[str, float]:
        """The headline figures (``x100`` when ``percent``)."""
        scale = 100.0 if percent else 1.0
        out = {k: scale * getattr(self, k) for k in ("AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT")}
        out |= {f"Top{k}_IVT": scale * v for k, v in self.topk.items()}
        out |= {f"AP_{c}_from_triplets": scale * getattr(self, f"AP_{c}_from_triplets") for c in "IVT"}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "per_class": {k: v.tolist() for k, v in self.per_class.items()},
            "protocol": self.protocol,
            "nan_policy": self.nan_policy,
            "fast": self.fast,
            "num_videos": self.num_videos,
            "versions": self.versions,
        }


def _mean_ignore_empty(values: np.ndarray, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


class TripletEvaluator:
    """Accumulate videos with :meth:`add_video`, then :meth:`compute` a :class:`TripletReport`.

    Args:
        protocol: ``"cv"`` (default) or ``"challenge"`` (§2.7).
        nan_policy: ``"canonical"`` (default) or ``"installed"``.
        fast: vectorised decomposition for in-training validation (final reports use ivtmetrics).
        space: the label space (default ivtmetrics' bank, ``[ivt, i, v, t]`` layout).
    """

    def __init__(
        self,
        protocol: str = "cv",
        nan_policy: str = "canonical",
        fast: bool = False,
        space: TripletSpace | None = None,
        top_k: Sequence[int] = TOP_K,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise DiffTripletError(f"protocol={protocol!r}; use one of {PROTOCOLS}")
        if nan_policy not in NAN_POLICIES:
            raise DiffTripletError(f"nan_policy={nan_policy!r}; use one of {NAN_POLICIES}")
        self.protocol, self.nan_policy, self.fast = protocol, nan_policy, fast
        self.space = space or TripletSpace.from_ivtmetrics()
        if self.space.target_components[:4] != ("ivt", "i", "v", "t"):
            raise DiffTripletError("TripletEvaluator needs the [ivt, i, v, t, ...] joint layout")
        self.top_k = tuple(int(k) for k in top_k)
        self.videos: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self.videos.clear()

    def add_video(self, vid: str, probs: np.ndarray, targets: np.ndarray) -> None:
        """Add one video: ``probs`` ``(T, 131)`` in [0, 1] and binary ``targets`` ``(T, 131)`` or ``(T, 100)``.

        Triplet-only targets get their components from the bank. Frames are rows (transpose a ``(131, T)``
        model output).
        """
        probs = np.asarray(probs, dtype=np.float64)
        targets = np.asarray(targets)
        channels = self.space.num_channels
        if vid in self.videos:
            raise DiffTripletError(f"video {vid!r} was already added to this evaluator")
        if probs.ndim != 2 or probs.shape[1] != channels:
            raise DiffTripletError(
                f"{vid}: probs must be (frames, {channels}), got {probs.shape} (transpose a (C, T) output)"
            )
        if targets.ndim == 2 and targets.shape[1] == 100:
            targets = self.space.components(targets)
        if targets.shape != probs.shape:
            raise DiffTripletError(f"{vid}: targets {targets.shape} do not match probs {probs.shape}")
        if not np.isfinite(probs).all():
            raise DiffTripletError(f"{vid}: probs contain NaN or inf")
        if probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
            raise DiffTripletError(f"{vid}: probs must lie in [0, 1], got [{probs.min()}, {probs.max()}]")
        if not np.isin(targets, (0, 1)).all():
            raise DiffTripletError(f"{vid}: targets must be binary (0/1)")
        if probs.shape[0] == 0:
            raise DiffTripletError(f"{vid}: the video has no frames")
        self.videos[vid] = (probs, targets.astype(np.int64))

    # ------------------------------------------------------------------------------------- compute

    def compute(self) -> TripletReport:
        """The report over every added video (calling it twice gives the same result)."""
        if not self.videos:
            raise DiffTripletError("TripletEvaluator.compute: no videos were added")
        with _policy(self.nan_policy):
            results = self._compute_fast() if self.fast else self._compute_ivtmetrics()
        aps, per_class, topk = results
        cv = self.protocol == "cv"
        return TripletReport(
            AP_I=aps["i" if cv else "i_from_ivt"],
            AP_V=aps["v" if cv else "v_from_ivt"],
            AP_T=aps["t" if cv else "t_from_ivt"],
            AP_IV=aps["iv"],
            AP_IT=aps["it"],
            AP_IVT=aps["ivt"],
            per_class=per_class,
            topk=topk,
            AP_I_from_triplets=aps["i_from_ivt"],
            AP_V_from_triplets=aps["v_from_ivt"],
            AP_T_from_triplets=aps["t_from_ivt"],
            protocol=self.protocol,
            nan_policy=self.nan_policy,
            fast=self.fast,
            num_videos=len(self.videos),
        )

    def _store(self, aps: dict, per_class: dict, key: str, result: dict) -> None:
        aps[key] = float(result["mAP"])
        per_class[key] = np.asarray(result["AP"], dtype=float)

    def _compute_ivtmetrics(self) -> tuple[dict, dict, dict]:
        from ivtmetrics import Recognition

        slices = self.space.slices
        ignore_null = self.protocol == "challenge"
        triplets = Recognition(num_class=100)
        parts = {c: Recognition(num_class=self.space.num_classes(c)) for c in ("i", "v", "t")}
        for probs, targets in self.videos.values():
            triplets.update(targets[:, slices["ivt"]], probs[:, slices["ivt"]])
            triplets.video_end()
            for c, recognition in parts.items():
                recognition.update(targets[:, slices[c]], probs[:, slices[c]])
                recognition.video_end()
        aps: dict[str, float] = {}
        per_class: dict[str, np.ndarray] = {}
        self._store(aps, per_class, "ivt", triplets.compute_video_AP("ivt", ignore_null=ignore_null))
        for c in ("iv", "it"):
            self._store(aps, per_class, c, triplets.compute_video_AP(c))
        for c, recognition in parts.items():
            self._store(aps, per_class, c, recognition.compute_video_AP())
            self._store(aps, per_class, f"{c}_from_ivt", triplets.compute_video_AP(c))
        topk = {k: float(triplets.topK(k, "ivt")) for k in self.top_k}
        return aps, per_class, topk

    def _compute_fast(self) -> tuple[dict, dict, dict]:
        absent = np.nan if self.nan_policy == "canonical" else _installed_absent_ap()
        slices = self.space.slices
        columns = {
            "ivt": lambda a: a[:, slices["ivt"]],
            **{c: (lambda a, c=c: self.space.decompose(a[:, slices["ivt"]], c)) for c in ("iv", "it")},
            **{c: (lambda a, c=c: a[:, slices[c]]) for c in ("i", "v", "t")},
            **{f"{c}_from_ivt": (lambda a, c=c: self.space.decompose(a[:, slices["ivt"]], c)) for c in "ivt"},
        }
        aps: dict[str, float] = {}
        per_class: dict[str, np.ndarray] = {}
        for key, take in columns.items():
            table = [column_average_precision(take(t), take(p), absent) for p, t in self.videos.values()]
            videowise = _mean_ignore_empty(np.stack(table), axis=0)
            if key == "ivt" and self.protocol == "challenge":
                videowise = videowise[:-NULL_TRIPLETS]
            per_class[key] = videowise
            aps[key] = float(_mean_ignore_empty(videowise))
        all_targets = np.concatenate([t[:, slices["ivt"]] for _, t in self.videos.values()])
        all_probs = np.concatenate([p[:, slices["ivt"]] for p, _ in self.videos.values()])
        topk = {k: _top_k_accuracy(all_targets, all_probs, k) for k in self.top_k}
        return aps, per_class, topk


def column_average_precision(targets: np.ndarray, scores: np.ndarray, absent: float = np.nan) -> np.ndarray:
    """Vectorised step AP of every column of ``(T, C)`` arrays (ties grouped), ``absent`` without positives.

    A positive at sorted position ``i`` contributes the precision at the end ``e(i)`` of its tie block,
    ``tp[e] / (e + 1)``; AP is their mean over the positives (the rule of :func:`step_average_precision`).
    """
    targets = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    frames = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_labels = np.take_along_axis(targets, order, axis=0)
    tp = np.cumsum(sorted_labels, axis=0)
    is_end = np.ones_like(sorted_scores, dtype=bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    position = np.arange(frames)[:, None]
    end = np.where(is_end, position, frames)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(tp, end, axis=0) / (end + 1.0)
    positives = tp[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (sorted_labels * precision_at_end).sum(axis=0) / positives
    return np.where(positives > 0, ap, absent)


def _installed_absent_ap() -> float:
    """What ivtmetrics reports for a class absent from a video with the installed scikit-learn."""
    from sklearn.metrics import average_precision_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = average_precision_score(
            np.array([[0, 1], [0, 0]]), np.array([[0.2, 0.9], [0.1, 0.3]]), average=None
        )
    return float(_resolve_nan(value)[0])


def _resolve_nan(classwise: Any) -> np.ndarray:
    """ivtmetrics' ``resolve_nan``: only the ``-0.0`` marker (and NaN) become NaN."""
    values = np.asarray(classwise, dtype=float).reshape(-1)
    marker = (values == 0.0) & np.signbit(values)
    return np.where(marker, np.nan, values)


def _top_k_accuracy(targets: np.ndarray, probs: np.ndarray, k: int) -> float:
    """ivtmetrics' ``topK``: hits of the k highest scores among the positives, over all positives."""
    top = np.argsort(-probs, axis=1)[:, :k]
    hits = np.take_along_axis(targets, top, axis=1).sum()
    total = int(targets.sum()) or 1
    return float(hits) / float(total)
