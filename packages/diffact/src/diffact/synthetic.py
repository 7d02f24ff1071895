"""A small synthetic dataset in the MS-TCN layout, for tests, demos and the quick benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from difflab_core.data import class_features, segment_labels

from .errors import DiffActError


def make_mstcn_dataset(
    root: str | os.PathLike[str],
    num_videos: int = 8,
    num_classes: int = 4,
    feature_dim: int = 16,
    seed: int = 0,
    with_background: bool = True,
    *,
    num_test: int | None = None,
    frames: tuple[int, int] = (60, 120),
    segment_len: tuple[int, int] = (8, 25),
    noise_std: float = 0.8,
    dataset: str = "synthetic",
) -> Path:
    """Write ``<root>/<dataset>/{features,groundTruth,mapping.txt,splits}``; returns ``<root>/<dataset>``.

    Classes are ``action0..`` (plus ``background`` as id 0 when ``with_background``); features are
    F×T: a per-class N(0, 1) prototype plus N(0, ``noise_std``²) noise per frame. The last
    ``num_test`` videos (default a quarter, at least 1) form ``test.split1``, the rest ``train.split1``.
    """
    num_test = max(1, num_videos // 4) if num_test is None else num_test
    if num_videos < 2 or not 1 <= num_test < num_videos:
        raise DiffActError(
            f"need num_videos >= 2 and 1 <= num_test < num_videos, got {num_videos}, {num_test}"
        )
    rng = np.random.default_rng(seed)
    names = (["background"] if with_background else []) + [f"action{i}" for i in range(num_classes)]
    prototypes = rng.normal(0.0, 1.0, size=(len(names), feature_dim))
    out = Path(root) / dataset
    for sub in ("features", "groundTruth", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "mapping.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    videos = [f"video{i:03d}" for i in range(num_videos)]
    for video in videos:
        length = int(rng.integers(frames[0], frames[1] + 1))
        ids = segment_labels(length, len(names), rng, min_len=segment_len[0], max_len=segment_len[1])
        np.save(out / "features" / f"{video}.npy", class_features(ids, prototypes, rng, noise_std=noise_std))
        (out / "groundTruth" / f"{video}.txt").write_text("".join(f"{names[i]}\n" for i in ids))
    train, test = videos[:-num_test], videos[-num_test:]
    (out / "splits" / "train.split1.bundle").write_text("".join(f"{v}.txt\n" for v in train))
    (out / "splits" / "test.split1.bundle").write_text("".join(f"{v}.txt\n" for v in test))
    return out
