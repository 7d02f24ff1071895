"""Train one split (§2.7, §8): Adam on ``difflab_core.train``, periodic evaluation, model selection.

The run folder holds ``config.json``, ``train/`` (the core trainer's checkpoints and loss log),
``metrics.jsonl`` (one record per evaluation), ``best/`` and ``model/`` (diffusers folders with
safetensors), the test-set exports (``prediction/``, ``probs/``, ``segments/``) and ``report.json``.
Training is cut into chunks that end at evaluation steps; each chunk resumes the core trainer from
its last checkpoint, so an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader

from difflab_core.report import write_json
from difflab_core.store import ResultStore, fingerprint, write_run_config
from difflab_core.train import TrainConfig as CoreTrainConfig
from difflab_core.train import Trainer, find_latest_checkpoint

from .config import DiffActConfig
from .data import ItemSampler, MSTCNDataset, class_weights, read_bundle, single_item, validation_split
from .losses import training_losses
from .model import DiffActModel
from .predict import DiffActSegmenter, predict_dataset, save_segmenter


@dataclass
class RunResult:
    """What :func:`train_fold` returns."""

    out_dir: Path
    steps: int
    selection: str
    selected_step: int
    test_metrics: dict[str, dict[str, float]]
    """Pooled test metrics per segment-end convention (``mstcn``, ``asformer``)."""
    history: list[dict] = field(default_factory=list)
    """One record per evaluation: step and the selection-set metrics."""
    final_train_loss: float = float("nan")
    train_seconds: float = 0.0


def versions() -> dict[str, str]:
    import diffusers
    import numpy
    import scipy

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def total_steps(cfg: DiffActConfig, num_videos: int) -> int:
    """Optimiser steps of a run: ``max_steps`` or ``epochs * videos // accumulation`` (windows span epochs)."""
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, cfg.train.epochs * num_videos // cfg.train.accumulation)


def build_model(cfg: DiffActConfig) -> DiffActModel:
    """A freshly initialised model; the initialisation depends only on ``cfg.train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return DiffActModel.from_diffact_config(cfg)


def make_trainer(
    model: DiffActModel,
    train_set: MSTCNDataset,
    cfg: DiffActConfig,
    weights: torch.Tensor | None,
    out_dir: Path,
    max_steps: int,
    progress: bool = False,
    checkpoint_every: int = 0,
) -> Trainer:
    """The core trainer for the first ``max_steps`` steps: Adam, no clipping, one video per micro-step."""
    loader = DataLoader(
        train_set, batch_size=1, sampler=ItemSampler(len(train_set), cfg.train.seed), collate_fn=single_item
    )
    world = PartialState().num_processes  # one video per process per micro-step: ceil(4 / world) micro-steps
    core = CoreTrainConfig(
        max_steps=max_steps,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        grad_accum=math.ceil(cfg.train.accumulation / world),
        max_grad_norm=None,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        seed=cfg.train.seed,
        log_every=1,
        progress=progress,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def loss_fn(m: torch.nn.Module, item: dict, step: int) -> torch.Tensor:
        return training_losses(m, item, cfg, weights)["loss"]

    return Trainer(model, loss_fn, loader, core, out_dir, optimizer=optimizer)


def train_fold(
    cfg: DiffActConfig,
    data_root: str | os.PathLike[str],
    split: int | str,
    out_dir: str | os.PathLike[str],
    resume: bool = True,
    progress: bool = False,
) -> RunResult:
    """Train on ``train.split<split>`` (minus a validation hold-out), select a checkpoint, score the test set."""
    out_dir = Path(out_dir)
    settings = {"config": cfg.to_dict(), "split": str(split)}
    write_run_config(
        out_dir,
        {
            **settings,
            "data_root": str(data_root),
            "versions": versions(),
            "fingerprint": fingerprint(settings),
        },
        new_run=not resume,
    )
    root_names = read_bundle(Path(data_root) / cfg.data.dataset / "splits" / f"train.split{split}.bundle")
    if cfg.eval.selection == "val":
        train_names, val_names = validation_split(root_names, cfg.eval.val_fraction, cfg.train.seed)
    else:
        train_names, val_names = root_names, []
    train_set = MSTCNDataset(
        data_root, cfg.data.dataset, split, "train", cfg, train_names, seed=cfg.train.seed
    )
    test_set = MSTCNDataset(data_root, cfg.data.dataset, split, "test", cfg)
    select_set = {"val": None, "test": test_set, "last": None}[cfg.eval.selection]
    if cfg.eval.selection == "val" and val_names:
        select_set = MSTCNDataset(data_root, cfg.data.dataset, split, "train", cfg, val_names)
    weights = None
    if not cfg.loss.soft_label:
        weights = torch.from_numpy(class_weights([v.ids for v in train_set.videos], cfg.data.num_classes))

    model = build_model(cfg)
    steps = total_steps(cfg, len(train_set))
    every = max(1, cfg.train.eval_every * len(train_set) // cfg.train.accumulation)
    stops = sorted({*range(every, steps, every), steps}) if select_set is not None else [steps]
    history_store = ResultStore(out_dir, name="metrics", key="step")
    start = time.monotonic()
    best_avg, best_step, last_loss = -1.0, steps, float("nan")
    latest = find_latest_checkpoint(out_dir / "train")
    done_step = int(latest.name.split("-")[1]) if latest is not None else 0
    for stop in stops:
        if stop < done_step and (select_set is None or history_store.done(stop)):
            if select_set is not None:  # evaluated (and saved if best) before the interruption
                record = next(r for r in history_store.records() if r["step"] == stop)
                if record["AVG"] > best_avg:
                    best_avg, best_step = record["AVG"], stop
            continue
        result = make_trainer(model, train_set, cfg, weights, out_dir / "train", stop, progress).fit(
            resume=True
        )
        last_loss = result.last_loss
        if select_set is None:
            continue
        if not history_store.done(stop):
            segmenter = DiffActSegmenter(model, cfg, train_set.class_names, cfg.train.device)
            scores = predict_dataset(segmenter, select_set, out_dir / "selection" / f"step-{stop:08d}")
            history_store.append({"step": stop, "set": cfg.eval.selection, **scores[cfg.eval.segment_end]})
            model.train()
        record = next(r for r in history_store.records() if r["step"] == stop)
        if record["AVG"] > best_avg:
            best_avg, best_step = record["AVG"], stop
            save_segmenter(model, cfg, train_set.class_names, out_dir / "best")
    train_seconds = time.monotonic() - start

    final = save_segmenter(model, cfg, train_set.class_names, out_dir / "last")
    chosen = out_dir / "best" if select_set is not None and (out_dir / "best").is_dir() else final
    segmenter = DiffActSegmenter.from_pretrained(chosen, cfg.train.device)
    save_segmenter(segmenter.model, cfg, train_set.class_names, out_dir / "model")
    test_metrics = predict_dataset(segmenter, test_set, out_dir)
    history = history_store.records()
    report = {
        "selection": cfg.eval.selection,
        "selected_step": best_step if select_set is not None else steps,
        "selection_note": "epoch selected on the TEST set (the paper's protocol)"
        if cfg.eval.selection == "test"
        else f"selected on {cfg.eval.selection}",
        "steps": steps,
        "segment_end_default": cfg.eval.segment_end,
        "test_metrics": test_metrics,
        "history": history,
        "length_mismatch": cfg.data.length_mismatch,
        "versions": versions(),
    }
    write_json(out_dir / "report.json", report)
    return RunResult(
        out_dir,
        steps,
        cfg.eval.selection,
        report["selected_step"],
        test_metrics,
        history,
        last_loss,
        train_seconds,
    )
