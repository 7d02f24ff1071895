"""The MS-TCN data layout (§4.1): readers with clear errors, boundary targets, class weights, a dataset.

::

    <root>/<dataset>/features/<video>.npy     float F×T (or T×S×F crops)
    <root>/<dataset>/groundTruth/<video>.txt  T lines, one class name each
    <root>/<dataset>/mapping.txt              "<id> <name>", ids 0..C-1 in order
    <root>/<dataset>/splits/{train,test}.split<k>.bundle
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch.utils.data import Dataset

from difflab_core.data import EpochSampler, epoch_seed

from .config import DiffActConfig
from .errors import DiffActError

IGNORE_INDEX = -100
"""Label id of frames whose class is unknown under ``unknown_label="ignore"``."""


def read_mapping(path: str | os.PathLike[str]) -> list[str]:
    """Class names in id order from ``mapping.txt`` (``"<id> <name>"`` lines, ids ``0..C-1``)."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"mapping file {path} does not exist")
    names: list[str] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise DiffActError(f"{path}, line {lineno}: expected '<id> <name>', got {line!r}")
        idx, name = int(parts[0]), parts[1]
        if name in names:
            raise DiffActError(f"{path}, line {lineno}: duplicate class name {name!r}")
        if idx != len(names):
            raise DiffActError(
                f"{path}, line {lineno}: id {idx} but expected {len(names)}; ids must be 0..C-1, in order, no duplicates"
            )
        names.append(name)
    if len(names) < 2:
        raise DiffActError(f"{path}: needs at least 2 classes, found {len(names)}")
    return names


def read_bundle(path: str | os.PathLike[str]) -> list[str]:
    """Video names from a split bundle (``"<video>.txt"`` per line; only the final ``.txt`` is removed)."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"split bundle {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    names = [n[: -len(".txt")] if n.endswith(".txt") else n for n in names]
    if not names:
        raise DiffActError(f"split bundle {path} is empty")
    return names


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Frame labels from a ground-truth file: one class name per line; blank lines only at the end."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"label file {path} does not exist")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise DiffActError(f"{path}: blank line(s) {blank[:5]} inside the label file")
    if not lines:
        raise DiffActError(f"label file {path} is empty")
    return [line.strip() for line in lines]


def labels_to_ids(
    labels: Sequence[str], names: Sequence[str], path: Path | str, unknown: str = "error"
) -> np.ndarray:
    """Class ids ``(T,)`` int64; unknown names raise (file, line, label, known names) or map to -100."""
    index = {n: i for i, n in enumerate(names)}
    ids = np.array([index.get(lab, IGNORE_INDEX) for lab in labels], dtype=np.int64)
    bad = np.flatnonzero(ids == IGNORE_INDEX)
    if bad.size and unknown != "ignore":
        line = int(bad[0]) + 1
        raise DiffActError(
            f"{path}, line {line}: label {labels[bad[0]]!r} is not in mapping.txt (known: {list(names)}); "
            "fix the label or pass unknown_label='ignore'"
        )
    return ids


def load_features(
    path: str | os.PathLike[str], input_dim: int, *, sample_rate: int = 1, mmap: bool = False
) -> np.ndarray:
    """Load and check one feature file: ``(F, T)`` or ``(T, S, F)`` crops, finite, ``T >= max(2, r)``."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"feature file {path} does not exist")
    try:
        feats = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DiffActError(f"feature file {path} is not a readable .npy array: {err}") from err
    if feats.ndim == 2:
        if feats.shape[0] != input_dim:
            hint = " (transpose? features must be F×T)" if feats.shape[1] == input_dim else ""
            raise DiffActError(f"{path}: shape {feats.shape} but input_dim={input_dim}{hint}")
        num_frames = feats.shape[1]
    elif feats.ndim == 3:
        if feats.shape[2] != input_dim:
            raise DiffActError(f"{path}: crops of shape {feats.shape} (T, S, F) but input_dim={input_dim}")
        num_frames = feats.shape[0]
    else:
        raise DiffActError(f"{path}: features must be 2-D (F×T) or 3-D (T×S×F), got shape {feats.shape}")
    if num_frames < max(2, sample_rate):
        raise DiffActError(f"{path}: {num_frames} frames; need at least max(2, sample_rate={sample_rate})")
    if not np.isfinite(feats).all():
        raise DiffActError(f"{path}: features contain NaN or Inf")
    return feats


def feature_frames(feats: np.ndarray) -> int:
    """Number of frames ``T`` of a ``(F, T)`` or ``(T, S, F)`` array."""
    return feats.shape[1] if feats.ndim == 2 else feats.shape[0]


def feature_crop(feats: np.ndarray, crop: int) -> np.ndarray:
    """A float32 copy ``(F, T)`` of crop ``crop`` (2-D arrays have the single crop 0), read into memory."""
    arr = feats if feats.ndim == 2 else feats[:, crop, :].T
    return np.array(arr, dtype=np.float32)


def num_crops(feats: np.ndarray) -> int:
    return 1 if feats.ndim == 2 else feats.shape[1]


def boundary_target(ids: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothed action-boundary target ``(T,)`` in [0, 1] at full rate (§2.6); all zero for one segment.

    Frames ``s-1`` and ``s`` of each segment start ``s > 0`` are 1, filtered with ``gaussian_filter1d``,
    clipped at the peak a centred 2-frame pulse reaches, and divided by the maximum.
    """
    ids = np.asarray(ids)
    out = np.zeros(len(ids), dtype=np.float64)
    starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    if starts.size == 0:
        return out.astype(np.float32)
    out[starts] = 1.0
    out[starts - 1] = 1.0
    if sigma:
        pulse = np.zeros(len(ids))
        pulse[len(ids) // 2] = 1.0
        pulse[len(ids) // 2 - 1] = 1.0
        peak = gaussian_filter1d(pulse, sigma).max()
        out = np.minimum(gaussian_filter1d(out, sigma), peak)
        out /= out.max()
    return out.astype(np.float32)


def class_weights(label_ids: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``w_c = N / ((n_c + 10) C)`` over all full-rate training frames (ignored frames excluded)."""
    ids = np.concatenate([np.asarray(x) for x in label_ids])
    ids = ids[ids >= 0]
    counts = np.bincount(ids, minlength=num_classes).astype(np.float64)
    return (len(ids) / ((counts + 10.0) * num_classes)).astype(np.float32)


def validation_split(names: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)``: ``max(1, round(fraction n))`` videos held out, chosen by name and seed only."""
    if len(names) < 2 or fraction <= 0:
        return list(names), []
    ranked = sorted(names, key=lambda n: (zlib.crc32(f"{seed}:{n}".encode()), n))
    held = set(ranked[: max(1, round(fraction * len(names)))])
    return [n for n in names if n not in held], [n for n in names if n in held]


@dataclass
class Video:
    """One video: features ``(F, T)`` or ``(T, S, F)``, class ids and the full-rate boundary target."""

    name: str
    features: np.ndarray
    ids: np.ndarray
    labels: list[str]
    boundary: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.ids)


def dataset_dir(root: str | os.PathLike[str], dataset: str) -> Path:
    path = Path(root) / dataset
    if not path.is_dir():
        raise DiffActError(f"dataset folder {path} does not exist (expected <root>/<dataset>/features, ...)")
    return path


def load_videos(
    root: Path, names: Sequence[str], class_names: Sequence[str], cfg: DiffActConfig
) -> list[Video]:
    """Read and check every video of ``names``; missing files are listed all at once."""
    feat_dir, gt_dir = root / "features", root / "groundTruth"
    missing = [str(feat_dir / f"{n}.npy") for n in names if not (feat_dir / f"{n}.npy").is_file()]
    missing += [str(gt_dir / f"{n}.txt") for n in names if not (gt_dir / f"{n}.txt").is_file()]
    if missing:
        raise DiffActError(f"{len(missing)} missing files: {missing}")
    total = sum((feat_dir / f"{n}.npy").stat().st_size for n in names)
    mmap = total > cfg.data.mmap_threshold_gb * 2**30
    videos = []
    for name in names:
        feat_path, gt_path = feat_dir / f"{name}.npy", gt_dir / f"{name}.txt"
        feats = load_features(feat_path, cfg.encoder.input_dim, sample_rate=cfg.data.sample_rate, mmap=mmap)
        labels = read_labels(gt_path)
        t_feat = feature_frames(feats)
        if t_feat != len(labels):
            if cfg.data.length_mismatch != "truncate":
                raise DiffActError(
                    f"{feat_path} has {t_feat} frames but {gt_path} has {len(labels)} labels; "
                    "fix the files or set data.length_mismatch='truncate'"
                )
            n = min(t_feat, len(labels))
            feats = feats[:, :n] if feats.ndim == 2 else feats[:n]
            labels = labels[:n]
        ids = labels_to_ids(labels, class_names, gt_path, cfg.data.unknown_label)
        videos.append(Video(name, feats, ids, labels, boundary_target(ids, cfg.loss.boundary_smooth)))
    return videos


class ItemSampler(EpochSampler):
    """An :class:`EpochSampler` yielding ``(epoch, index)`` so each item can seed its own generator."""

    def __iter__(self):
        epoch = self.epoch
        for index in self.order(epoch):
            yield epoch, index
        self.epoch += 1


class MSTCNDataset(Dataset):
    """Videos of one split of an MS-TCN-layout dataset.

    ``subset`` is ``"train"`` or ``"test"`` (the bundle ``<subset>.split<split>.bundle``); ``videos``
    restricts it to those names (e.g. a validation hold-out). Training items (``dataset[(epoch, i)]``)
    draw a crop and a temporal offset from a generator seeded by ``(seed, epoch, i)`` and carry that
    seed for the loss's own draws.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str,
        split: int | str,
        subset: str,
        cfg: DiffActConfig,
        videos: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.root = dataset_dir(root, dataset)
        self.cfg = cfg
        self.seed = seed
        self.class_names = read_mapping(self.root / "mapping.txt")
        if len(self.class_names) != cfg.data.num_classes:
            raise DiffActError(
                f"{self.root / 'mapping.txt'} has {len(self.class_names)} classes but "
                f"data.num_classes={cfg.data.num_classes}"
            )
        names = read_bundle(self.root / "splits" / f"{subset}.split{split}.bundle")
        if videos is not None:
            unknown = sorted(set(videos) - set(names))
            if unknown:
                raise DiffActError(f"videos {unknown} are not in the {subset} bundle of split {split}")
            names = [n for n in names if n in set(videos)]
        self.videos = load_videos(self.root, names, self.class_names, cfg)

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.videos]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        video = self.videos[index]
        item_seed = epoch_seed(epoch_seed(self.seed, epoch), index)
        rng = np.random.default_rng(item_seed)
        r = self.cfg.data.sample_rate
        offset = int(rng.integers(r)) if self.cfg.data.temporal_aug else r // 2
        crop = int(rng.integers(num_crops(video.features)))
        feats = feature_crop(video.features, crop)[:, offset::r]
        boundary = video.boundary[offset::r]
        peak = boundary.max()
        return {
            "name": video.name,
            "features": torch.from_numpy(np.ascontiguousarray(feats)),
            "labels": torch.from_numpy(video.ids[offset::r].copy()),
            "boundary": torch.from_numpy(boundary / peak if peak > 0 else boundary.copy()),
            "seed": int(item_seed),
            "epoch": epoch,
            "index": index,
        }


def single_item(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for one video per micro-step: no padding, no stacking."""
    return batch[0]
