"""The ``tan-transfer`` command line."""

from __future__ import annotations

import typer

from tan_transfer import __version__

app = typer.Typer(
    add_completion=False,
    help="Few-shot transfer of diffusion models: adapters, similarity-guided training, adversarial noise selection (DPMs-ANT).",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
