"""The ``adam-sampler`` command line: ``sample`` from a local diffusers folder with AMS or a baseline; ``version``."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import AdamSamplerError

app = typer.Typer(add_completion=False, help="The Adaptive Momentum Sampler as a diffusers scheduler.")

BASELINES = ("ddim", "dpmsolver++")


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", help="local diffusers pipeline folder (DDPMPipeline or SD)"),
    out: Path = typer.Option(..., "--out", help="folder for the PNGs"),
    steps: int = typer.Option(20, "--steps", help="number of inference steps"),
    scheduler: str = typer.Option("ams", "--scheduler", help="ams, ddim or dpmsolver++"),
    method: str = typer.Option("momentum", "--method", help="AMS method: momentum, adam, rms, none"),
    b1_max: float = typer.Option(0.1, "--b1-max", help="AMS b1_max (0 gives DDIM exactly)"),
    b2: float = typer.Option(0.999, "--b2", help="AMS b2 (rms/adam)"),
    eta: float = typer.Option(0.0, "--eta", help="base-step eta (0 DDIM, 1 DDPM-small)"),
    n: int = typer.Option(4, "--n", help="number of images"),
    seed: int = typer.Option(0, "--seed"),
    prompt: str = typer.Option("", "--prompt", help="text prompt (Stable Diffusion folders only)"),
) -> None:
    """Sample ``n`` images with the chosen scheduler and save them as PNGs."""
    import torch
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from .pipelines import make_pipeline

    try:
        if scheduler == "ams":
            pipe = make_pipeline(model, method=method, b1_max=b1_max, b2=b2, eta=eta)
        elif scheduler in BASELINES:
            pipe = make_pipeline(model, b1_max=0.0)
            cls = DDIMScheduler if scheduler == "ddim" else DPMSolverMultistepScheduler
            extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if scheduler == "dpmsolver++" else {}
            pipe.scheduler = cls.from_config({**pipe.scheduler.config, **extra})
        else:
            raise AdamSamplerError(f"--scheduler={scheduler!r}: use ams or one of {BASELINES}")
    except AdamSamplerError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    generator = torch.Generator("cpu").manual_seed(seed)
    kwargs = {"num_inference_steps": steps, "generator": generator}
    if hasattr(pipe, "tokenizer"):
        kwargs |= {"prompt": [prompt] * n, "eta": eta}
    else:
        kwargs["batch_size"] = n
    images = pipe(**kwargs).images
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"{scheduler}_{steps:03d}_{i:04d}.png")
    typer.echo(f"wrote {len(images)} images to {out}")


@app.command()
def version() -> None:
    """Print the package version."""
    from . import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
