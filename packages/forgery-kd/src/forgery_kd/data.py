"""DeepfakeBench-layout frame datasets (JSON lists or CSV) with evenly spaced frame sampling.

JSON (``<json_dir>/<Name>.json``)::

    {Name: {label_name: {train|val|test: {c23|c40|raw: {video: {"label": label_name, "frames": [...]}}}}}}

The compression level exists only for the FaceForensics++ family; other datasets (Celeb-DF, the
synthetic set) map the split straight to videos. A ``_c40`` suffix on a name selects c40.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .errors import ForgeryKDError

__all__ = [
    "DEFAULT_LABELS",
    "MEAN",
    "STD",
    "DeepfakeBenchDataset",
    "FrameCSVDataset",
    "FrameRecord",
    "even_indices",
    "load_rgb",
    "to_tensor",
]

logger = logging.getLogger(__name__)

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
COMPRESSIONS = ("c23", "c40", "raw")
FF_FAMILY = (
    "FaceForensics++",
    "FF-DF",
    "FF-F2F",
    "FF-FS",
    "FF-NT",
    "FaceShifter",
    "DeepFakeDetection",
)

DEFAULT_LABELS: dict[str, int] = {
    # FaceForensics++ family (DeepfakeBench label_dict)
    "FF-real": 0,
    "FF-DF": 1,
    "FF-F2F": 1,
    "FF-FS": 1,
    "FF-NT": 1,
    "FF-FH": 1,
    "DFD_real": 0,
    "DFD_fake": 1,
    # Celeb-DF
    "CelebDFv1_real": 0,
    "CelebDFv1_fake": 1,
    "CelebDFv2_real": 0,
    "CelebDFv2_fake": 1,
    # DFDC / DFDCP / DeeperForensics / UADFV
    "DFDCP_Real": 0,
    "DFDCP_FakeA": 1,
    "DFDCP_FakeB": 1,
    "DFDC_Real": 0,
    "DFDC_Fake": 1,
    "DF_real": 0,
    "DF_fake": 1,
    "UADFV_Real": 0,
    "UADFV_Fake": 1,
    # the synthetic set written by make_synthetic_forgeries
    "Synth_real": 0,
    "Synth_blend": 1,
    "Synth_splice": 1,
    "Synth_resample": 1,
    "Synth_freq": 1,
    "Synth_double_jpeg": 1,
}
"""DeepfakeBench's label names → 0 (real) / 1 (fake), plus the synthetic set's."""


def even_indices(total: int, n: int) -> list[int]:
    """``n`` evenly spaced indices into ``range(total)`` (all of them when ``total <= n``)."""
    if total <= n:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, n).round().astype(int)]


def _stem_key(path: str) -> tuple[int, int | str]:
    stem = Path(path).stem
    return (0, int(stem)) if re.fullmatch(r"\d+", stem) else (1, stem)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as RGB (grey and RGBA converted); unreadable files raise :class:`ForgeryKDError`."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ForgeryKDError(f"{path}: cannot read image ({err})") from err


def to_tensor(image: Image.Image, size: int) -> Tensor:
    """RGB image → ``[3, size, size]`` normalised with mean = std = 0.5 (bilinear resize if needed)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


@dataclass
class FrameRecord:
    """One frame: file, 0/1 label, video id (parent directory) and label name (manipulation type)."""

    path: Path
    label: int
    video_id: str
    kind: str


class _FrameDataset(Dataset):
    """Shared item logic: returns ``{"image": [3, S, S], "label": int, "index": int}``."""

    records: list[FrameRecord]

    def __init__(
        self, img_size: int, transform: Callable[[Image.Image], Image.Image] | None, max_missing: float
    ):
        self.img_size = img_size
        self.transform = transform
        self.max_missing = max_missing
        self.missing: list[Path] = []

    def _drop_missing(self, where: str) -> None:
        present = [r for r in self.records if r.path.is_file()]
        self.missing = [r.path for r in self.records if not r.path.is_file()]
        if self.records and len(self.missing) / len(self.records) > self.max_missing:
            raise ForgeryKDError(
                f"{where}: {len(self.missing)} of {len(self.records)} frames are missing "
                f"(e.g. {self.missing[0]}); more than max_missing={self.max_missing:.0%}. Check rgb_root"
            )
        if self.missing:
            logger.warning("%s: skipping %d missing frames", where, len(self.missing))
        self.records = present
        if not self.records:
            raise ForgeryKDError(f"{where}: no frames")
        labels = {r.label for r in self.records}
        if labels == {0, 1}:
            ratio = sum(r.label for r in self.records) / len(self.records)
            if not 0.2 <= ratio <= 0.8:
                logger.warning(
                    "%s: class imbalance (%.0f%% fake); consider balance='sampler'", where, 100 * ratio
                )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_rgb(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": to_tensor(image, self.img_size), "label": record.label, "index": index}

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    @property
    def kinds(self) -> list[str]:
        return [r.kind for r in self.records]

    def sample_weights(self) -> list[float]:
        """Per-frame weights that balance real and fake (for ``balance="sampler"``)."""
        counts = np.bincount(self.labels, minlength=2)
        return [1.0 / counts[r.label] for r in self.records]


def _child(node: Any, key: str, path: list[str], file: Path) -> Any:
    if not isinstance(node, dict):
        raise ForgeryKDError(f"{file}: {'/'.join(path)} should be an object, got {type(node).__name__}")
    if key not in node:
        raise ForgeryKDError(
            f"{file}: missing key {'/'.join([*path, key])} (present: {', '.join(map(str, node)) or 'none'})"
        )
    return node[key]


class DeepfakeBenchDataset(_FrameDataset):
    """Frames listed in DeepfakeBench JSON files.

    Args:
        json_dir: folder holding ``<Name>.json``.
        names: dataset names (``FaceForensics++``, ``Celeb-DF-v2``, ``FF-DF_c40``…).
        split: ``train``, ``val`` or ``test``.
        compression: ``c23``/``c40``/``raw`` for the FF++ family (a ``_c40`` name suffix wins).
        frame_num: frames per video, evenly spaced (videos with fewer use all).
        rgb_root: folder the frame paths are relative to.
        label_dict: label name → 0/1 (DeepfakeBench's :data:`DEFAULT_LABELS`).
        transform: optional PIL → PIL augmentation.
        img_size: output side in pixels.
        max_missing: fraction of missing frames tolerated before failing (they are skipped and counted).
    """

    def __init__(
        self,
        json_dir: str | os.PathLike[str],
        names: Sequence[str] | str,
        split: str,
        compression: str = "c23",
        frame_num: int = 32,
        rgb_root: str | os.PathLike[str] = ".",
        label_dict: dict[str, int] | None = None,
        transform: Callable[[Image.Image], Image.Image] | None = None,
        *,
        img_size: int = 256,
        max_missing: float = 0.05,
    ) -> None:
        super().__init__(img_size, transform, max_missing)
        if split not in ("train", "val", "test"):
            raise ForgeryKDError(f"split={split!r}: use 'train', 'val' or 'test'")
        if compression not in COMPRESSIONS:
            raise ForgeryKDError(f"compression={compression!r}: use one of {', '.join(COMPRESSIONS)}")
        if frame_num < 1:
            raise ForgeryKDError(f"frame_num={frame_num}: must be >= 1")
        self.label_dict = dict(DEFAULT_LABELS if label_dict is None else label_dict)
        root = Path(rgb_root)
        self.records = []
        for name in [names] if isinstance(names, str) else list(names):
            self.records.extend(self._read(Path(json_dir), name, split, compression, frame_num, root))
        self._drop_missing(f"{json_dir} {list(names) if not isinstance(names, str) else names}/{split}")

    def _read(
        self, json_dir: Path, name: str, split: str, compression: str, frame_num: int, root: Path
    ) -> list[FrameRecord]:
        base, comp = name, compression
        if name.endswith("_c40"):
            base, comp = name[: -len("_c40")], "c40"
        file = json_dir / f"{base}.json"
        if not file.is_file():
            raise ForgeryKDError(
                f"{file} does not exist; is json_dir right and {base!r} spelled as its file?"
            )
        try:
            tree = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ForgeryKDError(f"{file}: not valid JSON ({err})") from err
        dataset = _child(tree, base, [], file)
        if not isinstance(dataset, dict) or not dataset:
            raise ForgeryKDError(f"{file}: {base} should be a non-empty object of label names")
        records: list[FrameRecord] = []
        for label_name, splits in dataset.items():
            node = _child(splits, split, [base, label_name], file)
            path = [base, label_name, split]
            if base in FF_FAMILY or (isinstance(node, dict) and node and set(node) <= set(COMPRESSIONS)):
                node = _child(node, comp, path, file)
                path.append(comp)
            if not isinstance(node, dict):
                raise ForgeryKDError(f"{file}: {'/'.join(path)} should be an object of videos")
            for video, entry in node.items():
                where = "/".join([*path, video])
                label_of_video = _child(entry, "label", [*path, video], file)
                if label_of_video not in self.label_dict:
                    raise ForgeryKDError(
                        f"{file}: {where} has label {label_of_video!r}, which is not in label_dict; "
                        "add it (name → 0 real / 1 fake)"
                    )
                frames = _child(entry, "frames", [*path, video], file)
                if not isinstance(frames, list):
                    raise ForgeryKDError(f"{file}: {where}/frames should be a list of paths")
                frames = sorted(frames, key=_stem_key)
                for i in even_indices(len(frames), frame_num):
                    frame = root / frames[i]
                    records.append(
                        FrameRecord(
                            frame,
                            int(self.label_dict[label_of_video] >= 1),
                            str(frame.parent),
                            label_of_video,
                        )
                    )
        if not records:
            raise ForgeryKDError(f"{file}: split {base}/*/{split} is empty")
        return records


class FrameCSVDataset(_FrameDataset):
    """Frames listed in a CSV with columns ``path,label,video_id[,split][,type]``.

    ``label`` is 0/1 (or a name from ``label_dict``); paths are relative to ``root``.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        root: str | os.PathLike[str] = ".",
        *,
        split: str | None = None,
        img_size: int = 256,
        transform: Callable[[Image.Image], Image.Image] | None = None,
        label_dict: dict[str, int] | None = None,
        max_missing: float = 0.05,
    ) -> None:
        super().__init__(img_size, transform, max_missing)
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ForgeryKDError(f"{csv_path} does not exist")
        labels = DEFAULT_LABELS if label_dict is None else label_dict
        self.records = []
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"path", "label", "video_id"} - set(reader.fieldnames or [])
            if missing:
                raise ForgeryKDError(
                    f"{csv_path}: missing columns {sorted(missing)}; need path,label,video_id"
                )
            for line, row in enumerate(reader, start=2):
                if split is not None and row.get("split") != split:
                    continue
                raw = row["label"].strip()
                if raw in ("0", "1"):
                    label = int(raw)
                elif raw in labels:
                    label = int(labels[raw] >= 1)
                else:
                    raise ForgeryKDError(
                        f"{csv_path}:{line}: label {raw!r} is neither 0/1 nor a known label name"
                    )
                kind = row.get("type") or ("real" if label == 0 else "fake")
                self.records.append(FrameRecord(Path(root) / row["path"], label, row["video_id"], kind))
        if not self.records:
            raise ForgeryKDError(f"{csv_path}: no rows{f' with split={split!r}' if split else ''}")
        self._drop_missing(str(csv_path))
