"""Surgical action triplet recognition by iterative denoising (DiffTriplet), evaluated with ivtmetrics.

Entry points (see the README): :func:`make_cholect50_dataset` (synthetic data), :func:`train_fold`,
:func:`evaluate_run`, :class:`TripletRecognizer`, :class:`TripletEvaluator`, and the typer ``app`` in
:mod:`difftriplet.cli`. Names are imported lazily, so ``import difftriplet`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "(": "data",
    "AssociationGuidance": "guidance",
    "BackboneConfig": "features",
    "DiffTripletConfig": "config",
    "DiffTripletError": "errors",
    "DiffTripletModel": "model",
    "Manifest": "features",
    "RunResult": "train",
    "Split": "splits",
    "TripletEvaluator": "metrics",
    "TripletRecognizer": "predict",
    "TripletReport": "metrics",
    "TripletSpace": "labels",
    "canonical_ap": "metrics",
    "cholect45_crossval": "splits",
    "cholect50_challenge": "splits",
    "cholect50_crossval": "splits",
    "cholect50_rdv": "splits",
    "evaluate_run": "evaluate",
    "extract_features": "features",
    "finetune_backbone": "features",
    "make_cholect45_dataset": "synthetic",
    "make_cholect50_dataset": "synthetic",
    "predict_dataset": "predict",
    "preset": "config",
    "reference_video_ap": "metrics",
    "summarize_folds": "evaluate",
    "train_fold": "train",
    "training_losses": "losses",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'difftriplet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
