"""The ``difftriplet`` command line (mounted by ``videolab`` as ``videolab triplet``).

Commands: make-synthetic, finetune-backbone, extract-features, train, evaluate, predict, version.
Bad input prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from difflab_core.cli import one_line_errors
from difftriplet import __version__

app = typer.Typer(
    add_completion=False,
    help="Surgical action triplet recognition by iterative denoising (DiffTriplet), evaluated with ivtmetrics.",
    no_args_is_help=True,
)


def _size(text: str) -> tuple[int, int]:
    from .errors import DiffTripletError

    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError as err:
        raise DiffTripletError(f"--image-size {text!r}: use HEIGHTxWIDTH, e.g. 256x448") from err
    return h, w


def _videos(data: Path, variant: str, fold: str | None) -> list[str]:
    from .data import dataset_paths
    from .train import fold_split

    _, labels_dir, suffix = dataset_paths(data, variant)
    present = sorted(p.name.removesuffix(suffix) for p in labels_dir.glob(f"VID*{suffix}"))
    if fold is None:
        return present
    split = fold_split(variant, fold)
    wanted = [*split.train, *split.val, *split.test]
    absent = [v for v in wanted if v not in present]
    if absent:
        typer.echo(
            f"note: {len(absent)} videos of fold {fold} are absent from {labels_dir}: {', '.join(absent)}"
        )
    return [v for v in wanted if v in present]


def _echo_json(data: Any) -> None:
    from difflab_core.report import to_jsonable

    typer.echo(json.dumps(to_jsonable(data), indent=2))


@app.command("make-synthetic")
@one_line_errors(exit_code=2)
def make_synthetic(
    out: Path = typer.Option(..., "--out", help="dataset root to write"),
    variant: str = typer.Option("cholect50", "--variant", help="cholect50 or cholect45 layout"),
    videos: str = typer.Option(
        "VID79,VID02,VID51,VID80,VID32,VID05", "--videos", help="comma-separated names"
    ),
    min_frames: int = typer.Option(60, "--min-frames"),
    max_frames: int = typer.Option(120, "--max-frames"),
    feature_dim: int = typer.Option(32, "--feature-dim"),
    seed: int = typer.Option(0, "--seed"),
    frames: bool = typer.Option(True, "--frames/--no-frames", help="write PNG frames"),
) -> None:
    """Write a synthetic CholecT50/CholecT45-format dataset (frames, labels, mapping, features/synthetic)."""
    from .synthetic import make_cholect45_dataset, make_cholect50_dataset

    make = {"cholect50": make_cholect50_dataset, "cholect45": make_cholect45_dataset}.get(variant)
    if make is None:
        from .errors import DiffTripletError

        raise DiffTripletError(f"--variant {variant!r}: use cholect50 or cholect45")
    names = tuple(v.strip() for v in videos.split(",") if v.strip())
    data = make(
        out,
        videos=names,
        frames=(min_frames, max_frames),
        feature_dim=feature_dim,
        seed=seed,
        write_frames=frames,
    )
    typer.echo(f"wrote {len(data.videos)} videos ({sum(data.frames.values())} frames) to {data.root}")


@app.command("finetune-backbone")
@one_line_errors(exit_code=2)
def finetune(
    data: Path = typer.Option(..., "--data", help="CholecT50 / CholecT45 root"),
    out: Path = typer.Option(..., "--out", help="backbones folder; writes <out>/k<fold>"),
    fold: str = typer.Option(
        ..., "--fold", help="1..5, challenge or rdv: trains on that split's training videos"
    ),
    variant: str = typer.Option("cholect50", "--variant"),
    arch: str = typer.Option("resnet50", "--arch", help="timm architecture"),
    weights: Path | None = typer.Option(
        None, "--weights", help="local initial weights (safetensors / state dict)"
    ),
    image_size: str = typer.Option("256x448", "--image-size", help="HEIGHTxWIDTH"),
    max_steps: int = typer.Option(1000, "--max-steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
) -> None:
    """Fine-tune a timm backbone with a 131-way multi-label head on one fold's training frames."""
    from .features import BackboneConfig, finetune_backbone
    from .train import fold_split

    cfg = BackboneConfig(arch=arch, weights=str(weights) if weights else None, image_size=_size(image_size))
    folder = finetune_backbone(
        cfg,
        data,
        fold_split(variant, fold),
        out / f"k{fold}",
        variant=variant,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        progress=True,
    )
    typer.echo(f"backbone written to {folder}")


@app.command("extract-features")
@one_line_errors(exit_code=2)
def extract(
    data: Path = typer.Option(..., "--data", help="CholecT50 / CholecT45 root"),
    name: str = typer.Option(..., "--name", help="feature set name: writes <data>/features/<name>-k<fold>"),
    fold: str | None = typer.Option(None, "--fold", help="the fold whose videos to extract (default: all)"),
    variant: str = typer.Option("cholect50", "--variant"),
    backbone: Path | None = typer.Option(None, "--backbone", help="a finetune-backbone folder (e.g. B/k1)"),
    arch: str = typer.Option("resnet50", "--arch", help="timm architecture (without --backbone)"),
    weights: Path | None = typer.Option(None, "--weights", help="local weights (without --backbone)"),
    image_size: str = typer.Option("256x448", "--image-size", help="HEIGHTxWIDTH"),
    pooling: str = typer.Option("avg", "--pooling", help="avg or grid:HxW"),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Extract float16 F×T features per video with a manifest; resumes per video."""
    from dataclasses import replace

    from .features import BackboneConfig, extract_features

    if backbone is not None:
        cfg = replace(BackboneConfig.load(backbone), pooling=pooling)
    else:
        cfg = BackboneConfig(
            arch=arch,
            weights=str(weights) if weights else None,
            image_size=_size(image_size),
            pooling=pooling,
        )
    out = data / "features" / (f"{name}-k{fold}" if fold is not None else name)
    manifest = extract_features(cfg, data, _videos(data, variant, fold), out, batch_size, device, variant)
    typer.echo(
        f"{len(manifest.computed)} videos extracted, {len(manifest.frames)} in {out} (F={manifest.feature_dim})"
    )


@app.command()
@one_line_errors(exit_code=2)
def train(
    data: Path = typer.Option(..., "--data", help="CholecT50 / CholecT45 root"),
    features: str = typer.Option(..., "--features", help="feature set name (or folder)"),
    out: Path = typer.Option(..., "--out", help="run folder (resumed if it exists)"),
    fold: str = typer.Option("1", "--fold", help="1..5, challenge or rdv"),
    variant: str = typer.Option("cholect50", "--variant"),
    preset_name: str = typer.Option("cholect50_cv", "--preset", help="cholect50_cv, cholect45_cv or tiny"),
    config_file: Path | None = typer.Option(
        None, "--config", help="a DiffTripletConfig JSON instead of --preset"
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
    feature_dim: int | None = typer.Option(None, "--feature-dim", help="override the preset's F"),
    selection: str | None = typer.Option(None, "--selection", help="val (default), test-window or last"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda:N"),
    new_run: bool = typer.Option(False, "--new-run", help="move an existing run aside and start over"),
) -> None:
    """Train one fold, select a checkpoint, export and score the test videos."""
    from .config import DiffTripletConfig, preset
    from .train import train_fold

    cfg = DiffTripletConfig.load(config_file) if config_file else preset(preset_name)
    updates = {"max_steps": max_steps, "device": device}
    cfg = cfg.with_updates(
        train={k: v for k, v in updates.items() if v is not None},
        eval={"selection": selection} if selection else {},
        model={"input_dim": feature_dim} if feature_dim else {},
    )
    result = train_fold(cfg, data, variant, fold, features, out, resume=not new_run, progress=True)
    _echo_json({"out": result.out_dir, "selected_step": result.selected_step, "test": result.test_metrics})


@app.command()
@one_line_errors(exit_code=2)
def evaluate(
    run: Path = typer.Option(..., "--run", help="a run folder, or a folder of fold runs"),
    protocol: str | None = typer.Option(None, "--protocol", help="cv or challenge (default: the run's)"),
    nan_policy: str | None = typer.Option(None, "--nan-policy", help="canonical or installed"),
) -> None:
    """Score runs with ivtmetrics; several fold runs give mean ± std (×100)."""
    from .evaluate import HEADLINE, evaluate_run, find_runs, summarize_folds

    runs = find_runs(run)
    if protocol or nan_policy or len(runs) == 1:
        for r in runs:
            report = evaluate_run(r, protocol, nan_policy)
            typer.echo(f"{r.name}: " + json.dumps({k: round(v, 2) for k, v in report.summary(True).items()}))
    if len(runs) > 1:
        summary = summarize_folds(runs)
        for key in HEADLINE:
            typer.echo(f"{key}: {summary[key]['mean']:.1f} ± {summary[key]['std']:.1f}")


@app.command()
@one_line_errors(exit_code=2)
def predict(
    model: Path = typer.Option(..., "--model", help="a model folder (a run's model/ or best/)"),
    data: Path = typer.Option(..., "--data", help="CholecT50 / CholecT45 root"),
    features: str = typer.Option(..., "--features", help="feature folder or name under <data>/features"),
    out: Path = typer.Option(..., "--out", help="where probs/, top/ and pred/ go"),
    variant: str = typer.Option("cholect50", "--variant"),
    videos: str | None = typer.Option(None, "--videos", help="comma-separated names (default: all labelled)"),
    mode: str | None = typer.Option(None, "--mode", help="decoder, encoder or ensemble"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Export per-video probabilities, top-5 CSVs and CholecT50-style JSON; score them when labelled."""
    from .data import TripletFeatureDataset
    from .predict import TripletRecognizer, predict_dataset
    from .splits import Split

    recognizer = TripletRecognizer.from_pretrained(model, device)
    names = [v.strip() for v in videos.split(",")] if videos else _videos(data, variant, None)
    dataset = TripletFeatureDataset(
        data, variant, Split((), (), tuple(names)), "test", features, recognizer.cfg
    )
    report = predict_dataset(recognizer, dataset.videos, out, mode=mode)
    typer.echo(f"wrote predictions for {len(names)} videos to {out}")
    if report is not None:
        typer.echo(json.dumps({k: round(v, 2) for k, v in report.summary(True).items()}))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
