"""The ``videolab`` command line."""

from __future__ import annotations

import typer

from videolab import __version__

app = typer.Typer(
    add_completion=False,
    help="Video understanding by denoising: action segmentation (diffact) and surgical triplets (difftriplet).",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
