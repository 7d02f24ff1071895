"""Inference (§2.7): ``decoder-agg`` / ``decoder-noagg`` / ``encoder`` modes, post-processing, exports.

Per video the sampler is seeded with ``sampling_seed + crc32(name)`` (``seed_by="name"``), so a
prediction does not depend on the order of the video list; ``seed_by="index"`` mimics the official code.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from difflab_core.device import resolve_device
from difflab_core.report import write_json
from difflab_core.store import ResultStore, fingerprint

from .config import MODES, DiffActConfig
from .data import MSTCNDataset, feature_crop, feature_frames, num_crops
from .errors import DiffActError
from .metrics import PREDICTION_HEADER, SegmentationMetrics, read_prediction
from .model import DiffActModel
from .postprocess import Segment, median_smooth, purge, restore_full_rate, segments

SETTINGS_FILE = "diffact.json"


@dataclass
class Prediction:
    """One video's result: class ids and names per frame, the ``(C, T)`` probabilities before
    post-processing (restored to the full rate) and the segments (end exclusive, no background dropped)."""

    labels: np.ndarray
    names: list[str]
    probs: np.ndarray
    segments: list[Segment]


def video_seed(cfg: DiffActConfig, name: str, index: int) -> int:
    """The sampling seed of a video: by name (default) or by its position in the list."""
    if cfg.eval.seed_by == "index":
        return cfg.eval.sampling_seed + index
    return cfg.eval.sampling_seed + zlib.crc32(name.encode())


def save_segmenter(model: DiffActModel, cfg: DiffActConfig, class_names: Sequence[str], out: Path) -> Path:
    """``save_pretrained`` (safetensors) plus ``diffact.json`` with the config and class names."""
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    write_json(out / SETTINGS_FILE, {"config": cfg.to_dict(), "class_names": list(class_names)})
    return out


class DiffActSegmenter:
    """A trained model with its config and class names, ready to label videos."""

    def __init__(
        self, model: DiffActModel, cfg: DiffActConfig, class_names: Sequence[str], device: str = "auto"
    ) -> None:
        if len(class_names) != model.config.num_classes:
            raise DiffActError(f"{len(class_names)} class names for a {model.config.num_classes}-class model")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.class_names = list(class_names)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str = "auto") -> DiffActSegmenter:
        """Load from a model folder written by :func:`save_segmenter` or a run folder holding ``model/``."""
        path = Path(path)
        if (path / "model" / SETTINGS_FILE).is_file():
            path = path / "model"
        settings = path / SETTINGS_FILE
        if not settings.is_file():
            raise DiffActError(
                f"{path} is not a diffact model folder (no {SETTINGS_FILE}); train or convert first"
            )
        data = json.loads(settings.read_text())
        cfg = DiffActConfig.from_dict(data["config"])
        model = DiffActModel.from_pretrained(path)
        return cls(model, cfg, data["class_names"], device)

    def weights_digest(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def probabilities(self, features: np.ndarray, mode: str, num_steps: int | None, seed: int) -> np.ndarray:
        """Averaged ``(C, T // r)`` class probabilities at the model rate (over offsets and crops)."""
        r = self.cfg.data.sample_rate
        total = feature_frames(features)
        length = total // r
        offsets = [r // 2] if mode == "decoder-noagg" else range(r)
        maps = []
        for crop in range(num_crops(features)):
            full = feature_crop(features, crop)
            for offset in offsets:
                feats = torch.from_numpy(np.ascontiguousarray(full[:, offset::r])).to(self.device)[None]
                enc_logits, cond = self.model.encode(feats)
                if mode == "encoder":
                    probs = torch.softmax(enc_logits, dim=1)
                else:
                    generator = torch.Generator().manual_seed(seed)
                    probs = self.model.sample(feats, num_steps, generator, cond=cond)
                maps.append(probs[0, :, :length].float().cpu().numpy())
        return np.mean(maps, axis=0)

    def predict(
        self,
        features: np.ndarray | torch.Tensor,
        mode: str | None = None,
        num_steps: int | None = None,
        seed: int | None = None,
        name: str = "",
    ) -> Prediction:
        """Label every frame of ``features`` (``(F, T)`` or ``(T, S, F)``)."""
        mode = mode or self.cfg.eval.mode
        if mode not in MODES:
            raise DiffActError(f"mode={mode!r}: use one of {MODES}")
        features = features.cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if (
            features.ndim not in (2, 3)
            or features.shape[0 if features.ndim == 2 else 2] != self.cfg.encoder.input_dim
        ):
            raise DiffActError(
                f"features{f' of {name}' if name else ''} have shape {features.shape}; expected "
                f"({self.cfg.encoder.input_dim}, T) or (T, S, {self.cfg.encoder.input_dim})"
            )
        total = feature_frames(features)
        r = self.cfg.data.sample_rate
        if total < max(2, r):
            raise DiffActError(
                f"features{f' of {name}' if name else ''}: {total} frames; need >= max(2, {r})"
            )
        seed = video_seed(self.cfg, name, 0) if seed is None else seed
        probs = self.probabilities(features, mode, num_steps, seed)
        post = self.cfg.postprocess
        smoothed = median_smooth(probs, post.value) if post.kind == "median" else probs
        ids = restore_full_rate(smoothed.argmax(0), total, r)
        if post.kind == "purge":
            ids = np.asarray(purge(ids.tolist(), post.value, self.cfg.eval.segment_end))
        names = [self.class_names[i] for i in ids]
        return Prediction(ids, names, restore_full_rate(probs, total, r), segments(names, bg_classes=()))


def write_outputs(pred: Prediction, video: str, out_dir: Path, fps: float) -> None:
    """``prediction/<video>.txt`` (MS-TCN format), ``probs/<video>.npy`` (float16), ``segments/<video>.json``."""
    for sub in ("prediction", "probs", "segments"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / "prediction" / f"{video}.txt").write_text(
        PREDICTION_HEADER + "\n" + " ".join(pred.names) + "\n"
    )
    np.save(out_dir / "probs" / f"{video}.npy", pred.probs.astype(np.float16))
    segs = [
        {"label": s.label, "start": s.start, "end": s.end, "start_s": s.start / fps, "end_s": s.end / fps}
        for s in pred.segments
    ]
    write_json(out_dir / "segments" / f"{video}.json", segs)


def _labels_digest(labels: Sequence[str]) -> str:
    return hashlib.sha256(" ".join(labels).encode()).hexdigest()[:16]


def predict_dataset(
    segmenter: DiffActSegmenter,
    dataset: MSTCNDataset,
    out_dir: str | os.PathLike[str],
    mode: str | None = None,
    num_steps: int | None = None,
    segment_ends: Sequence[str] = ("mstcn", "asformer"),
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Predict, export and score every video of ``dataset``; resumable.

    Per-video metrics are appended to a store named by a hash of the weights and settings; videos
    already recorded there, whose prediction file still holds what was recorded, are skipped. Returns the pooled metrics per
    segment-end convention.
    """
    out_dir = Path(out_dir)
    mode = mode or segmenter.cfg.eval.mode
    cfg = segmenter.cfg
    run_hash = fingerprint(
        {
            "weights": segmenter.weights_digest(),
            "mode": mode,
            "num_steps": num_steps or cfg.diffusion.sampling_steps,
            "eval": cfg.eval,
            "postprocess": cfg.postprocess,
        }
    )
    store = ResultStore(out_dir / "store", name=f"videos-{run_hash}", key="video")
    metrics = {end: SegmentationMetrics(cfg.data.bg_classes, segment_end=end) for end in segment_ends}
    names = dataset.names
    recorded = {r["video"]: r.get("labels_sha") for r in store.records()}
    with Progress(disable=not progress) as bar:
        task = bar.add_task("predict", total=len(names))
        for index, video in enumerate(dataset.videos):
            pred_file = out_dir / "prediction" / f"{video.name}.txt"
            labels = read_prediction(pred_file) if store.done(video.name) and pred_file.is_file() else None
            if labels is None or _labels_digest(labels) != recorded.get(video.name):
                seed = video_seed(cfg, video.name, index)
                pred = segmenter.predict(video.features, mode, num_steps, seed=seed, name=video.name)
                write_outputs(pred, video.name, out_dir, cfg.data.fps)
                labels = pred.names
                # a recorded video is only re-exported: same hash, same deterministic result
                if not store.done(video.name):
                    own = SegmentationMetrics(cfg.data.bg_classes, segment_end=cfg.eval.segment_end)
                    own_metrics = own.update(labels, video.labels, video.name)
                    store.append(
                        {
                            "video": video.name,
                            "hash": run_hash,
                            "labels_sha": _labels_digest(labels),
                            **own_metrics,
                        }
                    )
            for m in metrics.values():
                m.update(labels, video.labels, video.name)
            bar.advance(task)
    return {end: m.compute() for end, m in metrics.items()}
