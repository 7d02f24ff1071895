"""Command line for guidance-kit."""

import typer

from guidance_kit import __version__

app = typer.Typer(
    help="Anti-Memorization Guidance and Compress Guidance for diffusers pipelines.", no_args_is_help=True
)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
