"""Re-score a finished run from its exported probabilities, and summarise folds as mean ± std (§4.3)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from difflab_core.report import write_json

from .config import DiffTripletConfig
from .data import check_mapping, read_video_labels
from .errors import DiffTripletError
from .metrics import TripletEvaluator, TripletReport
from .splits import Split

__all__ = ["HEADLINE", "evaluate_run", "find_runs", "summarize_folds"]

HEADLINE = ("AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT", "Top5_IVT", "Top10_IVT", "Top20_IVT")


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise DiffTripletError(f"{run_dir} is not a difftriplet run folder (no config.json)")
    return json.loads(path.read_text())


def evaluate_run(
    run_dir: str | os.PathLike[str], protocol: str | None = None, nan_policy: str | None = None
) -> TripletReport:
    """Score ``probs/<VID>.npy`` of a run's test videos against the labels with ivtmetrics.

    ``protocol`` / ``nan_policy`` default to the run's config; the report is also written to
    ``evaluation-<protocol>-<policy>.json`` in the run folder.
    """
    run_dir = Path(run_dir)
    run = _run_config(run_dir)
    cfg = DiffTripletConfig.from_dict(run["config"])
    protocol = protocol or cfg.eval.protocol
    nan_policy = nan_policy or cfg.eval.nan_policy
    root = Path(run["data_root"])
    space = check_mapping(root)
    evaluator = TripletEvaluator(protocol, nan_policy, space=space)
    for video in Split.from_dict(run["split"]).test:
        probs_path = run_dir / "probs" / f"{video}.npy"
        if not probs_path.is_file():
            raise DiffTripletError(f"{probs_path} is missing; finish the run (train resumes) or run predict")
        probs = np.load(probs_path).astype(np.float64)
        labels = read_video_labels(root, run["variant"], video, space, cfg).y
        evaluator.add_video(video, probs, labels[: len(probs)])
    report = evaluator.compute()
    write_json(run_dir / f"evaluation-{protocol}-{nan_policy}.json", report.to_dict())
    return report


def find_runs(directory: str | os.PathLike[str]) -> list[Path]:
    """``directory`` itself if it is a finished run, else its sub-folders holding ``report.json``."""
    directory = Path(directory)
    if (directory / "report.json").is_file():
        return [directory]
    runs = (
        sorted(p for p in directory.iterdir() if (p / "report.json").is_file()) if directory.is_dir() else []
    )
    if not runs:
        raise DiffTripletError(f"{directory} holds no finished run (no report.json in it or its sub-folders)")
    return runs


def summarize_folds(runs: list[Path]) -> dict[str, dict[str, Any]]:
    """Per headline figure: ``mean``, ``std`` (population, over folds) and the per-fold values (×100)."""
    values: dict[str, list[float]] = {k: [] for k in HEADLINE}
    for run in runs:
        test = json.loads((run / "report.json").read_text())["test"]
        for key in HEADLINE:
            values[key].append(100.0 * float(test.get(key, float("nan"))))
    return {
        key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": v, "runs": [r.name for r in runs]}
        for key, v in values.items()
    }
