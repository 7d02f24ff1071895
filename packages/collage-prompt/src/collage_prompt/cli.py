"""Command line for collage-prompt."""

import typer

from collage_prompt import __version__

app = typer.Typer(help="Collage prompting for vision-language models on a budget.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
