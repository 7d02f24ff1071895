"""The ``guidance-kit`` command line (typer): build-index, build-captions, schedule, generate, calibrate, bench,
version.

Errors in the input print one line and exit with status 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Anti-Memorization Guidance and Compress Guidance for diffusers pipelines.",
)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _guarded(fn):
    """Run ``fn()``; a bad-input error becomes one line on stderr and exit status 1."""
    from difflab_core.errors import DifflabError

    from .errors import GuidanceKitError

    try:
        return fn()
    except (GuidanceKitError, DifflabError) as err:
        _fail(err)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command("build-index")
def build_index(
    src: Path = typer.Argument(..., help="folder of images (recursive) or .npz with [N,H,W,3] uint8"),
    out: Path = typer.Argument(..., help="index folder to write"),
    backend: list[str] = typer.Option(["pixel"], "--backend", help="pixel, ssim, sscd (repeatable)"),
    sscd: Path | None = typer.Option(None, "--sscd", help="local SSCD TorchScript file (for --backend sscd)"),
    pixel_size: int = typer.Option(64, help="side of the stored pixels (native size if smaller)"),
    shard_size: int = typer.Option(50_000, help="rows per shard"),
    vae: Path | None = typer.Option(
        None, "--vae", help="pipeline (or VAE) folder: also store VAE latents, for AMG --pixel-space latent"
    ),
    vae_image_size: int | None = typer.Option(
        None, help="resize images to this side before encoding (default: as found; use the generation size)"
    ),
) -> None:
    """Build a nearest-neighbour index of training images (run under `accelerate launch` to shard)."""
    from difflab_core.device import process_state

    from .index import NeighbourIndex, load_vae

    def run():
        # each rank encodes on its own device (cuda:<local rank>, or the CPU)
        autoencoder = None if vae is None else load_vae(vae).to(process_state().device)
        return NeighbourIndex.build(
            src,
            out,
            backends=tuple(backend),
            sscd_path=sscd,
            pixel_size=pixel_size,
            shard_size=shard_size,
            vae=autoencoder,
            vae_image_size=vae_image_size,
        )

    index = _guarded(run)
    typer.echo(
        json.dumps(
            {
                "index": str(out),
                "count": len(index),
                "pixel_size": index.pixel_size,
                "latent_shape": index.latent_shape,
            }
        )
    )


@app.command("build-captions")
def build_captions(
    captions: Path = typer.Argument(
        ..., help="JSONL/CSV/TSV/parquet (file + caption columns) or a folder of .txt"
    ),
    index: Path = typer.Option(..., "--index", help="the index folder the captions belong to"),
    out: Path | None = typer.Option(
        None, "--out", help="folder for captions.parquet (default: the index folder)"
    ),
) -> None:
    """Count duplicated captions of the indexed images (for AMG's caption deduplication)."""
    from .captions import CaptionStats
    from .index import NeighbourIndex

    def run():
        idx = NeighbourIndex.load(index)
        return CaptionStats.build(captions, idx, out or index)

    stats = _guarded(run)
    top = int(stats.counts.max()) if len(stats.counts) else 0
    typer.echo(json.dumps({"captions": len(stats.texts), "max_count": top, **stats.report}))


@app.command()
def schedule(
    n: int = typer.Option(50, "--n", help="denoiser calls"),
    skip: int = typer.Option(5, "--skip"),
    k: float = typer.Option(2.0, "--k"),
    weight_mode: str = typer.Option("compress", "--weight-mode", help="compress, multiplicity, none, reuse"),
    arithmetic: str = typer.Option("official", "--arithmetic", help="official or exact"),
) -> None:
    """Print the Compress Guidance schedule as a table (j, τ, w)."""
    from rich.console import Console
    from rich.table import Table

    from .schedules import compress_schedule

    sched = _guarded(lambda: compress_schedule(n, skip, k, weight_mode=weight_mode, arithmetic=arithmetic))
    table = Table(title=f"compress schedule n={n} skip={skip} k={k:g}: {sched.num_guided} guided steps")
    for col in ("j (sampling order)", "τ (official index)", "w(j)"):
        table.add_column(col, justify="right")
    for j in sched.guided_steps:
        table.add_row(str(j), str(n - 1 - j), f"{sched.weight(j):g}")
    Console().print(table)


@app.command()
def generate(
    pipe_dir: Path = typer.Argument(..., help="local diffusers pipeline folder"),
    prompts: Path = typer.Argument(..., help="prompts file: one per line, or JSONL with 'prompt'"),
    out: Path = typer.Argument(..., help="output folder (resumable)"),
    amg_index: Path | None = typer.Option(None, "--amg-index", help="index folder: turns AMG on"),
    captions: Path | None = typer.Option(None, "--captions", help="folder with captions.parquet (G_dup)"),
    compress_skip: int | None = typer.Option(
        None, "--compress-skip", help="Compress CFG skip (off if omitted)"
    ),
    lambda_floor: float = typer.Option(0.3, help="AMG threshold floor (raise it with a calibration)"),
    pixel_space: str = typer.Option(
        "image", help="AMG detection on decoded images or on latents (needs an index built with --vae)"
    ),
    preview_decoder: Path | None = typer.Option(
        None, help="local AutoencoderTiny folder that decodes x̂₀ for AMG detection"
    ),
    seeds: int = typer.Option(1, help="seeds per prompt"),
    steps: int = typer.Option(50, help="inference steps"),
    guidance_scale: float = typer.Option(7.5, help="CFG scale"),
    batch_size: int = typer.Option(4),
) -> None:
    """Generate with AMG (--amg-index), Compress CFG (--compress-skip) or both; one PNG per prompt and seed."""
    from .amg import AMGConfig
    from .captions import CaptionStats
    from .errors import GuidanceKitError
    from .index import NeighbourIndex
    from .jobs import generate_many, read_prompts

    def run():
        texts = read_prompts(prompts)
        amg = None
        if preview_decoder is not None and not (preview_decoder / "config.json").is_file():
            raise GuidanceKitError(
                f"--preview-decoder: {preview_decoder} is not a local AutoencoderTiny folder (no config.json)"
            )
        if amg_index is not None:
            stats = CaptionStats.load(captions) if captions is not None else None
            config = AMGConfig(
                lambda_floor=lambda_floor, pixel_space=pixel_space, preview_decoder=preview_decoder
            )
            amg = (NeighbourIndex.load(amg_index), config, stats)
        return generate_many(
            pipe_dir,
            texts,
            out,
            seeds_per_prompt=seeds,
            batch_size=batch_size,
            amg=amg,
            compress=compress_skip,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
        )

    rows = _guarded(run)
    typer.echo(json.dumps({"out": str(out), "generated": len(rows)}))


@app.command("calibrate")
def calibrate_command(
    pipe_dir: Path = typer.Argument(..., help="local diffusers pipeline folder"),
    clean_prompts: Path = typer.Argument(
        ..., help="prompts that must stay untouched: one per line, or JSONL"
    ),
    amg_index: Path = typer.Option(..., "--amg-index", help="the index folder of training images"),
    out: Path | None = typer.Option(None, "--out", help="write the calibrated AMGConfig here (JSON)"),
    seeds: int = typer.Option(1, help="seeds per prompt (0, 1, …)"),
    quantile: float = typer.Option(0.99, help="λ floor = this quantile of σ on the clean generations"),
    steps: int = typer.Option(50, help="inference steps"),
    guidance_scale: float = typer.Option(7.5, help="CFG scale"),
) -> None:
    """Raise AMG's λ floor to the given quantile of σ on clean prompts; print the config as JSON."""
    from difflab_core.loading import load_pipeline

    from .amg import calibrate
    from .errors import core_errors
    from .index import NeighbourIndex
    from .jobs import read_prompts

    def run():
        texts = read_prompts(clean_prompts)
        index = NeighbourIndex.load(amg_index)
        with core_errors(str(pipe_dir)):
            pipe = load_pipeline(pipe_dir)
        pipe.set_progress_bar_config(disable=True)
        return calibrate(
            pipe,
            index,
            texts,
            seeds=tuple(range(seeds)),
            quantile=quantile,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
        )

    config = _guarded(run).to_dict()
    if out is not None:
        out.write_text(json.dumps(config, indent=2) + "\n")
    typer.echo(json.dumps(config))


@app.command()
def bench(
    quick: bool = typer.Option(True, "--quick/--full", help="the one-minute run or the full one"),
    threads: int = typer.Option(1, help="torch threads (more only adds spin time on these tiny models)"),
) -> None:
    """Run the benchmark (spec §6) and print its JSON."""
    from .bench import run_benchmark

    typer.echo(json.dumps(run_benchmark(quick, threads=threads), indent=2))
