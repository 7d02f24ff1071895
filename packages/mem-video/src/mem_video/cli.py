"""Command line for mem-video."""

import typer

from mem_video import __version__

app = typer.Typer(
    help="Content and motion memorization in video diffusion models: metrics, audit and detection.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
