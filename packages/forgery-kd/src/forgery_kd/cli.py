"""Command line for forgery-kd."""

import typer

from forgery_kd import __version__

app = typer.Typer(
    help="Two-in-one knowledge distillation for face forgery detection: a dual-branch RGB+frequency teacher distilled into one RGB student.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
