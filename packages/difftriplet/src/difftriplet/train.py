"""Train one fold (§2.5, §2.8, §8.1): Adam on ``difflab_core.train``, periodic validation, model selection.

The run folder holds ``config.json``, ``train/`` (the core trainer's checkpoints and loss log),
``metrics.jsonl`` (one record per evaluation), ``best/`` and ``model/`` (diffusers folders with
safetensors), the test-set exports (``probs/``, ``top/``, ``pred/``, ``videos.jsonl``) and
``report.json``. Training runs in chunks ending at evaluation steps; each chunk resumes the core trainer
from its last checkpoint, so an interrupted run continues exactly where it stopped.

Selection: ``val`` (default) takes the checkpoint with the best validation AP_IVT (fast evaluator, the
official CAMMA validation videos); ``test-window`` reproduces the fork (best mean test AP_IVT over two
consecutive evaluations; labelled as test-selected); ``last`` takes the final weights.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader

from difflab_core.report import write_json
from difflab_core.store import ResultStore, fingerprint, write_run_config
from difflab_core.train import TrainConfig as CoreTrainConfig
from difflab_core.train import Trainer, find_latest_checkpoint

from .config import DiffTripletConfig
from .data import ItemSampler, TripletFeatureDataset, single_item
from .errors import DiffTripletError
from .losses import training_losses
from .metrics import TripletEvaluator, versions
from .model import DiffTripletModel
from .predict import TripletRecognizer, build_model, predict_dataset, save_recognizer
from .splits import Split, cholect45_crossval, cholect50_challenge, cholect50_crossval, cholect50_rdv

__all__ = ["RunResult", "evaluate_videos", "fold_split", "make_trainer", "total_steps", "train_fold"]


@dataclass
class RunResult:
    """What :func:`train_fold` returns."""

    out_dir: Path
    steps: int
    selection: str
    selected_step: int
    test_metrics: dict[str, float]
    """Headline test figures (fractions): AP_I … AP_IVT, Top-k, ``*_from_triplets``."""
    history: list[dict] = field(default_factory=list)
    final_train_loss: float = float("nan")
    train_seconds: float = 0.0


def fold_split(variant: str, fold: int | str) -> Split:
    """The official split of ``fold``: 1–5 (cross-validation), ``challenge`` or ``rdv``."""
    if str(fold) == "challenge":
        return cholect50_challenge()
    if str(fold) == "rdv":
        return cholect50_rdv()
    try:
        k = int(fold)
    except ValueError as err:
        raise DiffTripletError(f"fold={fold!r}: use 1..5, 'challenge' or 'rdv'") from err
    return cholect45_crossval(k) if variant == "cholect45" else cholect50_crossval(k)


def _feature_source(data_root: Path, features: str | os.PathLike[str], fold: int | str) -> str | Path:
    """``<data_root>/features/<name>-k<fold>`` when it exists (per-fold features), else ``features`` itself."""
    per_fold = data_root / "features" / f"{features}-k{fold}"
    return per_fold if per_fold.is_dir() else features


def total_steps(cfg: DiffTripletConfig, num_videos: int) -> int:
    """Optimiser steps of a run: ``max_steps`` or ``epochs × videos`` (one video per step)."""
    return cfg.train.max_steps if cfg.train.max_steps is not None else max(1, cfg.train.epochs * num_videos)


def make_trainer(
    model: DiffTripletModel,
    train_set: TripletFeatureDataset,
    cfg: DiffTripletConfig,
    out_dir: str | os.PathLike[str],
    max_steps: int,
    progress: bool = False,
    checkpoint_every: int = 0,
) -> Trainer:
    """The core trainer for the first ``max_steps`` steps: Adam, no clipping, one video per step."""
    loader = DataLoader(
        train_set, batch_size=1, sampler=ItemSampler(len(train_set), cfg.train.seed), collate_fn=single_item
    )
    if PartialState().num_processes > 1:
        raise DiffTripletError(
            "one video per step: launch one process per fold (accelerate launch --num_processes 1)"
        )
    core = CoreTrainConfig(
        max_steps=max_steps,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=None,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        seed=cfg.train.seed,
        log_every=1,
        progress=progress,
    )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=True
    )
    pos_weight = None
    if cfg.train.class_weighting:
        pos_weight = torch.from_numpy(train_set.positive_weights())

    def loss_fn(m: torch.nn.Module, item: dict, step: int) -> torch.Tensor:
        return training_losses(m, item, cfg, pos_weight)["loss"]

    return Trainer(model, loss_fn, loader, core, out_dir, optimizer=optimizer)


def evaluate_videos(
    model: DiffTripletModel, cfg: DiffTripletConfig, dataset: TripletFeatureDataset, fast: bool = True
) -> dict[str, float]:
    """Headline figures of ``model`` on every video of ``dataset`` (fast evaluator by default)."""
    recognizer = TripletRecognizer(model, cfg, cfg.train.device)
    evaluator = TripletEvaluator(cfg.eval.protocol, cfg.eval.nan_policy, fast=fast, space=dataset.space)
    for video in dataset.videos:
        evaluator.add_video(video.name, recognizer.predict(video.features, video.name), video.labels)
    model.train()
    return evaluator.compute().summary()


def train_fold(
    cfg: DiffTripletConfig,
    data_root: str | os.PathLike[str],
    variant: str,
    fold: int | str,
    features: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    resume: bool = True,
    *,
    split: Split | None = None,
    progress: bool = False,
) -> RunResult:
    """Train on a fold's training videos, select a checkpoint, export and score the test videos.

    Args:
        cfg: the run configuration (e.g. :func:`difftriplet.config.preset`).
        data_root: a CholecT50 / CholecT45 root.
        variant: ``"cholect50"`` or ``"cholect45"``.
        fold: 1–5, ``"challenge"`` or ``"rdv"``; names the split unless ``split`` is given.
        features: ``<data_root>/features/<features>-k<fold>``, ``<data_root>/features/<features>`` or a folder.
        out_dir: the run folder; resumed when ``resume`` and its config matches.
        split: explicit videos (tests, custom protocols).
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    split = split or fold_split(variant, fold)
    source = _feature_source(data_root, features, fold)
    settings = {"config": cfg.to_dict(), "variant": variant, "fold": str(fold), "split": split.to_dict()}
    write_run_config(
        out_dir,
        {
            **settings,
            "data_root": str(data_root),
            "features": str(source),
            "versions": versions(),
            "fingerprint": fingerprint(settings),
        },
        new_run=not resume,
    )
    train_set = TripletFeatureDataset(data_root, variant, split, "train", source, cfg, seed=cfg.train.seed)
    test_set = TripletFeatureDataset(data_root, variant, split, "test", source, cfg)
    if not test_set.videos or not train_set.videos:
        raise DiffTripletError(f"the split needs training and test videos, got {split.to_dict()}")
    selection = cfg.eval.selection
    select_set = None
    if selection == "val":
        if not split.val:
            raise DiffTripletError(
                "selection='val' needs validation videos in the split; use selection='last'"
            )
        select_set = TripletFeatureDataset(data_root, variant, split, "val", source, cfg)
    elif selection == "test-window":
        select_set = test_set

    model = build_model(cfg)
    steps = total_steps(cfg, len(train_set))
    every = max(1, cfg.train.eval_every * len(train_set))
    stops = sorted({*range(every, steps, every), steps}) if select_set is not None else [steps]
    history_store = ResultStore(out_dir, name="metrics", key="step")
    start = time.monotonic()
    best_score, best_step, last_loss, previous = -1.0, steps, float("nan"), None
    latest = find_latest_checkpoint(out_dir / "train")
    done_step = int(latest.name.split("-")[1]) if latest is not None else 0
    for stop in stops:
        if stop < done_step and (select_set is None or history_store.done(stop)):
            if select_set is not None:
                record = next(r for r in history_store.records() if r["step"] == stop)
                score = _selection_score(record["AP_IVT"], previous, selection)
                previous = record["AP_IVT"]
                if score > best_score:
                    best_score, best_step = score, stop
            continue
        result = make_trainer(model, train_set, cfg, out_dir / "train", stop, progress).fit(resume=True)
        last_loss = result.last_loss
        if select_set is None:
            continue
        if not history_store.done(stop):
            figures = evaluate_videos(model, cfg, select_set)
            history_store.append(
                {"step": stop, "set": "test" if selection == "test-window" else "val", **figures}
            )
        record = next(r for r in history_store.records() if r["step"] == stop)
        score = _selection_score(record["AP_IVT"], previous, selection)
        previous = record["AP_IVT"]
        if score > best_score:
            best_score, best_step = score, stop
            save_recognizer(model, cfg, out_dir / "best")
    train_seconds = time.monotonic() - start

    last = save_recognizer(model, cfg, out_dir / "last")
    chosen = out_dir / "best" if select_set is not None and (out_dir / "best").is_dir() else last
    recognizer = TripletRecognizer.from_pretrained(chosen, cfg.train.device)
    save_recognizer(recognizer.model, cfg, out_dir / "model")
    report = predict_dataset(recognizer, test_set.videos, out_dir)
    history = history_store.records()
    selected = best_step if select_set is not None else steps
    note = {
        "val": "selected by validation AP_IVT (official CAMMA validation videos)",
        "test-window": "selected on the TEST set (fork protocol: best mean AP_IVT of 2 consecutive evaluations)",
        "last": "final weights",
    }[selection]
    write_json(
        out_dir / "report.json",
        {
            "variant": variant,
            "fold": str(fold),
            "selection": selection,
            "selection_note": note,
            "selected_step": selected,
            "steps": steps,
            "test": report.to_dict() if report is not None else None,
            "history": history,
            "final_train_loss": last_loss,
            "versions": versions() | {"torch": torch.__version__},
        },
    )
    figures = report.summary() if report is not None else {}
    return RunResult(out_dir, steps, selection, selected, figures, history, last_loss, train_seconds)


def _selection_score(value: float, previous: float | None, selection: str) -> float:
    value = -1.0 if np.isnan(value) else value
    if selection != "test-window" or previous is None or np.isnan(previous):
        return value
    return (value + previous) / 2
