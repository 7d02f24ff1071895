"""DiffAct: temporal action segmentation by denoising diffusion (Liu et al., ICCV 2023).

Heavy modules (torch, diffusers) load on first use of a name, so ``import diffact`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DiffActConfig": "config",
    "preset": "config",
    "DiffActError": "errors",
    "DiffActModel": "model",
    "MSTCNDataset": "data",
    "read_mapping": "data",
    "read_bundle": "data",
    "read_labels": "data",
    "load_features": "data",
    "boundary_target": "data",
    "class_weights": "data",
    "training_losses": "losses",
    "apply_condition_mask": "masks",
    "median_smooth": "postprocess",
    "restore_full_rate": "postprocess",
    "purge": "postprocess",
    "segments": "postprocess",
    "edit_score": "metrics",
    "f_score_counts": "metrics",
    "SegmentationMetrics": "metrics",
    "evaluate_dirs": "metrics",
    "DiffActSegmenter": "predict",
    "Prediction": "predict",
    "predict_dataset": "predict",
    "train_fold": "train",
    "RunResult": "train",
    "render_segments": "viz",
    "save_segment_plot": "viz",
    "make_mstcn_dataset": "synthetic",
    "load_official_checkpoint": "convert",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
