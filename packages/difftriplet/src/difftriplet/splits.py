"""Official CholecT50 / CholecT45 splits (§4.2, CAMMA-public/cholect50 ``dataloader_pth.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DiffTripletError

__all__ = [
    "CV_FOLDS",
    "Split",
    "cholect45_crossval",
    "cholect50_challenge",
    "cholect50_crossval",
    "cholect50_rdv",
    "video_name",
]

CV_FOLDS: dict[int, tuple[int, ...]] = {
    1: (79, 2, 51, 6, 25, 14, 66, 23, 50, 111),
    2: (80, 32, 5, 15, 40, 47, 26, 48, 70, 96),
    3: (31, 57, 36, 18, 52, 68, 10, 8, 73, 103),
    4: (42, 29, 60, 27, 65, 75, 22, 49, 12, 110),
    5: (78, 43, 62, 35, 74, 1, 56, 4, 13, 92),
}
"""CholecT50 cross-validation folds; CholecT45 omits each fold's last video."""
VALIDATION_VIDEOS = 5


def video_name(number: int) -> str:
    """``VID{n:02d}``: 1 -> ``VID01``, 111 -> ``VID111``."""
    return f"VID{int(number):02d}"


@dataclass(frozen=True)
class Split:
    """Video names (``"VIDxx"``) of the training, validation and test sets."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def subset(self, name: str) -> tuple[str, ...]:
        if name not in ("train", "val", "test"):
            raise DiffTripletError(f"subset must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, data: dict[str, list[str]]) -> Split:
        return cls(tuple(data["train"]), tuple(data.get("val", ())), tuple(data["test"]))


def _crossval(k: int, folds: dict[int, tuple[int, ...]]) -> Split:
    if k not in folds:
        raise DiffTripletError(f"fold must be 1..5, got {k!r}")
    rest = [v for fold in sorted(folds) if fold != k for v in folds[fold]]
    names = [video_name(v) for v in rest]
    return Split(
        tuple(names[:-VALIDATION_VIDEOS]),
        tuple(names[-VALIDATION_VIDEOS:]),
        tuple(video_name(v) for v in folds[k]),
    )


def cholect50_crossval(k: int) -> Split:
    """Fold ``k``: test = fold k; validation = the last 5 videos of the other folds in ascending order."""
    return _crossval(k, CV_FOLDS)


def cholect45_crossval(k: int) -> Split:
    """As :func:`cholect50_crossval` without each fold's last video."""
    return _crossval(k, {f: videos[:-1] for f, videos in CV_FOLDS.items()})


def _all_cholect50() -> list[int]:
    return sorted(v for videos in CV_FOLDS.values() for v in videos)


def _fixed(val: tuple[int, ...], test: tuple[int, ...]) -> Split:
    train = [v for v in _all_cholect50() if v not in val and v not in test]
    return Split(
        tuple(video_name(v) for v in train),
        tuple(video_name(v) for v in val),
        tuple(video_name(v) for v in test),
    )


def cholect50_challenge() -> Split:
    """The CholecTriplet challenge split: 40 train, 5 val, 5 test videos."""
    return _fixed((5, 18, 36, 65, 74), (92, 96, 103, 110, 111))


def cholect50_rdv() -> Split:
    """The Rendezvous paper's split: 35 train, 5 val, 10 test videos."""
    return _fixed((8, 12, 29, 50, 78), (6, 51, 10, 73, 14, 74, 32, 80, 42, 111))
