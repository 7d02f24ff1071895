"""The ``genlab`` command: ``demo``, ``adapt``, ``sample``, ``compare``, ``version``.

Bad input prints one ``error:`` line and exits with status 1.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from difflab_core.cli import one_line_errors
from genlab import __version__
from tan_transfer.cli import train as tan_train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Few-shot adaptation (tan-transfer), fast samplers (adam-sampler) and cheap guidance (guidance-kit).",
)


app.command(
    "adapt",
    help="Adapt a local model to a folder of about ten target images with TAN (tan-transfer's `train`); the "
    "run folder's adapter/ is what `genlab sample --adapter` and `genlab compare --adapter` take.",
)(tan_train)


def _ints(text: str, option: str) -> tuple[int, ...]:
    from difflab_core.errors import DifflabError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise DifflabError(f"{option} {text!r}: give a comma list of positive integers, e.g. 10,20,50")
    return values


@app.command()
@one_line_errors()
def demo(
    quick: bool = typer.Option(
        False, "--quick", help="the two-minute version (fewer iterations and samples)"
    ),
    out: Path = typer.Option(
        Path("genlab-demo"), "--out", help="folder for report.html, report.json, cache/"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Digits DDPM (0–4) → 10-shot TAN transfer to 9s → DDIM vs AMS vs DPM-Solver++ → full vs Compress Guidance."""
    from difflab_core.device import resolve_device

    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.preset(quick, out=str(out), device=str(resolve_device(device)), seed=seed)
    figures = run_demo(cfg)["figures"]
    a, g = figures["adapt"], figures["guidance"]
    typer.echo(
        f"transfer to 9s: proxy FID source {a['source_only']['proxy_fid']:.1f} → adapter "
        f"{a['finetune_adapter']['proxy_fid']:.1f} → TAN {a['tan_adapter']['proxy_fid']:.1f}"
    )
    for name, cells in figures["samplers_fd"].items():
        typer.echo(f"{name:>6}: " + ", ".join(f"{nfe} steps {fd:.1f}" for nfe, fd in cells.items()))
    typer.echo(
        f"guidance: accuracy full {g['accuracy_full']:.2f} ({g['classifier_calls_full']} classifier calls), "
        f"compress {g['accuracy_compress']:.2f} ({g['classifier_calls_compress']} calls)"
    )
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
@one_line_errors()
def sample(
    model: Path = typer.Option(..., "--model", help="local diffusers folder (UNet2DModel or a pipeline)"),
    out: Path = typer.Option(..., "--out", help="folder for the PNGs, grid.png and samples.json"),
    adapter: Path | None = typer.Option(None, "--adapter", help="tan-transfer adapter folder to attach"),
    scheduler: str = typer.Option("ams", "--scheduler", help="ddim, ams (adam-sampler) or dpmpp"),
    steps: int = typer.Option(20, "--steps"),
    n: int = typer.Option(16, "--n", help="number of images"),
    seed: int = typer.Option(0, "--seed"),
    guidance: str = typer.Option("none", "--guidance", help="none, full (every step) or compress"),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="noisy classifier folder (guidance-kit train_noisy_classifier)"
    ),
    label: int | None = typer.Option(None, "--label", help="class to guide toward (classifier guidance)"),
    scale: float = typer.Option(5.0, "--scale", help="classifier-guidance scale"),
    prompt: str | None = typer.Option(None, "--prompt", help="text prompt (text-conditional pipelines)"),
    guidance_scale: float = typer.Option(
        7.5, "--guidance-scale", help="CFG scale (text-conditional pipelines)"
    ),
    skip: int = typer.Option(5, "--skip", help="Compress Guidance: guide on about 1 step in skip"),
    k: float = typer.Option(2.0, "--k", help="Compress Guidance: how early the guided steps cluster"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Sample a local model with a chosen sampler and guidance; writes PNGs, a grid and samples.json."""
    from difflab_core.report import image_grid, to_pil, write_json

    from .models import load_model
    from .sampling import SampleRequest, generate

    bundle, _ = load_model(model, adapter, device=device)
    req = SampleRequest(
        scheduler=scheduler,
        steps=steps,
        n=n,
        seed=seed,
        guidance=guidance,
        classifier_dir=None if classifier is None else str(classifier),
        label=label,
        scale=scale,
        guidance_scale=guidance_scale,
        skip=skip,
        k=k,
        prompt=prompt,
    )
    images, info = generate(bundle, req)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        path = out / f"sample_{i:04d}.png"
        to_pil(image).save(path)
        files.append(path.name)
    image_grid(list(images), 8).save(out / "grid.png")
    write_json(out / "samples.json", {"model": str(model), "adapter": adapter, **info, "files": files})
    typer.echo(f"wrote {len(files)} images, grid.png and samples.json to {out}")


@app.command()
@one_line_errors()
def compare(
    model: Path = typer.Option(..., "--model", help="local unconditional diffusers folder (UNet2DModel)"),
    out: Path = typer.Option(
        ..., "--out", help="results folder (cells.jsonl resumes; report.json, report.html)"
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="tan-transfer adapter folder to attach"),
    samplers: str = typer.Option("ddim,ams,dpmpp", "--samplers", help="comma list of ddim, ams, dpmpp"),
    nfe: str = typer.Option("10,20,50", "--nfe", help="comma list of step counts"),
    n: int = typer.Option(256, "--n", help="samples per cell"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per cell (0, 1, ...)"),
    features: str = typer.Option("digits", "--features", help="digits, torchscript:PATH or inception:PATH"),
    reference: Path | None = typer.Option(
        None, "--reference", help="folder of real images whose features are the reference (else --ref-stats)"
    ),
    ref_stats: Path | None = typer.Option(
        None, "--ref-stats", help=".npz with mu and sigma of the reference set"
    ),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Fréchet distance of each sampler's samples to a reference set, at each step count (resumable)."""
    from rich.progress import Progress

    from adam_sampler import compare_samplers
    from adam_sampler.compare import feature_stats
    from adam_sampler.features import load_reference_stats, resolve_features
    from difflab_core.errors import DifflabError
    from difflab_core.report import HtmlReport, write_json

    from .models import load_model
    from .sampling import SAMPLERS, scheduler_spec

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    if not names or set(names) - set(SAMPLERS):
        raise DifflabError(f"--samplers {samplers!r}: use a comma list of {', '.join(SAMPLERS)}")
    nfes = _ints(nfe, "--nfe")
    if n < 2 or seeds < 1:
        raise DifflabError(f"--n {n} / --seeds {seeds}: need n ≥ 2 and seeds ≥ 1")
    if (reference is None) == (ref_stats is None):
        raise DifflabError("give exactly one of --reference DIR (real images) and --ref-stats FILE.npz")
    bundle, _ = load_model(model, adapter, device=device)
    if bundle.conditional or bundle.latent_kind is not None:
        raise DifflabError(f"{model}: genlab compare takes unconditional pixel models (UNet2DModel)")
    feature_fn = resolve_features(features, bundle.device)
    if reference is not None:
        from tan_transfer import load_image_folder

        real = load_image_folder(reference, bundle.image_size, bundle.image_channels)
        stats = feature_stats(feature_fn(((real + 1) / 2).clamp(0, 1)))
        ref_name = f"{reference} ({len(real)} images)"
    else:
        stats, ref_name = load_reference_stats(ref_stats), str(ref_stats)
    specs = {name: scheduler_spec(name) for name in names}
    with Progress(transient=True) as progress:
        task = progress.add_task("sampling", total=len(specs) * len(nfes) * seeds)
        result = compare_samplers(
            bundle.unet,
            dict(bundle.noise_scheduler.config),
            specs,
            nfes,
            n=n,
            seeds=tuple(range(seeds)),
            feature_fn=feature_fn,
            real_stats=stats,
            reference="ddim" if "ddim" in specs else None,
            out_dir=out,
            run_tag=f"{Path(model).resolve()}|{adapter}|{features}|{ref_name}",
            on_cell=lambda record: progress.advance(task),
        )
    figures = {"fd": {s: {k: c["mean"] for k, c in cells.items()} for s, cells in result["fid"].items()}}
    figures["ratio_vs_ddim"] = result["ratios"]
    write_json(
        out / "report.json",
        {"figures": figures, "model": str(model), "adapter": adapter, "reference": ref_name},
    )
    rep = HtmlReport("genlab compare").add_text(
        f"model {model}; adapter {adapter}; features {features}; reference {ref_name}; n = {n}, seeds = {seeds}"
    )
    series = {s: ([int(k) for k in cells], list(cells.values())) for s, cells in figures["fd"].items()}
    rep.add_plot(
        series, title="Fréchet distance by number of steps", xlabel="steps", ylabel="Fréchet distance"
    )
    rep.add_figures(figures).save(out / "report.html")
    for name, cells in figures["fd"].items():
        typer.echo(f"{name:>6}: " + ", ".join(f"{k} steps {v:.4g}" for k, v in cells.items()))
    typer.echo(f"wrote {out / 'report.json'} and {out / 'report.html'} ({result['resumed']} cells resumed)")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
