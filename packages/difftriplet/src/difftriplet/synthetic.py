"""Synthetic CholecT50 / CholecT45-format datasets for tests, demos and the quick benchmark (§5).

Each video has 60–120 frames in segments of 5–20 frames; a segment carries 0–2 triplets from a pool of
12 IDs (including the null triplets 94 and 96). Frames are PNGs where every present instrument draws a
coloured rectangle at its own place; features ``F×T`` are the sum of the present instrument, verb and
target prototypes plus ``N(0, 0.7²)`` noise. Labels of both layouts are identical for the same seed.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import DiffTripletError
from .labels import INSTRUMENTS, TARGETS, VERBS, ivtmetrics_bank

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_VIDEOS",
    "SyntheticDataset",
    "make_cholect45_dataset",
    "make_cholect50_dataset",
    "synthetic_triplets",
]

DEFAULT_VIDEOS = ("VID79", "VID02", "VID51", "VID80", "VID32", "VID05")
"""Real IDs from folds 1 and 2."""
DEFAULT_POOL = (1, 13, 17, 29, 35, 48, 60, 68, 79, 86, 94, 96)
"""12 triplet IDs covering all six instruments, including the null triplets 94 and 96."""
INSTRUMENT_COLOURS = (
    (230, 60, 60),
    (60, 200, 60),
    (60, 90, 230),
    (230, 210, 40),
    (200, 60, 220),
    (40, 210, 220),
)
FEATURE_NOISE = 0.7
FEATURES_NAME = "synthetic"


@dataclass
class SyntheticDataset:
    """Where a synthetic dataset was written and what it holds."""

    root: Path
    variant: str
    videos: list[str]
    frames: dict[str, int]
    feature_dir: Path
    feature_dim: int
    triplet_pool: tuple[int, ...]


def synthetic_triplets(
    videos: Sequence[str], frames: tuple[int, int], triplet_pool: Sequence[int], seed: int
) -> dict[str, np.ndarray]:
    """Per video a ``(T, 100)`` uint8 triplet label matrix; depends only on the arguments."""
    lo, hi = frames
    if not 1 <= lo <= hi:
        raise DiffTripletError(f"frames={frames}: need 1 <= min <= max")
    pool = np.asarray(triplet_pool, dtype=np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() > 99:
        raise DiffTripletError(f"triplet_pool {list(triplet_pool)} must hold IDs in 0..99")
    out = {}
    for name in videos:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        length = int(rng.integers(lo, hi + 1))
        y = np.zeros((length, 100), dtype=np.uint8)
        start = 0
        while start < length:
            stop = min(length, start + int(rng.integers(5, 21)))
            count = int(rng.integers(0, 3))
            for triplet in rng.choice(pool, size=min(count, len(pool)), replace=False):
                y[start:stop, triplet] = 1
            start = stop
        out[name] = y
    return out


def _prototypes(feature_dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 7919])
    return {c: rng.normal(0.0, 1.0, (n, feature_dim)) for c, n in (("i", 6), ("v", 10), ("t", 15))}


def _features(y: np.ndarray, prototypes: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    bank = ivtmetrics_bank()
    feature_dim = prototypes["i"].shape[1]
    feats = rng.normal(0.0, FEATURE_NOISE, (y.shape[0], feature_dim))
    for column, c in ((1, "i"), (2, "v"), (3, "t")):
        present = np.zeros((y.shape[0], prototypes[c].shape[0]))
        for triplet in np.flatnonzero(y.any(axis=0)):
            present[:, bank[triplet, column]] = np.maximum(present[:, bank[triplet, column]], y[:, triplet])
        feats += present @ prototypes[c]
    return feats.T.astype(np.float32)


def _instrument_box(instrument: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = image_size
    row, col = divmod(instrument, 3)
    bw, bh = w // 3, h // 2
    return col * bw + 2, row * bh + 2, (col + 1) * bw - 3, (row + 1) * bh - 3


def _frame(instruments: Sequence[int], image_size: tuple[int, int]) -> Image.Image:
    h, w = image_size
    image = Image.new("RGB", (w, h), (20, 20, 20))
    draw = ImageDraw.Draw(image)
    for instrument in instruments:
        draw.rectangle(_instrument_box(instrument, image_size), fill=INSTRUMENT_COLOURS[instrument])
    return image


def _write_common(
    root: Path,
    variant: str,
    labels: dict[str, np.ndarray],
    image_size: tuple[int, int],
    feature_dim: int,
    seed: int,
    write_frames: bool,
    frames_dir: str,
) -> dict[str, int]:
    bank = ivtmetrics_bank()
    prototypes = _prototypes(feature_dim, seed)
    feature_dir = root / "features" / FEATURES_NAME
    feature_dir.mkdir(parents=True, exist_ok=True)
    header = "# IVT, I, V, T, IV, IT (written from the ivtmetrics bank)\n"
    (root / "label_mapping.txt").write_text(header + "".join(",".join(map(str, r)) + "\n" for r in bank))
    for name, y in labels.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
        np.save(feature_dir / f"{name}.npy", _features(y, prototypes, rng))
        if write_frames:
            video_dir = root / frames_dir / name
            video_dir.mkdir(parents=True, exist_ok=True)
            for frame, row in enumerate(y):
                instruments = sorted({int(bank[c, 1]) for c in np.flatnonzero(row)})
                _frame(instruments, image_size).save(video_dir / f"{frame:06d}.png")
    return {name: len(y) for name, y in labels.items()}


def make_cholect50_dataset(
    root: str | os.PathLike[str],
    videos: Sequence[str] = DEFAULT_VIDEOS,
    frames: tuple[int, int] = (60, 120),
    triplet_pool: Sequence[int] = DEFAULT_POOL,
    image_size: tuple[int, int] = (48, 84),
    feature_dim: int = 32,
    seed: int = 0,
    write_frames: bool = True,
) -> SyntheticDataset:
    """Write ``videos/``, ``labels/VIDxx.json`` (15-item instances), ``label_mapping.txt`` and
    ``features/synthetic/VIDxx.npy`` under ``root``. ``image_size`` is ``(height, width)``."""
    root = Path(root)
    labels = synthetic_triplets(videos, frames, triplet_pool, seed)
    bank = ivtmetrics_bank()
    (root / "labels").mkdir(parents=True, exist_ok=True)
    categories = {
        "instrument": dict(enumerate(INSTRUMENTS)),
        "verb": dict(enumerate(VERBS)),
        "target": dict(enumerate(TARGETS)),
    }
    for name, y in labels.items():
        annotations = {}
        for frame, row in enumerate(y):
            instances = []
            for c in np.flatnonzero(row):
                _, i, v, t, _, _ = (int(x) for x in bank[c])
                x0, y0, x1, y1 = _instrument_box(i, image_size)
                box = [
                    x0 / image_size[1],
                    y0 / image_size[0],
                    (x1 - x0) / image_size[1],
                    (y1 - y0) / image_size[0],
                ]
                instances.append([int(c), i, 1.0, *box, v, t, 1.0, -1.0, -1.0, -1.0, -1.0, 0])
            annotations[str(frame)] = instances
        record = {
            "video": int(name[3:]),
            "fps": 1,
            "num_frames": len(y),
            "categories": {k: {str(i): n for i, n in v.items()} for k, v in categories.items()},
            "annotations": annotations,
            "info": {"description": "synthetic CholecT50-format video (difftriplet)"},
            "licenses": [],
        }
        (root / "labels" / f"{name}.json").write_text(json.dumps(record))
    counts = _write_common(root, "cholect50", labels, image_size, feature_dim, seed, write_frames, "videos")
    return SyntheticDataset(
        root,
        "cholect50",
        list(labels),
        counts,
        root / "features" / FEATURES_NAME,
        feature_dim,
        tuple(triplet_pool),
    )


def make_cholect45_dataset(
    root: str | os.PathLike[str],
    videos: Sequence[str] = DEFAULT_VIDEOS,
    frames: tuple[int, int] = (60, 120),
    triplet_pool: Sequence[int] = DEFAULT_POOL,
    image_size: tuple[int, int] = (48, 84),
    feature_dim: int = 32,
    seed: int = 0,
    write_frames: bool = True,
) -> SyntheticDataset:
    """The same videos in the CholecT45 layout: ``data/VIDxx/*.png`` and ``triplet/VIDxx.txt``."""
    root = Path(root)
    labels = synthetic_triplets(videos, frames, triplet_pool, seed)
    (root / "triplet").mkdir(parents=True, exist_ok=True)
    for name, y in labels.items():
        lines = [f"{frame}," + ",".join(map(str, row)) for frame, row in enumerate(y)]
        (root / "triplet" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    counts = _write_common(root, "cholect45", labels, image_size, feature_dim, seed, write_frames, "data")
    return SyntheticDataset(
        root,
        "cholect45",
        list(labels),
        counts,
        root / "features" / FEATURES_NAME,
        feature_dim,
        tuple(triplet_pool),
    )
