"""The ``memguard`` command. The app is not built yet: ``demo`` says so and exits with status 1."""

import typer

app = typer.Typer(help="Audit image and video generators for memorization and generate with mitigation.")


@app.command()
def demo() -> None:
    """Run the whole memguard story on the embedded testbed (not built yet)."""
    typer.echo(
        "memguard is not built yet: the audit and safe-generation demo arrives with the memguard app. "
        "The memorization testbed it will run on is ready: python -m difflab_core.testbed verify memorization",
        err=True,
    )
    raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("difflab-memguard"))
