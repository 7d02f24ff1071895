"""The ``diffact`` command line: train, evaluate, predict, plot, convert, make-synthetic, version.

Bad input prints one ``error: ...`` line and exits with status 2. Multi-GPU training:
``accelerate launch -m diffact.cli train ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from diffact import __version__
from difflab_core.cli import one_line_errors

from .errors import DiffActError

app = typer.Typer(
    add_completion=False,
    help="DiffAct: temporal action segmentation by denoising diffusion.",
    no_args_is_help=True,
)


def _config(preset_name: str, config_file: Path | None, **sections: dict[str, Any]) -> Any:
    from .config import DiffActConfig, preset

    cfg = DiffActConfig.load(config_file) if config_file else preset(preset_name)
    return cfg.with_updates(**{k: v for k, v in sections.items() if v})


@app.command()
@one_line_errors(exit_code=2)
def train(
    data_root: Path = typer.Option(
        ..., "--data-root", help="folder holding <dataset>/features, groundTruth, ..."
    ),
    out: Path = typer.Option(..., "--out", help="run folder (resumed if it exists)"),
    preset_name: str = typer.Option("gtea", "--preset", help="gtea, 50salads, breakfast or tiny"),
    split: str = typer.Option("1", "--split", help="split number k of {train,test}.split<k>.bundle"),
    config_file: Path | None = typer.Option(
        None, "--config", help="a DiffActConfig JSON instead of --preset"
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="dataset folder name (default: the preset's)"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
    selection: str | None = typer.Option(None, "--selection", help="val (default), test (paper) or last"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda:N"),
    new_run: bool = typer.Option(False, "--new-run", help="move an existing run aside and start over"),
) -> None:
    """Train one split, select a checkpoint, export and score the test set."""
    from .train import train_fold

    cfg = _config(
        preset_name,
        config_file,
        data={"dataset": dataset} if dataset else {},
        train={k: v for k, v in {"max_steps": max_steps, "device": device}.items() if v is not None},
        eval={"selection": selection} if selection else {},
    )
    result = train_fold(cfg, data_root, split, out, resume=not new_run, progress=True)
    typer.echo(
        json.dumps({"out": str(result.out_dir), "steps": result.steps, **result.test_metrics}, indent=2)
    )


@app.command()
@one_line_errors(exit_code=2)
def evaluate(
    run: Path | None = typer.Option(None, "--run", help="a run folder, or a folder of split runs to average"),
    gt_dir: Path | None = typer.Option(None, "--gt-dir", help="groundTruth folder (with --pred-dir)"),
    pred_dir: Path | None = typer.Option(None, "--pred-dir", help="MS-TCN prediction files"),
    bundle: Path | None = typer.Option(None, "--bundle", help="split bundle naming the videos to score"),
    segment_end: str = typer.Option("mstcn", "--segment-end", help="mstcn or asformer"),
    bg: list[str] = typer.Option(["background"], "--bg", help="background class names (repeatable)"),
) -> None:
    """Print Acc/Edit/F1: of a run (averaged over split runs), or of prediction files."""
    from .data import read_bundle
    from .metrics import evaluate_dirs

    if run is not None:
        reports = (
            [run / "report.json"] if (run / "report.json").is_file() else sorted(run.glob("*/report.json"))
        )
        if not reports:
            raise DiffActError(f"{run}: no report.json (nor */report.json); train first")
        per_run = [json.loads(p.read_text())["test_metrics"][segment_end] for p in reports]
        mean = {k: sum(r[k] for r in per_run) / len(per_run) for k in per_run[0]}
        typer.echo(
            json.dumps(
                {"runs": [str(p.parent) for p in reports], "segment_end": segment_end, **mean}, indent=2
            )
        )
        return
    if gt_dir is None or pred_dir is None:
        raise DiffActError("pass --run, or both --gt-dir and --pred-dir")
    videos = read_bundle(bundle) if bundle else sorted(p.stem for p in pred_dir.glob("*.txt"))
    metrics = evaluate_dirs(gt_dir, pred_dir, videos, tuple(bg), segment_end)
    typer.echo(json.dumps({"videos": len(videos), "segment_end": segment_end, **metrics.compute()}, indent=2))


@app.command()
@one_line_errors(exit_code=2)
def predict(
    model: Path = typer.Option(..., "--model", help="a run folder or a diffact model folder"),
    features: Path = typer.Option(..., "--features", help="a <video>.npy file or a folder of them"),
    out: Path = typer.Option(..., "--out", help="folder for prediction/, probs/, segments/"),
    mode: str | None = typer.Option(None, "--mode", help="decoder-agg, decoder-noagg or encoder"),
    steps: int | None = typer.Option(None, "--steps", help="DDIM steps (default: the config's)"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Label every frame of one or more feature files (MS-TCN outputs)."""
    import numpy as np
    from rich.progress import track

    from .data import load_features
    from .predict import DiffActSegmenter, video_seed, write_outputs

    segmenter = DiffActSegmenter.from_pretrained(model, device)
    files = sorted(features.glob("*.npy")) if features.is_dir() else [features]
    if not files:
        raise DiffActError(f"{features}: no .npy feature files")
    cfg = segmenter.cfg
    for index, path in enumerate(track(files, description="predict")):
        feats = load_features(path, cfg.encoder.input_dim, sample_rate=cfg.data.sample_rate)
        pred = segmenter.predict(np.asarray(feats), mode, steps, video_seed(cfg, path.stem, index), path.stem)
        write_outputs(pred, path.stem, out, cfg.data.fps)
    typer.echo(f"wrote {len(files)} predictions to {out}")


@app.command()
@one_line_errors(exit_code=2)
def plot(
    pred: Path = typer.Option(..., "--pred", help="an MS-TCN prediction file"),
    mapping: Path = typer.Option(..., "--mapping", help="mapping.txt"),
    out: Path = typer.Option(..., "--out", help="PNG to write"),
    gt: Path | None = typer.Option(None, "--gt", help="ground-truth label file to draw above"),
    fps: float | None = typer.Option(None, "--fps", help="frame rate, to label the axis in seconds"),
) -> None:
    """Draw ground truth and prediction as segment bars."""
    from .data import read_labels, read_mapping
    from .metrics import read_prediction
    from .viz import save_segment_plot

    rows = [("ground truth", read_labels(gt))] if gt else []
    rows.append(("prediction", read_prediction(pred)))
    save_segment_plot(out, rows, read_mapping(mapping), fps)
    typer.echo(f"wrote {out}")


@app.command()
@one_line_errors(exit_code=2)
def convert(
    checkpoint: Path = typer.Argument(..., help="official trained_models/*/release.model"),
    out: Path = typer.Option(..., "--out", help="model folder to write (safetensors)"),
    preset_name: str = typer.Option("gtea", "--preset", help="gtea, 50salads or breakfast"),
    mapping: Path | None = typer.Option(None, "--mapping", help="mapping.txt for the class names"),
) -> None:
    """Convert an official DiffAct checkpoint into a diffact model folder."""
    from .config import preset
    from .convert import load_official_checkpoint
    from .data import read_mapping
    from .predict import save_segmenter

    cfg = preset(preset_name)
    model = load_official_checkpoint(checkpoint, cfg)
    names = read_mapping(mapping) if mapping else [f"class{i}" for i in range(cfg.data.num_classes)]
    if len(names) != cfg.data.num_classes:
        raise DiffActError(
            f"{mapping}: {len(names)} classes but preset {preset_name} has {cfg.data.num_classes}"
        )
    save_segmenter(model, cfg, names, out)
    typer.echo(f"wrote {out}")


@app.command("make-synthetic")
@one_line_errors(exit_code=2)
def make_synthetic(
    out: Path = typer.Option(..., "--out", help="data root to write <out>/synthetic/..."),
    videos: int = typer.Option(8, "--videos"),
    test_videos: int = typer.Option(2, "--test-videos"),
    classes: int = typer.Option(4, "--classes", help="action classes (plus background)"),
    feature_dim: int = typer.Option(16, "--feature-dim"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a small synthetic MS-TCN-layout dataset (for demos: pair with --preset tiny)."""
    from .synthetic import make_mstcn_dataset

    path = make_mstcn_dataset(out, videos, classes, feature_dim, seed, num_test=test_videos)
    typer.echo(f"wrote {path}")


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
