"""The ``mem-video`` command line (typer): testbed, index, generate, audit, detect, evaluate, report, demo.

Large runs go through ``accelerate launch -m mem_video.cli ...``; index, generate and audit then shard their
work across ranks. Bad input prints one ``error:`` line and exits with status 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from difflab_core.errors import DifflabError

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Content and motion memorization in video diffusion models: metrics, audit and detection.",
)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn mem-video/difflab errors (and missing files) into one line on stderr and exit status 1."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        try:
            return fn(*args, **kwargs)
        except (DifflabError, FileNotFoundError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return run


def _size(text: str) -> tuple[int, int]:
    from .errors import MemVideoError

    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError as err:
        raise MemVideoError(f"--flow-size {text!r}: use N or HxW, e.g. 256 or 64x64") from err
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise MemVideoError(f"--flow-size {text!r}: use N or HxW")
    return parts[0], parts[1]


def _fps(value: float) -> float | None:
    return None if value <= 0 else value


def _k(text: str) -> int | str:
    from .errors import MemVideoError

    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError as err:
        raise MemVideoError(f"--k {text!r}: use a positive integer or 'all'") from err


def _load_pipe(model: Path, device: str, dtype: str):
    from diffusers.utils import logging as diffusers_logging

    from difflab_core.loading import load_pipeline

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # TextToVideoSDPipeline's deprecation notice (diffusers >= 0.34)
    try:
        pipe = load_pipeline(model, device=device, dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command()
@_guard
def testbed(
    out: Path = typer.Argument(..., help="folder to write training/, generated/ and labels.jsonl into"),
    seed: int = typer.Option(0, "--seed"),
    per_type: int = typer.Option(6, "--per-type", help="generated videos per type"),
    n_train: int = typer.Option(30, "--n-train", help="moving training videos"),
    video_format: str = typer.Option("mp4", "--format", help="mp4, npz or gif"),
) -> None:
    """Write the planted sprite testbed as video files."""
    from .testbed import write_sprite_testbed

    info = write_sprite_testbed(out, seed=seed, per_type=per_type, n_train=n_train, video_format=video_format)
    typer.echo(json.dumps(info, indent=2))


@app.command()
@_guard
def index(
    training: Path = typer.Argument(..., help="training folder (videos and images, recursive)"),
    out: Path = typer.Argument(..., help="index folder"),
    embedder: str = typer.Option("tiny", "--embedder", help="tiny | sscd:PATH | torchscript:PATH"),
    flow: str = typer.Option("farneback", "--flow", help="farneback | raft-large:PATH | raft-small:PATH"),
    flow_size: str = typer.Option("256", "--flow-size", help="N or HxW"),
    content_fps: float = typer.Option(2.0, "--content-fps", help="<= 0: every frame"),
    motion_fps: float = typer.Option(8.0, "--motion-fps", help="<= 0: native rate"),
    grid: int = typer.Option(32, "--grid"),
    webvid_csv: Path | None = typer.Option(None, "--webvid-csv", help="index a WebVid CSV under TRAINING"),
    new_run: bool = typer.Option(False, "--new-run", help="start over instead of resuming"),
) -> None:
    """Build (or resume) a content + motion index of a training set."""
    from .index import VideoIndex
    from .sources import WebVidSource, training_folder_sources

    sources = [WebVidSource(webvid_csv, training)] if webvid_csv else training_folder_sources(training)
    ix = VideoIndex.build(
        sources,
        out,
        embedder,
        flow,
        content_fps=_fps(content_fps),
        motion_fps=_fps(motion_fps),
        flow_size=_size(flow_size),
        grid=grid,
        resume=not new_run,
    )
    typer.echo(f"indexed {len(ix)} items into {out}")


@app.command()
@_guard
def generate(
    model: Path = typer.Argument(..., help="diffusers video pipeline folder"),
    prompts: Path = typer.Argument(..., help="prompts (.jsonl, .csv or .txt)"),
    out: Path = typer.Argument(...),
    n: int = typer.Option(4, "--n", help="videos per prompt"),
    steps: int = typer.Option(50, "--steps"),
    scale: float | None = typer.Option(None, "--scale"),
    frames: int = typer.Option(16, "--frames"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Generate videos for a prompt file (resumable)."""
    from .audit import generate_videos, read_prompts

    rows = generate_videos(
        _load_pipe(model, device, dtype),
        read_prompts(prompts),
        out,
        num_videos_per_prompt=n,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=scale,
        num_frames=frames,
    )
    typer.echo(f"{len(rows)} videos in {out}")


@app.command()
@_guard
def audit(
    generated: Path = typer.Argument(..., help="folder of generated videos (or a `generate` output)"),
    out: Path = typer.Argument(...),
    index_dir: Path | None = typer.Option(None, "--index", help="a built index"),
    training: Path | None = typer.Option(None, "--training", help="training folder (indexed into OUT/index)"),
    embedder: str = typer.Option("tiny", "--embedder"),
    flow: str = typer.Option("farneback", "--flow"),
    flow_size: str = typer.Option("256", "--flow-size"),
    content_fps: float = typer.Option(2.0, "--content-fps", help="<= 0: every frame"),
    tau_c: float | None = typer.Option(None, "--tau-c"),
    tau_m: float = typer.Option(0.6, "--tau-m"),
    k: str = typer.Option("8", "--k"),
) -> None:
    """Audit generated videos for content and motion memorization."""
    from .audit import audit as run_audit
    from .audit import audit_videos
    from .errors import MemVideoError

    if (index_dir is None) == (training is None):
        raise MemVideoError("audit: give exactly one of --index DIR or --training DIR")
    if training is not None:
        summary = audit_videos(
            generated,
            training,
            out,
            embedder=embedder,
            flow=flow,
            tau_c=tau_c,
            tau_m=tau_m,
            k=_k(k),
            flow_size=_size(flow_size),
            content_fps=_fps(content_fps),
        )
    else:
        summary = run_audit(generated, index_dir, out, tau_c=tau_c, tau_m=tau_m, k=_k(k)).summary
    _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mem-video audit: {summary['n_videos']} videos")
    table.add_column("type")
    table.add_column("count", justify="right")
    table.add_column("rate", justify="right")
    for t, c in summary["counts"].items():
        table.add_row(t, str(c), f"{summary['rates'][t]:.3f}")
    Console().print(table)
    typer.echo(f"distinct training items extracted: {summary['distinct_training_items_extracted']}")


@app.command()
@_guard
def detect(
    model: Path = typer.Argument(..., help="diffusers video pipeline folder (with CFG)"),
    prompts: Path = typer.Argument(...),
    out: Path = typer.Argument(...),
    steps: int = typer.Option(1, "--steps", help="J denoiser calls before stopping"),
    n: int = typer.Option(4, "--n", help="generations per prompt"),
    num_inference_steps: int = typer.Option(50, "--num-inference-steps"),
    scale: float | None = typer.Option(None, "--scale"),
    frames: int = typer.Option(16, "--frames"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Score prompts from the first denoising step(s); writes detect.jsonl and prompt_scores.json."""
    from difflab_core.report import write_json

    from .audit import read_prompts
    from .detect import STATISTICS, MemorizationDetector, prompt_scores

    det = MemorizationDetector(
        _load_pipe(model, device, dtype),
        steps=steps,
        num_inference_steps=num_inference_steps,
        guidance_scale=scale,
    )
    recs = det.score(read_prompts(prompts), num_videos_per_prompt=n, seed=seed, num_frames=frames, out=out)
    scores = {s: prompt_scores(recs, s, steps) for s in STATISTICS}
    write_json(out / "prompt_scores.json", scores)
    typer.echo(f"scored {len(scores['content'])} prompts into {out}")


@app.command()
@_guard
def evaluate(
    results: Path = typer.Argument(
        ..., help="an audit folder (scores.jsonl) or detect folder (detect.jsonl)"
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="labels.jsonl (audit: id, content, motion) or a prompt file with 'label'"
    ),
) -> None:
    """AUC and TPR@1%FPR of audit scores or detection scores against labels."""
    from difflab_core.store import ResultStore

    from .audit import read_prompts
    from .detect import prompt_scores
    from .errors import MemVideoError
    from .evaluation import evaluate as run_eval

    out: dict[str, Any] = {}
    if (results / "scores.jsonl").is_file():
        if labels is None:
            raise MemVideoError("evaluate: an audit needs --labels labels.jsonl (id, content, motion)")
        lab = {r["id"]: r for r in (json.loads(x) for x in labels.read_text().splitlines() if x.strip())}
        rows = [r for r in ResultStore(results, name="scores", key="id").records() if r["id"] in lab]
        if not rows:
            raise MemVideoError(f"evaluate: no audited id of {results} appears in {labels}")
        for metric, field in (("content", "content_score"), ("motion", "motion_score")):
            out[metric] = run_eval(
                [r[field] if r[field] is not None else -1.0 for r in rows],
                [bool(lab[r["id"]][metric]) for r in rows],
            )
    elif (results / "detect.jsonl").is_file():
        recs = ResultStore(results, name="detect", key="key").records()
        if labels is not None:
            truth = {r["prompt_id"]: r.get("label") for r in read_prompts(labels)}
        else:
            truth = {r["prompt_id"]: r.get("label") for r in recs}
        for stat, pos in (("content", ("content", "both")), ("motion", ("motion", "both")), ("wen", None)):
            ps = prompt_scores(recs, stat)
            keep = [p for p in ps if truth.get(p) is not None]
            if pos is None:
                y = [truth[p] != "none" for p in keep]
            else:
                keep = [p for p in keep if truth[p] in (*pos, "none")]
                y = [truth[p] in pos for p in keep]
            out[stat] = run_eval([ps[p] for p in keep], y)
    else:
        raise MemVideoError(f"evaluate: {results} holds neither scores.jsonl nor detect.jsonl")
    typer.echo(json.dumps(out, indent=2))


@app.command()
@_guard
def report(audit_dir: Path = typer.Argument(..., help="an audit output folder")) -> None:
    """Print the summary of a finished audit (its report.html sits beside it)."""
    from .errors import MemVideoError

    path = audit_dir / "summary.json"
    if not path.is_file():
        raise MemVideoError(f"report: {path} does not exist; run `mem-video audit` first")
    _print_summary(json.loads(path.read_text()))
    typer.echo(f"report: {audit_dir / 'report.html'}")


@app.command()
@_guard
def demo(
    out: Path = typer.Argument(Path("mem-video-demo")),
    per_type: int = typer.Option(4, "--per-type"),
) -> None:
    """The whole story on the sprite testbed: write it, index, audit, evaluate (about a minute on CPU)."""
    from .audit import audit_videos
    from .testbed import write_sprite_testbed

    info = write_sprite_testbed(out / "testbed", per_type=per_type)
    summary = audit_videos(
        info["generated"], info["training"], out / "audit", flow_size=(64, 64), content_fps=None
    )
    _print_summary(summary)
    evaluate(out / "audit", Path(info["labels"]))
    typer.echo(f"report: {out / 'audit' / 'report.html'}")


if __name__ == "__main__":
    app()
