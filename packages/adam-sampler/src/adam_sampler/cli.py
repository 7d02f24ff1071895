"""The ``adam-sampler`` command line: ``sample`` from a local diffusers folder with AMS or a baseline,
``compare`` samplers on a model with a proxy or real FID (resumable), ``version``."""

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
    base_sampler: str = typer.Option("ddim", "--base-sampler", help="AMS base step: ddim or ddpm_large"),
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
            pipe = make_pipeline(
                model, method=method, b1_max=b1_max, b2=b2, eta=eta, base_sampler=base_sampler
            )
        elif scheduler in BASELINES:
            pipe = make_pipeline(model, b1_max=0.0)
            cls = DDIMScheduler if scheduler == "ddim" else DPMSolverMultistepScheduler
            extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if scheduler == "dpmsolver++" else {}
            pipe.scheduler = cls.from_config({**pipe.scheduler.config, **extra})
        else:
            raise AdamSamplerError(f"--scheduler={scheduler!r}: use ams or one of {BASELINES}")
    except (ValueError, OSError) as err:  # AdamSamplerError, DifflabError, unreadable folders
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


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise AdamSamplerError(f"{option} {text!r}: use comma-separated integers, e.g. 10,20,50") from err
    if not values or min(values) < 1:
        raise AdamSamplerError(f"{option} {text!r}: give at least one integer >= 1")
    return values


@app.command()
def compare(
    model: Path = typer.Option(
        ..., "--model", help="local unconditional diffusers folder (e.g. DDPMPipeline)"
    ),
    out: Path = typer.Option(
        ..., "--out", help="results folder (cells.jsonl resumes; report.json, report.html)"
    ),
    nfe: str = typer.Option("10,20,50", "--nfe", help="comma list of step counts"),
    samplers: str = typer.Option(
        "ddim,ams,ams_adam,dpmsolverpp", "--samplers", help="comma list of: ddim, ams, ams_adam, dpmsolverpp"
    ),
    features: str = typer.Option("digits", "--features", help="digits, torchscript:PATH or inception:PATH"),
    ref_stats: Path | None = typer.Option(
        None, "--ref-stats", help=".npz with mu, sigma of the reference set (default for digits: real digits)"
    ),
    n: int = typer.Option(256, "--n", help="samples per cell"),
    seeds: int = typer.Option(1, "--seeds", help="number of seeds per cell (0, 1, ...)"),
    b1_max: float = typer.Option(0.1, "--b1-max", help="b1_max of the AMS samplers"),
    spacing: str = typer.Option(
        "", "--spacing", help="timestep_spacing for every sampler (default: the model's)"
    ),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Compare samplers by the Fréchet distance of their samples' features to reference statistics."""
    from rich.progress import Progress

    from difflab_core.errors import DifflabError
    from difflab_core.report import HtmlReport, write_json

    from .compare import DEFAULT_SAMPLERS, SchedulerSpec, compare_samplers
    from .features import digits_reference_stats, load_reference_stats, resolve_features
    from .pipelines import load_unconditional

    try:
        nfes = _parse_ints(nfe, "--nfe")
        names = [s.strip() for s in samplers.split(",") if s.strip()]
        unknown = sorted(set(names) - set(DEFAULT_SAMPLERS))
        if unknown or not names:
            raise AdamSamplerError(
                f"--samplers {samplers!r}: unknown {unknown}; use {sorted(DEFAULT_SAMPLERS)}"
            )
        if n < 2 or seeds < 1:
            raise AdamSamplerError(f"--n {n} / --seeds {seeds}: need n >= 2 and seeds >= 1")
        specs = {}
        for name in names:
            spec = DEFAULT_SAMPLERS[name]
            if spec.kind == "ams":
                spec = SchedulerSpec("ams", {**spec.options, "b1_max": b1_max}, spec.eta)
            specs[name] = spec
        unet, base = load_unconditional(model, device)
        if spacing:
            base["timestep_spacing"] = spacing
        feature_fn = resolve_features(features, next(unet.parameters()).device)
        if ref_stats is not None:
            stats, reference = load_reference_stats(ref_stats), str(ref_stats)
        elif features == "digits":
            stats, reference = digits_reference_stats(feature_fn), "the 1797 scikit-learn digits"
            typer.echo("no --ref-stats: digits proxy against the real digits (a proxy, not FID)")
        else:
            raise AdamSamplerError(f"--features {features}: pass --ref-stats PATH (.npz with mu, sigma)")
        cells = len(specs) * len(nfes) * seeds
        with Progress(transient=True) as progress:
            task = progress.add_task("sampling", total=cells)
            result = compare_samplers(
                unet,
                base,
                specs,
                nfes,
                n=n,
                seeds=tuple(range(seeds)),
                feature_fn=feature_fn,
                real_stats=stats,
                reference="ddim" if "ddim" in specs else None,
                batch_size=batch_size,
                out_dir=out,
                run_tag=f"{Path(model).resolve()}|{features}|{reference}",
                on_cell=lambda record: progress.advance(task),
            )
    except (AdamSamplerError, DifflabError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    report = {
        "model": str(model),
        "features": features,
        "reference": reference,
        "n": n,
        "seeds": seeds,
        "nfes": list(nfes),
        "samplers": {name: spec.describe() for name, spec in specs.items()},
        "fid": result["fid"],
        "ratios_vs_ddim": result["ratios"],
        "resumed_cells": result["resumed"],
    }
    write_json(out / "report.json", report)
    rows = [
        {
            "sampler": name,
            "NFE": int(k),
            "FD mean": cell["mean"],
            "FD std": cell["std"],
            "ratio vs ddim": result["ratios"].get(name, {}).get(k),
        }
        for name, by_nfe in result["fid"].items()
        for k, cell in by_nfe.items()
    ]
    html = HtmlReport("adam-sampler compare").add_text(
        f"model {model}; features {features}; reference {reference}; n = {n}, seeds = {seeds}"
    )
    html.add_table(rows).save(out / "report.html")
    for row in rows:
        typer.echo(f"{row['sampler']:>12} NFE {row['NFE']:>4}: {row['FD mean']:.4g} ± {row['FD std']:.2g}")
    typer.echo(f"wrote {out / 'report.json'} and {out / 'report.html'} ({result['resumed']} cells resumed)")


@app.command()
def version() -> None:
    """Print the package version."""
    from . import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
