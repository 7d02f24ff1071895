"""``videolab demo``: action segmentation (diffact) and surgical triplets (difftriplet) on synthetic videos.

Stages, each cached under ``OUT/cache/<stage>-<fingerprint>/`` (`difflab_core.store.cached_stage`):

1. ``segment``: a synthetic MS-TCN-format dataset (features, per-frame labels, mapping, split bundles) →
   a short DiffAct training run on split 1 (validation-based checkpoint selection) → the MS-TCN metrics on the
   test videos and segment bar plots (ground truth above the prediction).
2. ``triplet``: a synthetic CholecT50-format dataset → a short DiffTriplet run → ivtmetrics average precision
   for instruments, verbs, targets and their pairs and triplets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from difflab_core.cli import status


@dataclass
class DemoConfig:
    """What the demo runs; ``quick`` fits in about two minutes on two CPU cores."""

    out: str = "videolab-demo"
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    segment_videos: int = 10
    segment_test_videos: int = 4
    segment_steps: int = 600
    triplet_steps: int = 1200
    plots: int = 2

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> DemoConfig:
        base = cls(quick=True, segment_steps=150, triplet_steps=400) if quick else cls()
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the demo; returns ``{"figures", "stages"}`` and writes the report into ``cfg.out``."""
    from difflab_core.store import cached_stage

    cache = Path(cfg.out) / "cache"
    seg_cfg = {k: getattr(cfg, k) for k in ("seed", "segment_videos", "segment_test_videos", "segment_steps")}
    with status("action segmentation: synthetic MS-TCN data, DiffAct training", progress):
        segment = cached_stage(cache, "segment", seg_cfg | {"plots": cfg.plots}, lambda d: _segment(cfg, d))
    with status("surgical triplets: synthetic CholecT50, DiffTriplet training", progress):
        triplet = cached_stage(
            cache, "triplet", {"seed": cfg.seed, "steps": cfg.triplet_steps}, lambda d: _triplet(cfg, d)
        )
    stages = {"segment": segment, "triplet": triplet}
    figures = figures_from(stages, cfg)
    from .demo_report import write_report

    write_report(Path(cfg.out), cfg, stages, figures)
    return {"figures": figures, "stages": stages}


def _segment(cfg: DemoConfig, stage: Path) -> dict[str, Any]:
    from diffact import (
        make_mstcn_dataset,
        preset,
        read_bundle,
        read_labels,
        read_mapping,
        save_segment_plot,
        train_fold,
    )
    from diffact.metrics import read_prediction

    data = make_mstcn_dataset(
        stage / "data",
        cfg.segment_videos,
        4,
        16,
        cfg.seed,
        num_test=cfg.segment_test_videos,
        frames=(120, 120),
    )
    model_cfg = preset("tiny").with_updates(
        data={"dataset": data.name},
        train={"lr": 2e-3, "max_steps": cfg.segment_steps, "seed": cfg.seed, "device": cfg.device},
    )
    result = train_fold(model_cfg, stage / "data", 1, stage / "run")
    names = read_mapping(data / "mapping.txt")
    test_videos = sorted(read_bundle(data / "splits" / "test.split1.bundle"))
    plots = []
    for video in test_videos[: cfg.plots]:  # train_fold exported the selected model's test predictions
        truth = read_labels(data / "groundTruth" / f"{video}.txt")
        pred = read_prediction(stage / "run" / "prediction" / f"{video}.txt")
        path = save_segment_plot(
            stage / f"segments_{video}.png", [("ground truth", truth), ("DiffAct", pred)], names
        )
        plots.append({"video": video, "plot": path.name, "truth": truth, "prediction": pred})
    return {
        "steps": result.steps,
        "selected_step": result.selected_step,
        "selection": result.selection,
        "train_seconds": result.train_seconds,
        "test_metrics": result.test_metrics,
        "test_videos": test_videos,
        "classes": names,
        "plots": plots,
        "stage_dir": str(stage),
    }


TRIPLET_SPLIT = {"train": ("VID79", "VID02", "VID51", "VID80"), "val": ("VID32",), "test": ("VID05", "VID31")}
"""The synthetic CholecT50 videos of the demo's fold: validation-based selection, two test videos."""


def _triplet(cfg: DemoConfig, stage: Path) -> dict[str, Any]:
    from difftriplet.config import preset
    from difftriplet.splits import Split
    from difftriplet.synthetic import make_cholect50_dataset
    from difftriplet.train import train_fold

    videos = tuple(v for part in TRIPLET_SPLIT.values() for v in part)
    data = make_cholect50_dataset(
        stage / "data", videos=videos, frames=(120, 120), seed=cfg.seed, write_frames=False
    )
    model_cfg = preset("tiny").with_updates(
        train={"lr": 2e-3, "max_steps": cfg.triplet_steps, "seed": cfg.seed, "device": cfg.device}
    )
    split = Split(TRIPLET_SPLIT["train"], TRIPLET_SPLIT["val"], TRIPLET_SPLIT["test"])
    result = train_fold(model_cfg, data.root, "cholect50", 1, "synthetic", stage / "run", split=split)
    frames = sum(data.frames[v] for v in videos)
    return {
        "ap": {k: result.test_metrics[k] for k in ("AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT")},
        "topk": {k: v for k, v in result.test_metrics.items() if k.startswith("Top")},
        "steps": result.steps,
        "selected_step": result.selected_step,
        "split": {k: list(v) for k, v in TRIPLET_SPLIT.items()},
        "run_dir": str(stage / "run"),
        "data_dir": str(data.root),
        "description": (
            f"A synthetic CholecT50-format dataset ({len(videos)} videos, {frames} frames, features F = "
            f"{data.feature_dim}; labels in the official 15-item JSON format). DiffTriplet (tiny preset) trained "
            f"for {result.steps} steps on {len(TRIPLET_SPLIT['train'])} videos, the checkpoint of step "
            f"{result.selected_step} selected on the validation video, and the {len(TRIPLET_SPLIT['test'])} test "
            "videos scored with ivtmetrics (video-wise mean AP, CAMMA cross-validation protocol):"
        ),
    }


def figures_from(stages: dict[str, Any], cfg: DemoConfig) -> dict[str, Any]:
    """The report's figures, read from the stage results only (so the test can recompute them)."""
    segment, triplet = stages["segment"], stages["triplet"]
    return {
        "mode": "quick" if cfg.quick else "full",
        "segment": {
            "train_steps": segment["steps"],
            "selected_step": segment["selected_step"],
            **{k: segment["test_metrics"]["mstcn"][k] for k in ("Acc", "Edit", "F1@10", "F1@25", "F1@50")},
        },
        "triplet": {k: triplet["ap"][k] for k in ("AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT")},
    }
