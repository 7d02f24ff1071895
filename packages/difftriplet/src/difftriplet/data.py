"""CholecT50 / CholecT45 readers (§4.1) and the per-video feature dataset, validated at the boundary.

Layouts::

    CholecT50/videos/VIDxx/000000.png …   CholecT50/labels/VIDxx.json   CholecT50/label_mapping.txt
    CholecT45/data/VIDxx/*.png            CholecT45/triplet/VIDxx.txt ("frame_id,b0,…,b99")
    <features>/VIDxx.npy                  F×T per video
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from difflab_core.data import EpochSampler, epoch_seed

from .config import DiffTripletConfig
from .errors import DiffTripletError
from .labels import INSTRUMENTS, TARGETS, VERBS, TripletSpace
from .splits import Split

__all__ = [
    "VARIANTS",
    "FrameFolder",
    "ItemSampler",
    "TripletFeatureDataset",
    "TripletVideo",
    "VideoLabels",
    "check_mapping",
    "dataset_paths",
    "load_features",
    "read_cholect45_labels",
    "read_cholect50_labels",
    "read_video_labels",
    "resolve_feature_dir",
    "single_item",
]

VARIANTS = ("cholect50", "cholect45")
INSTANCE_ITEMS = 15
_FRAME_FILE = re.compile(r"^(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


@dataclass
class VideoLabels:
    """Frame labels of one video: ``y (T, C)`` uint8 in the space's joint layout."""

    y: np.ndarray
    num_frames: int
    fps: float
    names: dict[str, list[str]]
    component_mismatches: int = 0


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    values = sorted(values)
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _category_names(categories: Any, key: str, fallback: tuple[str, ...]) -> list[str]:
    if not isinstance(categories, dict) or not isinstance(categories.get(key), dict):
        return list(fallback)
    table = categories[key]
    try:
        return [str(table[str(i)]) for i in range(len(fallback))]
    except KeyError:
        return list(fallback)


def read_cholect50_labels(
    json_path: str | os.PathLike[str],
    space: TripletSpace,
    *,
    missing_frames: str = "error",
    strict: bool = False,
    component_labels: str = "triplet",
) -> VideoLabels:
    """Read a CholecT50 ``VIDxx.json`` into ``VideoLabels`` (§4.1, §7).

    Components come from the triplets through the bank (``component_labels="triplet"``) or from the
    JSON items 1, 7, 8 (``"json"``); either way the JSON components are cross-checked against the bank
    (a warning with counts, an error when ``strict``). ``missing_frames="empty"`` tolerates gaps.
    """
    path = Path(json_path)
    if not path.is_file():
        raise DiffTripletError(f"label file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DiffTripletError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise DiffTripletError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(data, dict):
        raise DiffTripletError(f"{path}: expected a JSON object with 'annotations' and 'num_frames'")
    for key in ("annotations", "num_frames"):
        if key not in data:
            raise DiffTripletError(f"{path}: missing the {key!r} key")
    fps = data.get("fps", 1)
    if fps != 1:
        raise DiffTripletError(f"{path}: fps={fps}, but CholecT50 labels are at 1 fps")
    num_frames = data["num_frames"]
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise DiffTripletError(f"{path}: num_frames must be a positive integer, got {num_frames!r}")
    annotations = data["annotations"]
    if not isinstance(annotations, dict):
        raise DiffTripletError(f"{path}: 'annotations' must map frame keys to instance lists")
    frames: dict[int, Any] = {}
    for key, instances in annotations.items():
        try:
            frames[int(key)] = instances
        except ValueError as err:
            raise DiffTripletError(f"{path}: frame key {key!r} is not an integer") from err
    outside = sorted(f for f in frames if not 0 <= f < num_frames)
    if outside:
        raise DiffTripletError(f"{path}: frame keys {_ranges(outside)} lie outside 0..{num_frames - 1}")
    missing = sorted(set(range(num_frames)) - set(frames))
    if missing and missing_frames != "empty":
        raise DiffTripletError(
            f"{path}: frames {_ranges(missing)} have no annotation entry (num_frames={num_frames}); "
            "pass missing_frames='empty' to treat them as frames without triplets"
        )
    bank = space.bank
    ivt = np.zeros((num_frames, 100), dtype=np.uint8)
    from_json = {c: np.zeros((num_frames, n), dtype=np.uint8) for c, n in (("i", 6), ("v", 10), ("t", 15))}
    mismatches = 0
    for frame, instances in frames.items():
        if not isinstance(instances, list):
            raise DiffTripletError(f"{path}: frame {frame}: expected a list of instances")
        for n, inst in enumerate(instances):
            if (
                not isinstance(inst, list)
                or len(inst) != INSTANCE_ITEMS
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in inst)
            ):
                raise DiffTripletError(
                    f"{path}: frame {frame}, instance {n}: expected a list of {INSTANCE_ITEMS} numbers, got {inst!r}"
                )
            triplet = int(inst[0])
            if triplet == -1:
                continue
            if not 0 <= triplet <= 99:
                raise DiffTripletError(f"{path}: frame {frame}: triplet ID {triplet} is outside -1..99")
            ivt[frame, triplet] = 1
            parts = {"i": int(inst[1]), "v": int(inst[7]), "t": int(inst[8])}
            expected = {"i": bank[triplet, 1], "v": bank[triplet, 2], "t": bank[triplet, 3]}
            if parts != expected:
                mismatches += 1
            for c, value in parts.items():
                if 0 <= value < from_json[c].shape[1]:
                    from_json[c][frame, value] = 1
    if mismatches:
        message = (
            f"{path}: {mismatches} instances have instrument/verb/target IDs (items 1, 7, 8) that "
            "contradict the triplet bank"
        )
        if strict:
            raise DiffTripletError(message)
        warnings.warn(message, stacklevel=2)
    y = space.components(ivt)
    if component_labels == "json":
        for c, values in from_json.items():
            if c in space.slices:
                y[:, space.slices[c]] = values
    elif component_labels != "triplet":
        raise DiffTripletError(f"component_labels={component_labels!r}; use 'triplet' or 'json'")
    categories = data.get("categories")
    names = {
        "i": _category_names(categories, "instrument", INSTRUMENTS),
        "v": _category_names(categories, "verb", VERBS),
        "t": _category_names(categories, "target", TARGETS),
    }
    names["ivt"] = [f"{names['i'][i]},{names['v'][v]},{names['t'][t]}" for _, i, v, t, _, _ in bank]
    return VideoLabels(y.astype(np.uint8), num_frames, 1.0, names, mismatches)


def read_cholect45_labels(txt_path: str | os.PathLike[str], space: TripletSpace) -> VideoLabels:
    """Read a CholecT45 ``triplet/VIDxx.txt`` (``frame_id,b0,…,b99`` per line) into ``VideoLabels``."""
    path = Path(txt_path)
    if not path.is_file():
        raise DiffTripletError(f"label file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 101:
            raise DiffTripletError(
                f"{path}, line {number}: expected 101 columns (frame_id + 100), got {len(parts)}"
            )
        try:
            values = [int(float(p)) for p in parts]
        except ValueError as err:
            raise DiffTripletError(f"{path}, line {number}: non-numeric value") from err
        if any(v not in (0, 1) for v in values[1:]) or any(float(p) not in (0.0, 1.0) for p in parts[1:]):
            raise DiffTripletError(f"{path}, line {number}: triplet columns must be 0 or 1")
        rows.append(values)
    if not rows:
        raise DiffTripletError(f"{path}: no label rows")
    table = np.asarray(rows, dtype=np.int64)
    frame_ids = table[:, 0]
    if not np.array_equal(frame_ids, np.arange(len(rows))):
        bad = np.flatnonzero(frame_ids != np.arange(len(rows)))[0]
        raise DiffTripletError(
            f"{path}: frame IDs must be contiguous from 0; row {bad + 1} has frame_id {frame_ids[bad]}"
        )
    y = space.components(table[:, 1:].astype(np.uint8))
    names = {"i": list(INSTRUMENTS), "v": list(VERBS), "t": list(TARGETS), "ivt": space.triplet_names}
    return VideoLabels(y.astype(np.uint8), len(rows), 1.0, names)


# ------------------------------------------------------------------------------------------- layout


def dataset_paths(root: str | os.PathLike[str], variant: str) -> tuple[Path, Path, str]:
    """``(frames dir, labels dir, label suffix)`` of a CholecT50 / CholecT45 root."""
    root = Path(root)
    if variant not in VARIANTS:
        raise DiffTripletError(f"variant={variant!r}; use one of {VARIANTS}")
    if not root.is_dir():
        raise DiffTripletError(f"dataset root {root} does not exist")
    if variant == "cholect50":
        return root / "videos", root / "labels", ".json"
    return root / "data", root / "triplet", ".txt"


def check_mapping(root: str | os.PathLike[str], space: TripletSpace | None = None) -> TripletSpace:
    """The space of ``root``: ``label_mapping.txt`` if present (it must equal the ivtmetrics bank)."""
    mapping = Path(root) / "label_mapping.txt"
    layout = space.target_components if space is not None else ("ivt", "i", "v", "t")
    if mapping.is_file():
        return TripletSpace.from_mapping_file(mapping, layout)
    return space or TripletSpace.from_ivtmetrics(layout)


def read_video_labels(
    root: Path, variant: str, video: str, space: TripletSpace, cfg: DiffTripletConfig
) -> VideoLabels:
    _, labels_dir, suffix = dataset_paths(root, variant)
    path = labels_dir / f"{video}{suffix}"
    if variant == "cholect50":
        return read_cholect50_labels(
            path,
            space,
            missing_frames=cfg.data.missing_frames,
            strict=cfg.data.strict_components,
            component_labels=cfg.data.component_labels,
        )
    return read_cholect45_labels(path, space)


class FrameFolder:
    """The frames of one video folder (``000000.png`` …), in frame order; corrupt files raise with the path."""

    def __init__(self, video_dir: str | os.PathLike[str]) -> None:
        self.video_dir = Path(video_dir)
        if not self.video_dir.is_dir():
            raise DiffTripletError(f"frame folder {self.video_dir} does not exist")
        numbered = []
        for p in self.video_dir.iterdir():
            match = _FRAME_FILE.match(p.name)
            if match:
                numbered.append((int(match.group(1)), p))
        numbered.sort()
        indices = [n for n, _ in numbered]
        if indices != list(range(len(indices))):
            gaps = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
            raise DiffTripletError(
                f"{self.video_dir}: frame files are not numbered 0..N-1 (missing {_ranges(gaps)})"
            )
        self.paths = [p for _, p in numbered]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DiffTripletError(f"frame {path} is unreadable or corrupt: {err}") from err


def load_features(
    path: str | os.PathLike[str],
    num_frames: int | None = None,
    feature_dim: int | None = None,
    length_mismatch: str = "error",
) -> np.ndarray:
    """A feature file ``F×T`` as float32, checked against ``num_frames`` and ``feature_dim``."""
    path = Path(path)
    if not path.is_file():
        raise DiffTripletError(
            f"feature file {path} does not exist; run `difftriplet extract-features` first"
        )
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DiffTripletError(f"feature file {path} is not a readable .npy array: {err}") from err
    if feats.ndim != 2:
        raise DiffTripletError(f"{path}: features must be 2-D (F, T), got shape {feats.shape}")
    if feature_dim is not None and feats.shape[0] != feature_dim:
        raise DiffTripletError(f"{path}: feature size F={feats.shape[0]} but the model expects {feature_dim}")
    feats = feats.astype(np.float32)
    if not np.isfinite(feats).all():
        raise DiffTripletError(f"{path}: features contain NaN or inf")
    if num_frames is not None and feats.shape[1] != num_frames and length_mismatch != "truncate":
        raise DiffTripletError(
            f"{path}: {feats.shape[1]} feature frames but the labels have {num_frames}; "
            "pass length_mismatch='truncate' to cut both to the shorter"
        )
    return feats


@dataclass
class TripletVideo:
    """One video: ``features (F, T)`` float32 and ``labels (T, C)`` uint8."""

    name: str
    features: np.ndarray
    labels: np.ndarray


class ItemSampler(EpochSampler):
    """An :class:`EpochSampler` yielding ``(epoch, index)`` so each item can seed its own generator."""

    def __iter__(self):
        epoch = self.epoch
        for index in self.order(epoch):
            yield epoch, index
        self.epoch += 1


def single_item(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for one video per micro-step: no padding, no stacking."""
    return batch[0]


def resolve_feature_dir(root: str | os.PathLike[str], features: str | os.PathLike[str]) -> Path:
    """``features`` as a directory of ``VIDxx.npy``, or a name under ``<root>/features/``."""
    direct = Path(features)
    if direct.is_dir():
        return direct
    under = Path(root) / "features" / str(features)
    if under.is_dir():
        return under
    raise DiffTripletError(f"feature folder {features!r} not found (tried {direct} and {under})")


class TripletFeatureDataset(Dataset):
    """Videos of one subset of a split, with features and joint labels.

    ``dataset[i]`` is the whole video ``i``; ``dataset[(epoch, i)]`` is a training item: with
    ``sample_rate r > 1`` a random offset ``o`` takes frames ``o::r``; it carries a seed derived from
    ``(seed, epoch, i)`` for the loss's own draws.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        variant: str,
        split: Split,
        subset: str,
        features: str | os.PathLike[str],
        cfg: DiffTripletConfig,
        seed: int = 0,
        space: TripletSpace | None = None,
    ) -> None:
        self.root = Path(root)
        self.variant, self.cfg, self.seed = variant, cfg, seed
        self.space = check_mapping(
            self.root, space or TripletSpace.from_ivtmetrics(cfg.data.target_components)
        )
        _, labels_dir, suffix = dataset_paths(self.root, variant)
        names = list(split.subset(subset))
        absent = [n for n in names if not (labels_dir / f"{n}{suffix}").is_file()]
        if absent:
            raise DiffTripletError(
                f"{len(absent)} {subset} videos of the split are absent from {labels_dir}: {', '.join(absent)}"
            )
        self.feature_dir = resolve_feature_dir(self.root, features)
        self.videos: list[TripletVideo] = []
        for name in names:
            labels = read_video_labels(self.root, variant, name, self.space, cfg)
            feats = load_features(
                self.feature_dir / f"{name}.npy",
                labels.num_frames,
                cfg.model.input_dim,
                cfg.data.length_mismatch,
            )
            length = min(feats.shape[1], labels.num_frames)
            self.videos.append(TripletVideo(name, feats[:, :length], labels.y[:length]))

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.videos]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            epoch, index = key
            item_seed = epoch_seed(epoch_seed(self.seed, epoch), index)
        else:
            index, item_seed = key, self.seed
        video = self.videos[index]
        rate = self.cfg.train.sample_rate
        offset = int(np.random.default_rng(item_seed).integers(rate)) if isinstance(key, tuple) else 0
        return {
            "name": video.name,
            "features": torch.from_numpy(video.features[:, offset::rate]),
            "labels": torch.from_numpy(video.labels[offset::rate].T.astype(np.float32)),
            "seed": int(item_seed),
        }

    def positive_weights(self) -> np.ndarray:
        """``w_c = n_neg / (n_pos + 10)`` over all training frames, 1 outside ``train.class_weighting``."""
        y = np.concatenate([v.labels for v in self.videos]).astype(np.float64)
        weights = np.ones(y.shape[1], dtype=np.float32)
        pos = y.sum(0)
        neg = y.shape[0] - pos
        for c in self.cfg.train.class_weighting:
            s = self.space.slices[c]
            weights[s] = (neg[s] / (pos[s] + 10.0)).astype(np.float32)
        return weights
