"""Teacher and student networks, all built from timm by registry name.

* :class:`DualBranchTeacher` — an RGB (spatial) branch and a frequency branch (a timm backbone on a
  :mod:`forgery_kd.freq` representation), fused F3-Net style: ReLU → GAP each → concat → dropout 0.2 →
  Linear(2); plus one auxiliary Linear(2) head per branch.
* :class:`Student` — one RGB timm classifier with a 2-class head; ``feat = forward_features(x)``.
* :func:`export_student` / :func:`load_detector`, :func:`save_teacher` / :func:`load_teacher` —
  safetensors weights plus ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab_core.train import load_weights, save_weights

from .errors import ForgeryKDError, core_errors
from .freq import make_freq_transform

__all__ = [
    "DualBranchTeacher",
    "Student",
    "StudentOutput",
    "TeacherOutput",
    "count_parameters",
    "create_backbone",
    "export_student",
    "load_detector",
    "load_teacher",
    "save_teacher",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def create_backbone(
    name: str,
    in_chans: int = 3,
    weights: str | os.PathLike[str] | None = None,
    *,
    num_classes: int = 0,
    adapt_first_conv: bool = False,
) -> nn.Module:
    """A timm model by registry name, with random weights or weights from a local file.

    Args:
        name: timm registry name (``legacy_xception``, ``mobilenetv3_large_100``, ``test_resnet``…).
        in_chans: input channels; a local RGB checkpoint is adapted to other counts (timm tiles the
            first-conv weights and rescales by ``3 / in_chans``, as F3-Net does) only with
            ``adapt_first_conv=True``.
        weights: a local ``.pth``/``.bin``/``.safetensors`` file (timm's ``pretrained_cfg_overlay``);
            nothing is ever downloaded.
        num_classes: classifier outputs (0 = no classifier; use ``forward_features``).
    """
    if name not in timm.list_models():
        raise ForgeryKDError(f"backbone {name!r} is not a timm model name; see timm.list_models()")
    if weights is None:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    path = Path(weights)
    if not path.is_file():
        raise ForgeryKDError(f"backbone weights {path} do not exist; give a local .pth or .safetensors file")
    if in_chans != 3 and not adapt_first_conv:
        raise ForgeryKDError(
            f"backbone weights {path} are for RGB but in_chans={in_chans}; pass adapt_first_conv=True "
            "to tile the first-conv weights"
        )
    try:
        return timm.create_model(
            name,
            pretrained=True,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained_cfg_overlay={"file": str(path)},
        )
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise ForgeryKDError(f"backbone weights {path} do not fit {name}: {err}") from err


@dataclass
class TeacherOutput:
    """Teacher logits ``[B, 2]`` (fused and per branch) and last-stage maps ``[B, C, h, w]``.

    A branch the teacher does not use (``branch_only``) has ``None`` for its logits and features.
    """

    logits: Tensor
    logits_spa: Tensor | None
    logits_freq: Tensor | None
    feat_spa: Tensor | None
    feat_freq: Tensor | None


class DualBranchTeacher(nn.Module):
    """RGB + frequency two-stream teacher (F3-Net / DeepfakeBench style).

    Input: ``[B, 3, img_size, img_size]`` normalised with mean = std = 0.5.
    """

    def __init__(
        self,
        spatial: str = "legacy_xception",
        frequency: str = "legacy_xception",
        freq_transform: str = "fad",
        img_size: int = 256,
        aux_heads: bool = True,
        *,
        use: Literal["both", "spatial", "frequency"] = "both",
        spatial_weights: str | None = None,
        frequency_weights: str | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if use not in ("both", "spatial", "frequency"):
            raise ForgeryKDError(f"use={use!r}: choose 'both', 'spatial' or 'frequency'")
        self.config: dict[str, Any] = {
            "spatial": spatial,
            "frequency": frequency,
            "freq_transform": freq_transform,
            "img_size": img_size,
            "aux_heads": aux_heads,
            "use": use,
            "dropout": dropout,
        }
        if spatial_weights is None and frequency_weights is None:
            logger.info(
                "teacher backbones start from random weights; paper-level numbers need pretrained ones"
            )
        self.spatial = self.frequency = self.freq_transform = None
        width = 0
        if use in ("both", "spatial"):
            self.spatial = create_backbone(spatial, 3, spatial_weights)
            width += self.spatial.num_features
        if use in ("both", "frequency"):
            self.freq_transform = make_freq_transform(freq_transform, img_size)
            self.frequency = create_backbone(
                frequency, self.freq_transform.out_channels, frequency_weights, adapt_first_conv=True
            )
            width += self.frequency.num_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, 2)
        self.aux_spa = self.aux_freq = None
        if aux_heads and use == "both":
            self.aux_spa = nn.Linear(self.spatial.num_features, 2)
            self.aux_freq = nn.Linear(self.frequency.num_features, 2)

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of the last-stage map of each branch in use (``spa``, ``freq``)."""
        out = {}
        if self.spatial is not None:
            out["spa"] = self.spatial.num_features
        if self.frequency is not None:
            out["freq"] = self.frequency.num_features
        return out

    def branch_only(self, which: Literal["spatial", "frequency"]) -> DualBranchTeacher:
        """A fresh single-branch teacher with the same configuration (for the ablations)."""
        if which not in ("spatial", "frequency"):
            raise ForgeryKDError(f"branch_only({which!r}): use 'spatial' or 'frequency'")
        cfg = {k: v for k, v in self.config.items() if k != "use"}
        return DualBranchTeacher(**cfg, use=which)

    def forward(self, x: Tensor) -> TeacherOutput:
        feat_spa = self.spatial.forward_features(x) if self.spatial is not None else None
        feat_freq = None
        if self.frequency is not None:
            feat_freq = self.frequency.forward_features(self.freq_transform(x))
        pooled = {
            name: F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1)
            for name, f in (("spa", feat_spa), ("freq", feat_freq))
            if f is not None
        }
        logits = self.fc(self.dropout(torch.cat(list(pooled.values()), dim=1)))
        logits_spa = self.aux_spa(pooled["spa"]) if self.aux_spa is not None else None
        logits_freq = self.aux_freq(pooled["freq"]) if self.aux_freq is not None else None
        return TeacherOutput(logits, logits_spa, logits_freq, feat_spa, feat_freq)


@dataclass
class StudentOutput:
    """Student logits ``[B, 2]`` and its last-stage map ``feat`` ``[B, C, h, w]``."""

    logits: Tensor
    feat: Tensor


class Student(nn.Module):
    """A single RGB timm classifier (``num_classes=2``); ``backbone`` is its timm name."""

    def __init__(self, backbone: str = "mobilenetv3_large_100", weights: str | None = None) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"backbone": backbone}
        self.net = create_backbone(backbone, 3, weights, num_classes=2)

    @property
    def num_features(self) -> int:
        return self.net.num_features

    def features(self, x: Tensor) -> Tensor:
        """``h_S = forward_features(x)`` ``[B, C, h, w]``."""
        return self.net.forward_features(x)

    def head(self, feat: Tensor) -> Tensor:
        """Logits ``[B, 2]`` from a feature map."""
        return self.net.forward_head(feat)

    def forward(self, x: Tensor) -> StudentOutput:
        feat = self.features(x)
        return StudentOutput(self.head(feat), feat)


def _write_model(model: nn.Module, directory: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _read_config(directory: str | os.PathLike[str], kind: str) -> tuple[Path, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ForgeryKDError(f"{path} does not exist; {directory} is not a saved forgery-kd {kind}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ForgeryKDError(f"{path} is not valid JSON: {err}") from err
    if config.get("kind") != kind:
        raise ForgeryKDError(f"{path}: kind is {config.get('kind')!r}, expected {kind!r}")
    return path, config


def save_teacher(teacher: DualBranchTeacher, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for a teacher."""
    return _write_model(teacher, directory, {"kind": "teacher", **teacher.config})


def load_teacher(directory: str | os.PathLike[str]) -> DualBranchTeacher:
    """Read a teacher written by :func:`save_teacher` (eval mode)."""
    path, config = _read_config(directory, "teacher")
    try:
        teacher = DualBranchTeacher(
            **{
                k: config[k]
                for k in ("spatial", "frequency", "freq_transform", "img_size", "aux_heads", "use")
            }
        )
    except KeyError as err:
        raise ForgeryKDError(f"{path}: missing key {err}") from err
    with core_errors(str(directory)):
        load_weights(teacher, Path(directory) / WEIGHTS_FILE)
    return teacher.eval()


def export_student(
    model: Student, directory: str | os.PathLike[str], *, img_size: int = 256, **meta: Any
) -> Path:
    """Write the deployable detector: student weights (projectors are not part of it) and ``config.json``.

    ``meta`` adds fields such as ``threshold`` (P(fake) above which a video is flagged, default 0.5),
    ``temperature`` (logit calibration, default 1.0) and ``face_detector``.
    """
    config = {
        "kind": "detector",
        "backbone": model.config["backbone"],
        "img_size": img_size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "threshold": 0.5,
        "temperature": 1.0,
        "face_detector": "none",
        **meta,
    }
    return _write_model(model, directory, config)


def load_detector(directory: str | os.PathLike[str]) -> tuple[Student, dict[str, Any]]:
    """Read an exported student: ``(model in eval mode, config dict)``."""
    path, config = _read_config(directory, "detector")
    if "backbone" not in config:
        raise ForgeryKDError(f"{path}: missing key 'backbone'")
    model = Student(config["backbone"])
    with core_errors(str(directory)):
        load_weights(model, Path(directory) / WEIGHTS_FILE)
    return model.eval(), config
