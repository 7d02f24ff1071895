"""The ``memguard`` command: demo, audit, generate, video-audit, version.

Every command reads its defaults from the ``--config`` TOML file (see `memguard.config`); bad input prints one
``error:`` line and exits with status 1.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from difflab_core.cli import one_line_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit image and video generators for memorization, and generate with mitigation.",
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        envvar="MEMGUARD_CONFIG",
        help="TOML file with a table per command ([demo], [audit], [generate], [video-audit]) whose keys "
        "are that command's options; command-line options win.",
    ),
) -> None:
    """Audit generators for memorization; generate with mitigation. Start with `memguard demo --quick`."""
    if config is None:
        return
    from difflab_core.errors import DifflabError

    from .config import read_config

    group = typer.main.get_command(app)
    try:
        ctx.default_map = read_config(config, group.commands)  # type: ignore[attr-defined]
    except DifflabError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
@one_line_errors()
def demo(
    quick: bool = typer.Option(
        False, "--quick", help="20 steps and 1 image per prompt (full: 50 steps, 2 images)"
    ),
    out: Path = typer.Option(
        Path("memguard-demo"), "--out", "-o", help="folder for the report and the cache"
    ),
    steps: int | None = typer.Option(None, "--steps", help="DDIM steps (default: 20 quick, 50 full)"),
    images_per_prompt: int | None = typer.Option(None, "--n", help="images per prompt (1 quick, 2 full)"),
    flag_method: str = typer.Option(
        "ren_ae", "--flag-method", help="detector that flags prompts: be, wen, ren_le or ren_ae"
    ),
    flag_quantile: float = typer.Option(
        0.95, "--flag-quantile", help="flag above this quantile of the novel prompts' scores"
    ),
    max_mitigated: int | None = typer.Option(
        None,
        "--max-mitigated",
        help="mitigate at most this many flagged prompts (default: all)",
    ),
    mitigations: str = typer.Option("be-pe,amg", "--mitigations", help="comma list of be-pe, pe and amg"),
    video: bool = typer.Option(True, "--video/--no-video", help="also audit the planted video testbed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps"),
) -> None:
    """Audit, score, mitigate and report on the embedded memorization testbed; prints the headline figures.

    Reruns reuse what is cached in OUT (an interrupted run resumes)."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=out,
        quick=quick,
        steps=steps,
        images_per_prompt=images_per_prompt,
        flag_method=flag_method,
        flag_quantile=flag_quantile,
        max_mitigated=max_mitigated,
        mitigations=tuple(m.strip() for m in mitigations.split(",") if m.strip()),
        video=video,
        device=device,
    )
    result = run_demo(cfg)
    f = result.figures
    typer.echo(f"report: {result.report_html}")
    typer.echo(f"figures: {result.report_json}")
    for method in ("be", "wen", "ren_ae"):
        typer.echo(f"  detection AUC ({method}, all prompts): {_fmt(f.get(f'det_all_{method}_auc'))}")
    typer.echo(f"  BE localization AUROC (local prompts): {_fmt(f.get('loc_local_auroc'))}")
    typer.echo(
        f"  flagged {f['n_flagged']} prompts by {f['flag_method']} "
        f"(recall {_fmt(f['flag_recall'])}, false positive rate {_fmt(f['flag_false_positive_rate'])})"
    )
    typer.echo(
        f"  memorized fraction of mitigated prompts before: {_fmt(f.get('memorized_fraction_before'))}"
    )
    for m in cfg.mitigations:
        tag = m.replace("-", "_")
        typer.echo(
            f"  ... after {m}: {_fmt(f.get(f'memorized_fraction_after_{tag}'))} "
            f"(whole-image copies {_fmt(f.get(f'memorized_fraction_after_{tag}_global'))}, "
            f"patch copies {_fmt(f.get(f'memorized_fraction_after_{tag}_local'))})"
        )
    if video:
        typer.echo(
            f"  videos: content-copy recall {_fmt(f['video_content_recall'])}, motion-copy recall "
            f"{_fmt(f['video_motion_recall'])}, static/pan videos called motion copies: "
            f"{f['video_static_or_pan_called_motion_copies']}"
        )


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command()
@one_line_errors()
def audit(
    model: Path = typer.Option(..., "--model", "-m", help="local Stable Diffusion pipeline folder"),
    prompts: Path = typer.Option(..., "--prompts", "-p", help="prompt file: .txt, .jsonl, .csv or .parquet"),
    labels: bool = typer.Option(
        False, "--labels", help="the file has a label column (1 memorized, 0 not): score detection too"
    ),
    out: Path = typer.Option(Path("memguard-audit"), "--out", "-o", help="run folder (resumable)"),
    steps: int = typer.Option(50, "--steps", help="DDIM steps"),
    scale: float = typer.Option(7.5, "--scale", help="guidance scale (> 1)"),
    images_per_prompt: int = typer.Option(4, "--n", help="images per prompt"),
    seed: int = typer.Option(0, "--seed", help="prompt i uses seed + i"),
    methods: str = typer.Option("be,wen,ren", "--methods", help="comma list of be, wen, ren"),
    batch_prompts: int = typer.Option(1, "--batch-prompts", help="prompts per pipeline call"),
    new_run: bool = typer.Option(False, "--new-run", help="start over when the settings changed"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA), float32, float16, bfloat16"),
) -> None:
    """Score every prompt for memorization (BE, Wen, Ren) and write a report; `accelerate launch -m memguard
    audit ...` shards the prompts across processes, and a rerun resumes where it stopped."""
    from .audit import run_audit

    summary = run_audit(
        model,
        prompts,
        out,
        labels=labels,
        steps=steps,
        scale=scale,
        images_per_prompt=images_per_prompt,
        seed=seed,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        batch_prompts=batch_prompts,
        new_run=new_run,
        device=device,
        dtype=dtype,
    )
    if summary is not None:
        typer.echo(f"{summary['n_prompts']} prompts scored; report: {summary['report']}")


@app.command()
@one_line_errors()
def generate(
    model: Path = typer.Option(..., "--model", "-m", help="local Stable Diffusion pipeline folder"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the prompt"),
    mitigate: str = typer.Option("none", "--mitigate", help="none, be-pe, prss or amg"),
    out: Path = typer.Option(Path("memguard-generate"), "--out", "-o"),
    images_per_prompt: int = typer.Option(1, "--n", help="images"),
    steps: int = typer.Option(50, "--steps"),
    scale: float = typer.Option(7.5, "--scale"),
    seed: int = typer.Option(0, "--seed"),
    threshold: float | None = typer.Option(
        None, "--threshold", help="BE score above which an image is judged memorized"
    ),
    audit_dir: Path | None = typer.Option(
        None, "--audit", help="an audit run with clean (label 0) prompts: sets --threshold and --target-loss"
    ),
    target_loss: float = typer.Option(
        1.0, "--target-loss", help="be-pe: optimise until the loss is below this"
    ),
    paraphrase: list[str] = typer.Option([], "--paraphrase", help="prss: candidate rewrites (repeatable)"),
    index: Path | None = typer.Option(None, "--index", help="amg: guidance-kit index folder (build-index)"),
    captions: Path | None = typer.Option(None, "--captions", help="amg: caption statistics (build-captions)"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Generate images with a per-image memorization verdict and BE heatmap, optionally mitigated."""
    from .generate import run_generate

    summary = run_generate(
        model,
        prompt,
        out,
        mitigate=mitigate,
        images_per_prompt=images_per_prompt,
        steps=steps,
        scale=scale,
        seed=seed,
        threshold=threshold,
        audit_dir=audit_dir,
        target_loss=target_loss,
        paraphrases=paraphrase,
        index=index,
        captions=captions,
        device=device,
        dtype=dtype,
    )
    for item in summary["images"]:
        typer.echo(f"{item['file']}: {item['verdict']} (BE score {item['be_score']:.3f})")
    typer.echo(f"wrote {len(summary['images'])} image(s) and verdicts to {out}")


@app.command("video-audit")
@one_line_errors()
def video_audit(
    training: Path = typer.Option(..., "--training", "-t", help="folder of training videos"),
    generated: Path | None = typer.Option(None, "--generated", "-g", help="folder of generated videos"),
    model: Path | None = typer.Option(None, "--model", "-m", help="local diffusers text-to-video pipeline"),
    prompts: Path | None = typer.Option(None, "--prompts", "-p", help="prompt file (with --model)"),
    out: Path = typer.Option(Path("memguard-video-audit"), "--out", "-o", help="run folder (resumable)"),
    steps: int = typer.Option(25, "--steps", help="with --model: denoising steps"),
    frames: int = typer.Option(16, "--frames", help="with --model: frames per video"),
    seed: int = typer.Option(0, "--seed"),
    flow_size: int = typer.Option(256, "--flow-size", help="frames are resized to this square size for flow"),
    content_fps: float = typer.Option(
        2.0, "--content-fps", help="frames per second compared for content (0: all)"
    ),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Content and motion memorization of generated videos against training videos, with a report."""
    from .video import run_video_audit

    summary = run_video_audit(
        training,
        out,
        generated=generated,
        model=model,
        prompts=prompts,
        steps=steps,
        frames=frames,
        seed=seed,
        device=device,
        flow_size=(flow_size, flow_size),
        content_fps=content_fps or None,
    )
    typer.echo(
        f"{summary['n_videos']} videos: {summary['n_content']} content copies, {summary['n_motion']} motion "
        f"copies; report: {summary['report']}"
    )


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("difflab-memguard"))
