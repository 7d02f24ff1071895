"""The ``screenlab`` command: demo, run, version.

Bad input prints one ``error:`` line and exits with status 1; a run stopped by Ctrl-C exits 130 and one
aborted by the endpoint (bad key, unknown model, no quota) exits 3.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from difflab_core.cli import one_line_errors
from screenlab import __version__

app = typer.Typer(
    add_completion=False,
    help="Screen image collections: cheap labels by collage prompting and face-forgery flags from a distilled detector.",
    no_args_is_help=True,
)


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _headline(figures: dict) -> list[str]:
    c, alone, labels = figures["collage"], figures["one_per_call"], figures["labels"]
    lines = [
        f"  collages: {c['requests']} requests, {c['calls']} calls, {c['prompt_tokens'] + c['completion_tokens']} "
        f"tokens, ${c['usd']:.4f}; accuracy {_fmt(labels['accuracy'])} on {labels['n_with_truth']} known images",
    ]
    if "requests" in alone:
        lines.append(
            f"  one image per call: {alone['requests']} requests, ${alone['usd']:.4f}; accuracy {_fmt(alone['accuracy'])}"
            f"; collage/alone cost {_fmt(figures.get('cost_ratio_measured'))}"
        )
    lines.append(
        f"  cost-model estimate: collages ${_fmt(c['usd_estimate'], '.4f')} vs one per call "
        f"${_fmt(alone['usd_estimate'], '.4f')} (ratio {_fmt(figures['cost_ratio_estimate'])})"
    )
    if "forgery" in figures:
        f = figures["forgery"]
        lines.append(
            f"  forgery: {f['n_flagged']} of {f['n_scored']} flagged; AUC {_fmt(f['auc'])} on {f['n_known']} images "
            "with known truth"
        )
    return lines


@app.command()
@one_line_errors(interrupted="finished rows are saved; rerun the same command to continue")
def demo(
    quick: bool = typer.Option(
        False, "--quick", help="a smaller set and shorter training (about a minute or two on CPU)"
    ),
    out: Path = typer.Option(
        Path("screenlab-demo"), "--out", "-o", help="folder for the report and the cache"
    ),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="a real OpenAI-compatible endpoint instead of the simulated VLM (key: --api-key-env)",
    ),
    model: str = typer.Option(
        "gpt-4o", "--model", help="model to ask (and whose prices and token rules apply)"
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY",
        "--api-key-env",
        help="environment variable holding the key (never pass the key itself)",
    ),
    grid: int = typer.Option(3, "--grid", help="collages of GRID x GRID images"),
    max_cost_usd: float = typer.Option(1.0, "--max-cost-usd", help="stop sending requests past this spend"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps (detector inference)"),
) -> None:
    """Screen bundled images and synthetic forgeries: labels by collages, forgery flags, cost; writes a report.

    Reruns reuse what is cached in OUT (an interrupted run resumes)."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=out,
        quick=quick,
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        grid=grid,
        max_cost_usd=max_cost_usd,
        device=device,
    )
    result = run_demo(cfg)
    for note in result.notes[:1]:
        typer.echo(note)
    typer.echo(f"report: {result.report_html}")
    typer.echo(f"figures: {result.report_json}")
    for line in _headline(result.figures):
        typer.echo(line)
    _exit_for(result.result)


def _exit_for(result) -> None:
    if result.status == "interrupted":
        typer.echo("interrupted: finished rows are saved; rerun the same command to continue", err=True)
        raise typer.Exit(130)
    if result.status == "aborted":
        typer.echo(f"error: the endpoint stopped the run: {result.error}", err=True)
        raise typer.Exit(3)
    if result.status == "budget_reached":
        typer.echo("budget reached: some images have no label; raise --max-cost-usd and rerun to continue")


@app.command()
@one_line_errors(interrupted="finished rows are saved; rerun the same command to continue")
def run(
    folder: Path = typer.Argument(
        ..., help="images to screen (also in sub-folders; folder/<category>/ gives truth)"
    ),
    out: Path = typer.Option(Path("screenlab-run"), "--out", "-o", help="run folder (resumable)"),
    base_url: str | None = typer.Option(
        None, "--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1"
    ),
    simulate: bool = typer.Option(
        False,
        "--simulate",
        help="no endpoint: a dry run on collage-prompt's simulated VLM, fitted on folder/<category>/",
    ),
    model: str = typer.Option(
        "gpt-4o", "--model", help="model name at the endpoint (prices and token rules)"
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY",
        "--api-key-env",
        help="environment variable holding the key (never pass the key itself)",
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="categories a,b,c (default: the sub-folder names)"
    ),
    detector: Path | None = typer.Option(
        None, "--detector", help="forgery-kd detector folder (config.json + model.safetensors)"
    ),
    grid: int = typer.Option(3, "--grid", help="collages of GRID x GRID images"),
    detail: str = typer.Option("high", "--detail", help="image detail: high, low or auto"),
    template: str = typer.Option("paper-v1", "--template", help="prompt: paper-v1 or json-v1"),
    baseline: bool = typer.Option(
        False, "--baseline", help="also label every image alone, to measure the saving"
    ),
    max_cost_usd: float | None = typer.Option(
        None, "--max-cost-usd", help="stop sending requests past this spend"
    ),
    prices: Path | None = typer.Option(
        None, "--prices", help="your prices.json (model -> USD per 1M tokens)"
    ),
    workers: int = typer.Option(4, "--workers", help="requests in flight"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="resend requests that failed before"),
    new_run: bool = typer.Option(False, "--new-run", help="start over when the settings changed"),
    device: str = typer.Option("auto", "--device", help="detector device: auto, cpu, cuda, mps"),
) -> None:
    """Label a folder of images by collage prompting and flag face forgeries; resumable, with a report."""
    from .run import run_folder
    from .screen import ScreenConfig

    cfg = ScreenConfig(
        grid=grid,
        detail=detail,
        template=template,
        baseline=baseline,
        max_cost_usd=max_cost_usd,
        workers=1 if simulate else workers,
        retry_failed=retry_failed,
        new_run=new_run,
    )
    outcome = run_folder(
        folder,
        out,
        base_url=base_url,
        simulate=simulate,
        model=model,
        api_key_env=api_key_env,
        labels=labels,
        detector=detector,
        prices=prices,
        device=device,
        config=cfg,
    )
    for note in outcome.notes:
        typer.echo(note)
    typer.echo(f"report: {outcome.report_html}")
    for line in _headline(outcome.result.figures):
        typer.echo(line)
    _exit_for(outcome.result)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
