"""The ``difftriplet`` command line."""

from __future__ import annotations

import typer

from difftriplet import __version__

app = typer.Typer(
    add_completion=False,
    help="Surgical action triplet recognition by iterative denoising (DiffTriplet), evaluated with ivtmetrics.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
