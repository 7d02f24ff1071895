"""Command line for diffact."""

import typer

from diffact import __version__

app = typer.Typer(help="DiffAct: temporal action segmentation by denoising diffusion.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
