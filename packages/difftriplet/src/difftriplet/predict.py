"""Inference (§2.5) and per-video exports (§8.4).

:class:`TripletRecognizer` wraps a trained model with its config; :func:`predict_dataset` writes, per
video, ``probs/<VID>.npy`` (float16 T×131), ``top/<VID>.csv`` (frame, top-5 triplet IDs and scores)
and ``pred/<VID>.json`` (CholecT50-style per-frame instance lists with scores), resuming videos
already exported, and appends one row per video to ``videos.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from difflab_core.device import resolve_device
from difflab_core.report import atomic_write_text
from difflab_core.store import ResultStore

from .config import DiffTripletConfig
from .data import TripletVideo
from .errors import DiffTripletError
from .guidance import AssociationGuidance
from .labels import TripletSpace
from .metrics import TripletEvaluator, TripletReport
from .model import DiffTripletModel

__all__ = [
    "CONFIG_FILE",
    "TripletRecognizer",
    "build_model",
    "predict_dataset",
    "save_recognizer",
    "video_seed",
]

CONFIG_FILE = "difftriplet.json"
TOP_EXPORT = 5
INSTANCE_THRESHOLD = 0.5


def video_seed(sampling_seed: int, name: str) -> int:
    """Seed of a video's sampling generator: ``sampling_seed + crc32(name)``."""
    return int(sampling_seed) + zlib.crc32(name.encode())


def build_model(cfg: DiffTripletConfig) -> DiffTripletModel:
    """A freshly initialised model; the initialisation depends only on ``cfg.train.seed``."""
    m, d = cfg.model, cfg.diffusion
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return DiffTripletModel(
            input_dim=m.input_dim,
            num_classes=cfg.num_classes,
            encoder_layers=m.encoder_layers,
            encoder_f_maps=m.encoder_f_maps,
            encoder_kernel_size=m.encoder_kernel_size,
            normal_dropout=m.normal_dropout,
            channel_dropout=m.channel_dropout,
            temporal_dropout=m.temporal_dropout,
            feature_layer_indices=tuple(m.feature_layer_indices),
            use_instance_norm=m.use_instance_norm,
            decoder_layers=m.decoder_layers,
            decoder_f_maps=m.decoder_f_maps,
            decoder_kernel_size=m.decoder_kernel_size,
            decoder_dropout=m.decoder_dropout,
            time_emb_dim=m.time_emb_dim,
            causal=m.causal,
            num_train_timesteps=d.num_train_timesteps,
            snr_scale=d.snr_scale,
            sampling_steps=d.sampling_steps,
            ddim_eta=d.ddim_eta,
        )


def save_recognizer(model: DiffTripletModel, cfg: DiffTripletConfig, out_dir: str | os.PathLike[str]) -> Path:
    """Save the model (diffusers folder, safetensors) and ``difftriplet.json`` to ``out_dir``."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    cfg.save(out_dir / CONFIG_FILE)
    return out_dir


class TripletRecognizer:
    """A trained model and its config: :meth:`predict` gives ``(T, C)`` joint probabilities."""

    def __init__(self, model: DiffTripletModel, cfg: DiffTripletConfig, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.space = TripletSpace.from_ivtmetrics(cfg.data.target_components)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str = "auto") -> TripletRecognizer:
        """Load a folder written by :func:`save_recognizer` (a run's ``model/`` or ``best/``)."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise DiffTripletError(f"{directory} is not a difftriplet model folder (no {CONFIG_FILE})")
        cfg = DiffTripletConfig.load(directory / CONFIG_FILE)
        try:
            model = DiffTripletModel.from_pretrained(directory)
        except (OSError, ValueError, RuntimeError) as err:
            raise DiffTripletError(f"{directory}: cannot load the model weights: {err}") from err
        return cls(model, cfg, device)

    def guidance(
        self, scale: float | None = None, components: Sequence[str] | None = None
    ) -> AssociationGuidance:
        inf = self.cfg.inference
        return AssociationGuidance(
            self.space,
            inf.guidance_scale if scale is None else scale,
            inf.guidance_components if components is None else tuple(components),
        )

    @torch.no_grad()
    def predict(
        self,
        features: np.ndarray | torch.Tensor,
        name: str = "",
        *,
        mode: str | None = None,
        num_steps: int | None = None,
        guidance: AssociationGuidance | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Probabilities ``(T, C)`` float32 for ``features (F, T)``.

        The generator is seeded with ``seed`` or :func:`video_seed` of ``name``. With ``sample_rate r > 1``
        the ``r`` offset subsequences are predicted and interleaved back to the full rate.
        """
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if feats.dim() != 2 or feats.shape[0] != self.cfg.model.input_dim:
            raise DiffTripletError(
                f"{name or 'features'}: expected (F={self.cfg.model.input_dim}, T), got {tuple(feats.shape)}"
            )
        mode = mode or self.cfg.inference.mode
        guidance = guidance if guidance is not None else self.guidance()
        seed = video_seed(self.cfg.inference.sampling_seed, name) if seed is None else seed
        generator = torch.Generator().manual_seed(seed)
        rate = self.cfg.train.sample_rate
        out = np.zeros((feats.shape[1], self.model.config.num_classes), dtype=np.float32)
        for offset in range(min(rate, feats.shape[1])):
            probs = self.model.sample(feats[:, offset::rate], num_steps, generator, guidance, mode)
            out[offset::rate] = probs.T.float().cpu().numpy()
        return out


def _top_csv(probs: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["frame"]
        + [f"ivt_{k + 1}" for k in range(TOP_EXPORT)]
        + [f"score_{k + 1}" for k in range(TOP_EXPORT)]
    )
    triplets = probs[:, :100]
    order = np.argsort(-triplets, axis=1, kind="stable")[:, :TOP_EXPORT]
    for frame, ids in enumerate(order):
        writer.writerow([frame, *ids.tolist(), *(f"{s:.6f}" for s in triplets[frame, ids])])
    return buffer.getvalue()


def _prediction_json(name: str, probs: np.ndarray, space: TripletSpace, threshold: float) -> str:
    """Per frame: ``[triplet, instrument, score, -1, -1, -1, -1, verb, target, score, -1, -1, -1, -1, -1]``."""
    annotations = {}
    for frame, row in enumerate(probs[:, :100]):
        instances = []
        for c in np.flatnonzero(row >= threshold):
            _, i, v, t, _, _ = (int(x) for x in space.bank[c])
            score = round(float(row[c]), 6)
            instances.append([int(c), i, score, -1, -1, -1, -1, v, t, score, -1, -1, -1, -1, -1])
        annotations[str(frame)] = instances
    record = {
        "video": name,
        "fps": 1,
        "num_frames": len(probs),
        "threshold": threshold,
        "annotations": annotations,
    }
    return json.dumps(record)


def predict_dataset(
    recognizer: TripletRecognizer,
    videos: Sequence[TripletVideo],
    out_dir: str | os.PathLike[str],
    *,
    mode: str | None = None,
    evaluate: bool = True,
    threshold: float = INSTANCE_THRESHOLD,
) -> TripletReport | None:
    """Export every video (skipping those already exported) and, with labels, score them with ivtmetrics."""
    out_dir = Path(out_dir)
    for sub in ("probs", "top", "pred"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir, name="videos", key="video")
    cfg = recognizer.cfg
    evaluator = TripletEvaluator(cfg.eval.protocol, cfg.eval.nan_policy, space=recognizer.space)
    for video in videos:
        probs_path = out_dir / "probs" / f"{video.name}.npy"
        if probs_path.is_file() and store.done(video.name):
            probs = np.load(probs_path).astype(np.float32)
        else:
            probs = recognizer.predict(video.features, video.name, mode=mode)
            atomic_write_text(out_dir / "top" / f"{video.name}.csv", _top_csv(probs))
            atomic_write_text(
                out_dir / "pred" / f"{video.name}.json",
                _prediction_json(video.name, probs, recognizer.space, threshold),
            )
            tmp = probs_path.with_suffix(".tmp.npy")
            np.save(tmp, probs.astype(np.float16))
            os.replace(tmp, probs_path)
            probs = np.load(probs_path).astype(np.float32)
            row = {"video": video.name, "frames": len(probs)}
            if evaluate and video.labels is not None:
                single = TripletEvaluator("cv", cfg.eval.nan_policy, fast=True, space=recognizer.space)
                single.add_video(video.name, probs, video.labels)
                row |= {k: v for k, v in single.compute().summary().items() if not np.isnan(v)}
            store.append(row)
        if evaluate and video.labels is not None:
            evaluator.add_video(video.name, probs, video.labels)
    return evaluator.compute() if evaluate and evaluator.videos else None
