"""The ``videolab`` command: ``demo``, ``segment ...`` (diffact's commands) and ``triplet ...`` (difftriplet's).

Bad input prints one ``error:`` line and exits non-zero.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from diffact.cli import app as diffact_app
from difflab_core.cli import one_line_errors
from difftriplet import cli as difftriplet_cli
from videolab import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Video understanding by denoising: action segmentation (diffact) and surgical triplets (difftriplet).",
)
app.add_typer(
    diffact_app, name="segment", help="Temporal action segmentation on MS-TCN-format data (diffact)."
)

triplet = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Surgical action triplets on CholecT45/CholecT50 (difftriplet).",
)
for name, command in (
    ("extract", difftriplet_cli.extract),
    ("finetune-backbone", difftriplet_cli.finetune),
    ("train", difftriplet_cli.train),
    ("evaluate", difftriplet_cli.evaluate),
    ("predict", difftriplet_cli.predict),
    ("make-synthetic", difftriplet_cli.make_synthetic),
):
    triplet.command(name)(command)
app.add_typer(triplet, name="triplet")


@app.command()
@one_line_errors()
def demo(
    quick: bool = typer.Option(False, "--quick", help="the two-minute version (fewer training steps)"),
    out: Path = typer.Option(
        Path("videolab-demo"), "--out", help="folder for report.html, report.json, cache/"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthetic MS-TCN and CholecT50 data → short training of DiffAct and DiffTriplet → report."""
    from difflab_core.device import resolve_device

    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.preset(quick, out=str(out), device=str(resolve_device(device)), seed=seed)
    result = run_demo(cfg)
    seg, tri = result["figures"]["segment"], result["figures"]["triplet"]
    typer.echo(f"action segmentation: Acc {seg['Acc']:.1f}, Edit {seg['Edit']:.1f}, F1@50 {seg['F1@50']:.1f}")
    typer.echo(f"triplets: AP_I {tri['AP_I']:.3f}, AP_IVT {tri['AP_IVT']:.3f}")
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
