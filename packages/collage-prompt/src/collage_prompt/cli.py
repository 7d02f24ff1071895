"""Command line for collage-prompt."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import typer

from collage_prompt import __version__
from collage_prompt.errors import CollagePromptError

app = typer.Typer(help="Collage prompting for vision-language models on a budget.", no_args_is_help=True)


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CollagePromptError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _grid(text: str):
    from collage_prompt.grid import GridSpec

    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CollagePromptError(f"--grid {text!r}: use RxC, e.g. 3x3") from None
    return GridSpec(rows, cols)


def _simulator(dataset: str, seed: int):
    from collage_prompt.data import offline_dataset
    from collage_prompt.simulate import CellClassifier, SimulatedVLM

    data = offline_dataset(dataset, size=64)
    order = np.random.default_rng(seed).permutation(len(data))
    n = len(data) // 3
    clf = CellClassifier(seed=seed).fit([data.images[i] for i in order[:n]], data.labels[order[:n]])
    return data, order, n, clf, SimulatedVLM(clf, data.classes)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def _plan(
    n_images, cats, budget, target, model, table_path, sim_dataset, sim_sets, prices, cost_model
) -> None:
    from collage_prompt.plan import AccuracyTable, plan_budget, plan_for_accuracy, simulated_accuracy_table

    if budget is not None and target is not None:
        raise CollagePromptError("give --budget or --target-accuracy, not both")
    if table_path is not None:
        table = AccuracyTable.load(table_path)
    else:
        data, order, n, _, sim = _simulator(sim_dataset, 0)
        table = simulated_accuracy_table(sim, data, order[n:], n_sets=sim_sets)
    if target is not None:
        plan = plan_for_accuracy(n_images, cats, target, table, model, prices=prices, cost_model=cost_model)
        typer.echo(json.dumps(plan.to_dict(), indent=2))
        return
    plan = plan_budget(n_images, cats, budget, table, model, prices=prices, cost_model=cost_model)
    typer.echo(json.dumps(plan.to_dict(), indent=2))
    if plan.best is None:
        cheapest = min(plan.options, key=lambda o: o.usd_total)
        raise CollagePromptError(
            f"--budget {budget}: no grid labels {n_images} images within it; the cheapest is "
            f"{cheapest.grid}/{cheapest.detail} at ${cheapest.usd_total:.4f}"
        )


def _cost_model(path: Path | None):
    from collage_prompt.cost import CostModel

    return CostModel.load(path, extend_shipped=True) if path is not None else CostModel.load()


def _calibrate(model, base_url, api_key_env, sizes, out, yes, prices, cost_model) -> None:
    from collage_prompt.calibrate import DEFAULT_SIZES, PROBE_TEXT, calibrate_image_tokens, parse_sizes
    from collage_prompt.client import OpenAIChatClient
    from collage_prompt.cost import estimate_text_tokens

    chosen = parse_sizes(sizes) if sizes else list(DEFAULT_SIZES)
    if model in prices.prices:
        tokens = sum(cost_model.image_tokens(w, h, "high", model) for w, h in chosen)
        usd = prices.usd(
            tokens + (len(chosen) + 1) * estimate_text_tokens(PROBE_TEXT), 16 * len(chosen), model
        )
        typer.echo(f"{len(chosen) + 1} probe requests to {model}, estimated ${usd:.4f}", err=True)
    else:
        typer.echo(f"{len(chosen) + 1} probe requests to {model} (no price known for it)", err=True)
    if not yes:
        typer.echo("nothing sent: pass --yes to run the probe", err=True)
        raise typer.Exit(1)
    client = OpenAIChatClient(model, base_url=base_url, api_key_env=api_key_env, max_tokens=16)
    cal = calibrate_image_tokens(client, chosen, workers=1, prices=prices)
    typer.echo(json.dumps(cal.to_dict(), indent=2))
    typer.echo(f"wrote {cal.save(out)}: pass it back with --cost-model {out}", err=True)


@app.command()
@_clean_errors
def cost(
    grid: str = typer.Option("3x3", help="RxC collage grid (1x1 = standard prompting)."),
    model: str = typer.Option("gpt-4o"),
    detail: str = typer.Option("high"),
    n_images: int = typer.Option(1000, help="Images to label."),
    classes: Path = typer.Option(None, help="classes.json / classes.txt (default: 10 dummy classes)."),
    image_side: int = typer.Option(None, help="Image side in px for 1x1 (default: the collage size)."),
    prices: Path = typer.Option(None, help="Your prices.json."),
    cost_model: Path = typer.Option(
        None, help="Your image-token rules (e.g. from --calibrate); they extend the shipped cost_models.json."
    ),
    budget: float = typer.Option(
        None,
        help="USD budget: plan the grid (1x1..4x4) and detail with the best expected accuracy within it.",
    ),
    target_accuracy: float = typer.Option(
        None, help="Plan the cheapest grid (1x1..4x4) and detail whose expected accuracy reaches this."
    ),
    accuracy_table: Path = typer.Option(
        None,
        help="With --budget/--target-accuracy: your accuracy-by-grid JSON (default: the simulated VLM).",
    ),
    sim_dataset: str = typer.Option("digits", help="Offline dataset for the simulated table."),
    sim_sets: int = typer.Option(20, help="Image sets per grid for the simulated table."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Fit the endpoint's base and per-tile image tokens from blank probe images.",
    ),
    base_url: str = typer.Option(None, help="With --calibrate: OpenAI-compatible endpoint."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="With --calibrate: variable holding the key."),
    sizes: str = typer.Option(None, help="With --calibrate: probe sizes WxH,... (default 1 to 4 tiles)."),
    out: Path = typer.Option(
        Path("cost_model.calibrated.json"), help="With --calibrate: the cost-model file to write."
    ),
    yes: bool = typer.Option(False, "--yes", help="With --calibrate: send the probes after the estimate."),
) -> None:
    """Estimate tokens and USD for labelling N images with one grid; plan the grid for a --budget or a
    --target-accuracy; or --calibrate the image-token rule of an endpoint."""
    from collage_prompt.cost import PriceTable, estimate
    from collage_prompt.prompt import load_classes

    price_table, rules = PriceTable.load(prices), _cost_model(cost_model)
    if calibrate:
        _calibrate(model, base_url, api_key_env, sizes, out, yes, price_table, rules)
        return
    cats = load_classes(classes) if classes else [f"class {i}" for i in range(10)]
    if budget is not None or target_accuracy is not None:
        _plan(
            n_images,
            cats,
            budget,
            target_accuracy,
            model,
            accuracy_table,
            sim_dataset,
            sim_sets,
            price_table,
            rules,
        )
        return
    size = (image_side, image_side) if image_side else None
    est = estimate(
        _grid(grid), cats, model, detail, n_images, image_size=size, prices=price_table, cost_model=rules
    )
    typer.echo(json.dumps(asdict(est), indent=2))


@app.command()
@_clean_errors
def simulate(
    dataset: str = typer.Option("digits", help="digits, shapes or textures."),
    grid: str = typer.Option("3x3"),
    n_sets: int = typer.Option(20),
    method: str = typer.Option("random", help="random, similarity_group or similarity_separate."),
    out: Path = typer.Option(Path("collage-sim"), help="Resumable results folder."),
    seed: int = typer.Option(0),
) -> None:
    """Label offline collages with the simulated VLM and print accuracy and cost."""
    from collage_prompt.evaluate import evaluate_protocol

    data, order, n, clf, sim = _simulator(dataset, seed)
    report = evaluate_protocol(
        data,
        [_grid(grid)],
        sim,
        (method,),
        out,
        features=clf.features(data.images),
        n_sets=n_sets,
        pool=order[n:],
        seed=seed,
    )
    typer.echo(
        json.dumps(
            {
                f"{g}/{m}": {
                    "acc": r.acc,
                    "usd_per_image": r.usd_per_image,
                    "parse_success_rate": r.parse_success_rate,
                }
                for (g, m), r in report.results.items()
            },
            indent=2,
        )
    )


@app.command()
@_clean_errors
def run(
    images: Path = typer.Argument(
        ..., help="Folder root/<class>/<image> (labels are scored) or a flat folder."
    ),
    grid: str = typer.Option("3x3"),
    model: str = typer.Option("gpt-4o"),
    base_url: str = typer.Option(None, help="OpenAI-compatible endpoint (else OPENAI_BASE_URL or OpenAI)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the key."),
    detail: str = typer.Option("high"),
    template: str = typer.Option("paper-v1"),
    classes: Path = typer.Option(None, help="classes.json with names and synonyms."),
    out: Path = typer.Option(Path("collage-run"), help="Resumable results folder."),
    max_cost_usd: float = typer.Option(None),
    workers: int = typer.Option(4),
    retry_failed: bool = typer.Option(False),
    skip_bad: bool = typer.Option(False, help="Skip unreadable images instead of stopping."),
    max_reask: int = typer.Option(0, help="Re-ask a failed/partial answer with a format reminder (0 or 1)."),
    fallback: bool = typer.Option(
        False, "--fallback", help="Re-query cells with a missing or out-of-list answer one image per call."
    ),
    cost_model: Path = typer.Option(None, help="Your image-token rules (e.g. from cost --calibrate)."),
    yes: bool = typer.Option(False, "--yes", help="Send the requests after showing the estimate."),
) -> None:
    """Label an image folder with a real VLM (prints the estimate first; needs --yes). Writes the raw answers
    to OUT/results.jsonl and one line per image to OUT/labels.jsonl."""
    from collage_prompt.batch import run_batch
    from collage_prompt.client import OpenAIChatClient
    from collage_prompt.collect import collage_request
    from collage_prompt.cost import estimate
    from collage_prompt.data import ImageFolderDataset
    from collage_prompt.fallback import collage_answers, run_with_fallback

    spec = _grid(grid)
    rules = _cost_model(cost_model)
    data = ImageFolderDataset(images, classes, skip_bad)
    est = estimate(spec, data.classes, model, detail, len(data), template=template, cost_model=rules)
    typer.echo(f"{len(data)} images, {est.n_queries} requests, estimated ${est.total_usd:.4f}")
    if fallback:
        typer.echo("--fallback adds one single-image request per missing or out-of-list cell answer")
    if not yes:
        typer.echo("nothing sent: pass --yes to run")
        raise typer.Exit(1)
    client = OpenAIChatClient(
        model,
        base_url=base_url,
        api_key_env=api_key_env,
        detail=detail,
        json_mode=template == "json-v1",
        cost_model=rules,
    )
    idx = np.arange(len(data))
    sets = [idx[i : i + spec.k] for i in range(0, len(idx), spec.k)]
    requests = [
        collage_request(
            data, s, range(len(s)), spec if len(s) == spec.k else _grid(f"1x{len(s)}"), template, detail
        )
        for s in sets
    ]
    batch = {
        "workers": workers,
        "max_cost_usd": max_cost_usd,
        "retry_failed": retry_failed,
        "max_reask": max_reask,
        "categories": data.classes,
        "cost_model": rules,
    }
    try:
        if fallback:
            hybrid = run_with_fallback(requests, client, out, data, **batch)
            summaries = [hybrid.collage, *([hybrid.fallback] if hybrid.fallback else [])]
            cells = hybrid.cells
        else:
            summaries = [run_batch(requests, client, out, **batch)]
            cells = collage_answers(requests, summaries[0].records, data)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    status = next((s.status for s in reversed(summaries) if s.status != "complete"), "complete")
    answers = [a for row in cells for a in row]
    with open(out / "labels.jsonl", "w", encoding="utf-8") as f:
        for a in answers:
            name = None if a.matched is None else data.classes.names[a.matched]
            line = {"image_id": data.ids[a.image_index], "answer": a.label, "class": name, "source": a.source}
            f.write(json.dumps({**line, "fallback_reason": a.reason}) + "\n")
    correct = sum(a.matched == data.labels[a.image_index] for a in answers)
    report = {
        "status": status,
        "ok": summaries[0].n_ok,
        "failed": sum(s.n_failed for s in summaries),
        "calls": sum(s.n_calls for s in summaries),
        "reasks": sum(s.n_reasks for s in summaries),
        "cost_usd": sum(s.cost_usd for s in summaries),
        "acc": correct / max(1, len(answers)),
        "error": next((s.error for s in summaries if s.error), None),
    }
    if fallback:
        report["fallback_cells"] = len(hybrid.fallback_cells)
        report["fallback_cost_usd"] = hybrid.fallback.cost_usd if hybrid.fallback else 0.0
    typer.echo(json.dumps(report))
    if status == "interrupted":
        raise typer.Exit(130)
    if status == "aborted":
        raise typer.Exit(3)


@app.command()
@_clean_errors
def collect(
    dataset: str = typer.Option("digits"),
    grid: str = typer.Option("3x3"),
    n_sets: int = typer.Option(100),
    arrangements_per_set: int = typer.Option(4),
    out: Path = typer.Option(Path("collage-collect")),
    seed: int = typer.Option(0),
) -> None:
    """Collect predictor training data from the simulated VLM into OUT/samples.npz."""
    from collage_prompt.collect import collect_training_data

    data, order, n, clf, sim = _simulator(dataset, seed)
    samples = collect_training_data(
        data,
        _grid(grid),
        n_sets,
        arrangements_per_set,
        client=sim,
        store=out / "queries",
        features=clf.features(data.images),
        pool=order[n:],
        seed=seed,
    )
    np.savez(
        out / "samples.npz",
        feats=np.stack([s.feats for s in samples]),
        perm=np.stack([s.perm for s in samples]),
        cells=np.stack([s.cell_correct for s in samples]),
        set_id=np.array([s.set_id for s in samples]),
    )
    typer.echo(f"{len(samples)} collages -> {out / 'samples.npz'}")


@app.command("train-predictor")
@_clean_errors
def train_predictor_cmd(
    samples: Path = typer.Argument(..., help="samples.npz from `collect`."),
    grid: str = typer.Option("3x3"),
    out: Path = typer.Option(Path("collage-predictor")),
    epochs: int = typer.Option(60),
    kind: str = typer.Option("collage_gcn", help="collage_gcn or official_like."),
) -> None:
    """Train an arrangement predictor (resumes from OUT)."""
    from collage_prompt.predictor import CollageSample, PredictorConfig, train_predictor

    if not samples.is_file():
        raise CollagePromptError(f"{samples}: not found")
    z = np.load(samples, allow_pickle=False)
    items = [
        CollageSample(f, p, c, float(c.mean()), int(s))
        for f, p, c, s in zip(z["feats"], z["perm"], z["cells"], z["set_id"], strict=False)
    ]
    spec = _grid(grid)
    train_predictor(
        items, (spec.rows, spec.cols), PredictorConfig(kind=kind, epochs=epochs, progress=True), out
    )
    typer.echo(f"predictor -> {out}")


@app.command()
@_clean_errors
def optimize(
    images: list[Path] = typer.Argument(..., help="Exactly R*C image files."),
    grid: str = typer.Option("3x3"),
    predictor: Path = typer.Option(
        None, help="Folder from train-predictor (features: fitted on these images)."
    ),
    method: str = typer.Option("auto", help="auto, exhaustive, ga or swap."),
    out: Path = typer.Option(Path("collage.png")),
) -> None:
    """Arrange K images (learned predictor, else grouping by similarity) and write the collage."""
    from PIL import Image

    from collage_prompt.features import HandcraftedFeatures
    from collage_prompt.grid import render_collage
    from collage_prompt.optimize import optimize_arrangement, predictor_scorer, similarity_scorer
    from collage_prompt.predictor import load_predictor

    spec = _grid(grid)
    if len(images) != spec.k:
        raise CollagePromptError(f"{len(images)} images given for a {grid} grid ({spec.k} needed)")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise CollagePromptError(f"missing image files: {', '.join(missing)}")
    pics = [Image.open(p).convert("RGB") for p in images]
    feats = HandcraftedFeatures(dim=min(64, spec.k)).fit(pics)(pics)
    scorer = (
        predictor_scorer(load_predictor(predictor), feats) if predictor else similarity_scorer(feats, spec)
    )
    best = optimize_arrangement(feats, scorer, spec, method)
    collage, _ = render_collage(pics, best.perm, spec)
    collage.save(out)
    typer.echo(json.dumps({"perm": best.perm.tolist(), "score": best.score, "collage": str(out)}))


@app.command()
@_clean_errors
def evaluate(
    dataset: str = typer.Option("digits"),
    grids: str = typer.Option("2x2,3x3"),
    n_sets: int = typer.Option(20),
    out: Path = typer.Option(Path("collage-eval")),
    seed: int = typer.Option(0),
) -> None:
    """Standard vs collage prompting (random and similarity arrangements) on the simulated VLM; prints the
    accuracy and cost per grid/method and writes OUT/report.json + OUT/report.html."""
    from collage_prompt.evaluate import evaluate_protocol
    from collage_prompt.report import write_evaluation_report

    data, order, n, clf, sim = _simulator(dataset, seed)
    specs = [_grid(g) for g in grids.split(",")]
    report = evaluate_protocol(
        data,
        specs,
        sim,
        ("random", "similarity_group"),
        out,
        features=clf.features(data.images),
        n_sets=n_sets,
        pool=order[n:],
        seed=seed,
    )
    typer.echo(
        json.dumps(
            {
                f"{g}/{m}": {"acc": r.acc, "usd_per_image": r.usd_per_image}
                for (g, m), r in report.results.items()
            },
            indent=2,
        )
    )
    html_path, json_path = write_evaluation_report(
        report,
        out,
        title=f"collage-prompt evaluation: {dataset}, {grids}",
        notes=[
            f"Simulated VLM (offline) on the {dataset} dataset, seed {seed}: its classifier is fitted on a third "
            f"of the images, {n_sets} test sets per grid come from the rest. Costs use the simulator's usage "
            "at gpt-4o prices; the figures are not comparable to a real VLM.",
        ],
    )
    typer.echo(f"wrote {html_path} and {json_path}", err=True)
