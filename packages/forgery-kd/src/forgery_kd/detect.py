"""The deployable detector: an exported student with its preprocessing, face cropping and threshold.

``ForgeryDetector.load(dir)`` reads what :func:`~forgery_kd.models.export_student` wrote;
``predict_images`` returns ``P(fake)`` per image, ``predict_video`` samples frames evenly and flags the
video when the mean score reaches the stored threshold: the one :func:`~forgery_kd.calibrate.calibrate_detector`
picked on held-out scores, or 0.5 when the detector was never calibrated (``calibration`` is then None;
``threshold_source`` says which). ``screenlab`` uses this class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from difflab_core.device import resolve_device
from difflab_core.loading import file_sha256

from .data import load_rgb, to_tensor
from .errors import ForgeryKDError
from .faces import FaceCropper, extract_frames
from .models import WEIGHTS_FILE, Student, load_detector

__all__ = ["UNCALIBRATED_THRESHOLD", "ForgeryDetector", "VideoResult"]

logger = logging.getLogger(__name__)
UNCALIBRATED_THRESHOLD = 0.5

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class VideoResult:
    """Per-frame ``P(fake)``, their mean, whether the video is flagged and the fraction of frames with a face."""

    frame_scores: list[float]
    mean_score: float
    flagged: bool
    face_fraction: float
    faces_found: list[bool] = field(default_factory=list)


class ForgeryDetector:
    """Student + preprocessing. Use :meth:`load`; ``face_detector`` overrides the stored one.

    ``path`` is the folder it was loaded from (None when built in memory); ``calibration`` the stored
    threshold calibration (a dict of :class:`~forgery_kd.calibrate.ThresholdCalibration` fields, or None).
    """

    def __init__(
        self,
        model: Student,
        config: dict[str, Any],
        *,
        device: str = "auto",
        face_detector: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.config = config
        self.path = None if path is None else Path(path)
        self.img_size = int(config.get("img_size", 256))
        self.calibration: dict[str, Any] | None = config.get("calibration")
        self.threshold = float(config.get("threshold", UNCALIBRATED_THRESHOLD))
        self.temperature = float(config.get("temperature", 1.0))
        detector = face_detector or config.get("face_detector", "none")
        self.cropper = FaceCropper(detector, size=self.img_size)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **kwargs: Any) -> ForgeryDetector:
        """The detector exported to ``directory`` (``config.json`` + ``model.safetensors``)."""
        model, config = load_detector(directory)
        detector = cls(model, config, path=directory, **kwargs)
        if detector.calibration is None:
            logger.info(
                "%s: threshold %g is the uncalibrated default; `forgery-kd calibrate` picks one on a held-out "
                "split for a target false-positive rate",
                directory,
                detector.threshold,
            )
        return detector

    @property
    def threshold_source(self) -> str:
        """One line saying where ``threshold`` comes from."""
        c = self.calibration
        if c is None:
            return f"uncalibrated default {self.threshold:g}"
        where = f" ({c['split']})" if c.get("split") else ""
        return (
            f"calibrated for FPR <= {c['target_fpr']:.0%} on {c['n_real']} real / {c['n_fake']} fake held-out "
            f"frames{where}: FPR {c['fpr']:.3f}, TPR {c['tpr']:.3f}"
        )

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the loaded weights file (None when built in memory)."""
        return None if self.path is None else file_sha256(self.path / WEIGHTS_FILE)

    @torch.no_grad()
    def _score(self, images: list[Image.Image], batch_size: int = 32) -> tuple[list[float], list[bool]]:
        crops = [self.cropper(im) for im in images]
        scores: list[float] = []
        for start in range(0, len(crops), batch_size):
            x = torch.stack([to_tensor(c.image, self.img_size) for c in crops[start : start + batch_size]])
            logits = self.model(x.to(self.device)).logits.float() / self.temperature
            scores.extend(torch.softmax(logits, dim=1)[:, 1].cpu().tolist())
        return scores, [c.face_found for c in crops]

    def predict_images(self, images: Sequence[str | os.PathLike[str] | Image.Image]) -> list[float]:
        """``P(fake)`` for each image (paths or PIL images)."""
        pil = [im if isinstance(im, Image.Image) else load_rgb(im) for im in images]
        if not pil:
            raise ForgeryKDError("predict_images: no images given")
        return self._score(pil)[0]

    def predict_video(self, path: str | os.PathLike[str], n: int = 32) -> VideoResult:
        """Score ``n`` evenly spaced frames of a video file."""
        scores, faces = self._score(extract_frames(path, n))
        mean = sum(scores) / len(scores)
        return VideoResult(scores, mean, mean >= self.threshold, sum(faces) / len(faces), faces)

    def predict_folder(self, folder: str | os.PathLike[str]) -> dict[str, float | VideoResult]:
        """Every image (``P(fake)``) and video (:class:`VideoResult`) directly inside ``folder``, by file name."""
        root = Path(folder)
        if not root.is_dir():
            raise ForgeryKDError(f"{root} is not a folder")
        out: dict[str, float | VideoResult] = {}
        files = sorted(p for p in root.iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            out.update(zip((p.name for p in images), self.predict_images(images), strict=True))
        for p in files:
            if p.suffix.lower() in VIDEO_SUFFIXES:
                out[p.name] = self.predict_video(p)
        if not out:
            raise ForgeryKDError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos")
        return out
