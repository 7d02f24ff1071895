"""forgery-kd: two-in-one knowledge distillation for face forgery detection.

A dual-branch RGB + frequency teacher (timm backbones) is distilled into one small RGB student through
dedicated per-branch projectors and RotoGrad-style gradient homogenization. Public names are imported
lazily so that ``forgery-kd version`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ForgeryKDError": "errors",
    "BlockDCTTransform": "freq",
    "FADTransform": "freq",
    "PhaseTransform": "freq",
    "SRMTransform": "freq",
    "dct_matrix": "freq",
    "make_freq_transform": "freq",
    "DualBranchTeacher": "models",
    "Student": "models",
    "StudentOutput": "models",
    "TeacherOutput": "models",
    "create_backbone": "models",
    "count_parameters": "models",
    "export_student": "models",
    "load_detector": "models",
    "load_teacher": "models",
    "save_teacher": "models",
    "ConvProjector": "projectors",
    "LinearProjector": "projectors",
    "make_projectors": "projectors",
    "TwoInOneConfig": "losses",
    "TwoInOneLoss": "losses",
    "attention_transfer": "losses",
    "feature_distance": "losses",
    "kd_logits": "losses",
    "GradientHomogenizer": "homogenize",
    "DEFAULT_LABELS": "data",
    "DeepfakeBenchDataset": "data",
    "FrameCSVDataset": "data",
    "FaceCropper": "faces",
    "extract_frames": "faces",
    "make_synthetic_forgeries": "synthetic",
    "prepare_celebdf": "prepare",
    "prepare_faceforensics": "prepare",
    "average_precision": "metrics",
    "eer": "metrics",
    "frame_metrics": "metrics",
    "per_type_metrics": "metrics",
    "video_metrics": "metrics",
    "DataConfig": "train",
    "DistillConfig": "train",
    "TeacherTrainConfig": "train",
    "distill": "train",
    "distill_variant": "train",
    "evaluate": "train",
    "train_teacher": "train",
    "ThresholdCalibration": "calibrate",
    "calibrate_detector": "calibrate",
    "calibrate_threshold": "calibrate",
    "write_calibration": "calibrate",
    "ForgeryDetector": "detect",
    "VideoResult": "detect",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'forgery_kd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
