"""The ``genlab`` command line."""

from __future__ import annotations

import typer

from genlab import __version__

app = typer.Typer(
    add_completion=False,
    help="Few-shot adaptation, fast sampling and cheap guidance for diffusion models: tan-transfer, adam-sampler, guidance-kit.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
