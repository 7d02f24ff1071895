"""The ``screenlab`` command line."""

from __future__ import annotations

import typer

from screenlab import __version__

app = typer.Typer(
    add_completion=False,
    help="Screen image collections: cheap labels by collage prompting and face-forgery flags from a distilled detector.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
