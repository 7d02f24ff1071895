"""The ``mem-locate`` command line (typer): locate, audit, eval-detect, eval-localize, measure, mitigate,
report, version."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import typer

from .errors import MemLocateError, core_errors

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Bright Ending: find, score and report memorization."
)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _load(model: Path, unet: Path | None, device: str, dtype: str):
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    from difflab_core.loading import load_pipeline

    from .localize import check_pipeline

    with core_errors(str(model)):
        pipe = load_pipeline(model, unet=unet, device=device, dtype=dtype)
    check_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _window(text: str | None) -> tuple[int, int | None]:
    if not text:
        return (0, None)
    try:
        a, b = text.split(":")
        return int(a or 0), (int(b) if b else None)
    except ValueError as err:
        raise MemLocateError(f"--window {text!r}: use START:STOP, e.g. 0:5") from err


@app.command()
def version() -> None:
    """Print the package version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
def locate(
    model: Path = typer.Argument(..., help="diffusers pipeline folder"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="prompt (repeatable)"),
    out: Path = typer.Option(Path("locate-out"), "--out", "-o"),
    steps: int = typer.Option(50, "--steps"),
    scale: float = typer.Option(7.5, "--scale"),
    n: int = typer.Option(1, "--n", help="images per prompt"),
    seed: int = typer.Option(0, "--seed"),
    layers: str = typer.Option("down-highest", "--layers"),
    unet: Path | None = typer.Option(None, "--unet"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Generate each prompt and save its BE map, a heatmap overlay and an Otsu mask."""
    try:
        from difflab_core.report import to_pil, write_json

        from .detect import _safe_name, _save_tensors
        from .localize import BrightEnding, overlay

        pipe = _load(model, unet, device, dtype)
        res = BrightEnding(pipe, layers=layers)(
            prompt, num_inference_steps=steps, guidance_scale=scale, num_images_per_prompt=n, seed=seed
        )
        out.mkdir(parents=True, exist_ok=True)
        size = tuple(res.images.shape[-2:])
        masks = res.binarize("otsu", size=size)
        summary = []
        for i, p in enumerate(prompt):
            for j in range(n):
                b = i * n + j
                stem = f"{_safe_name(str(i))}_{j}"
                to_pil(res.images[b].float().cpu()).save(out / f"{stem}.png")
                overlay(res.images[b].float().cpu(), res.maps[b], out / f"{stem}_overlay.png")
                to_pil(masks[b]).save(out / f"{stem}_mask.png")
                summary.append(
                    {
                        "prompt": p,
                        "image": j,
                        "seed": res.seeds[i],
                        "eos_index": int(res.eos_index[b]),
                        "files": [f"{stem}.png", f"{stem}_overlay.png", f"{stem}_mask.png"],
                    }
                )
        _save_tensors(out / "maps.safetensors", {"be_map": res.maps.contiguous()})
        write_json(out / "locate.json", {"layers": res.layers, "timestep": res.timestep, "items": summary})
        typer.echo(f"wrote {len(summary)} maps to {out}")
    except MemLocateError as err:
        _fail(err)


@app.command()
def audit(
    model: Path = typer.Argument(..., help="diffusers pipeline folder"),
    prompts: list[Path] = typer.Argument(..., help="prompt files (.jsonl/.txt/.csv/.parquet)"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (results.jsonl, maps/, config.json)"),
    label: int | None = typer.Option(None, "--label", help="default label for records without label/type"),
    steps: int = typer.Option(50, "--steps"),
    scale: float = typer.Option(7.5, "--scale"),
    n: int = typer.Option(4, "--n"),
    seed: int = typer.Option(0, "--seed"),
    methods: str = typer.Option("be,wen", "--methods", help="comma list of be, wen, ren"),
    ren_modes: str = typer.Option("le", "--ren-modes"),
    batch_prompts: int = typer.Option(1, "--batch-prompts"),
    new_run: bool = typer.Option(False, "--new-run", help="start over when the config changed"),
    unet: Path | None = typer.Option(None, "--unet"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Score prompts for memorization (resumable)."""
    try:
        from .data import load_prompts
        from .detect import AuditConfig, Auditor

        records = []
        for path in prompts:
            records.extend(load_prompts(path, label=label))
        keys = [r.key for r in records]
        if len(set(keys)) != len(keys) and len(prompts) > 1:
            for k, path in enumerate(prompts):  # keys of several files are made unique by file index
                for r in records:
                    if r.source.startswith(f"{path}:"):
                        r.key = f"{k}:{r.key}"
        cfg = AuditConfig(
            num_inference_steps=steps,
            guidance_scale=scale,
            num_images_per_prompt=n,
            gen_seed=seed,
            dtype=dtype,
            batch_prompts=batch_prompts,
            methods=tuple(methods.split(",")),
            ren_modes=tuple(ren_modes.split(",")),
        ).validate()
        pipe = _load(model, unet, device, dtype)
        result = Auditor(pipe, cfg).run(records, out, new_run=new_run, progress=True)
        typer.echo(f"{len(result.records)} prompts scored in {out}")
    except MemLocateError as err:
        _fail(err)


@app.command("eval-detect")
def eval_detect(
    run_dir: Path = typer.Argument(..., help="audit run folder"),
    window: str | None = typer.Option(None, "--window", help="steps START:STOP (default all)"),
    n: int | None = typer.Option(None, "--n", help="use the first n images per prompt"),
    rule: str = typer.Option("last_below", "--rule", help="last_below (Wen) or closest (Ren)"),
    fpr: float = typer.Option(0.01, "--fpr"),
) -> None:
    """AUC and TPR@FPR per method and subset (global, local, all), re-scored from stored curves."""
    try:
        metrics = detect_metrics(run_dir, _window(window), n, rule, fpr)
        from difflab_core.report import write_json

        write_json(run_dir / "metrics.json", metrics)
        typer.echo(json.dumps(metrics, indent=2))
    except MemLocateError as err:
        _fail(err)


def detect_metrics(run_dir: Path, window=(0, None), n=None, rule="last_below", fpr=0.01) -> dict:
    from .data import load_run
    from .detect import aggregate
    from .evaluate import detection_table

    run = load_run(run_dir)
    records = [r for r in run.records if not r.get("nonfinite")]
    if not records:
        raise MemLocateError(f"{run_dir}: no usable records")
    methods = [
        m
        for m, f in (
            ("be", "be"),
            ("wen", "wen"),
            ("wen1", "wen"),
            ("ren_le", "ren_le"),
            ("ren_ae", "ren_ae"),
        )
        if records[0].get(f) is not None
    ]
    scores = {m: aggregate(records, m, window if m != "wen1" else (0, None), n) for m in methods}
    return {
        "n_records": len(records),
        "window": list(window),
        "n": n,
        "rule": rule,
        **detection_table(records, scores, fpr=fpr, rule=rule),
    }


@app.command("eval-localize")
def eval_localize(
    run_dir: Path = typer.Argument(..., help="audit run folder with stored maps"),
    masks: Path = typer.Option(..., "--masks", help="folder with masks/{key}.png"),
    size: int = typer.Option(256, "--size"),
) -> None:
    """The §2.7 localization protocol on stored maps (the first image of each prompt) and template masks."""
    try:
        from .data import load_masks, load_run
        from .evaluate import localization_metrics

        run = load_run(run_dir)
        recs = [r for r in run.records if r.get("map_file")]
        loaded = load_masks(masks, [str(r["key"]) for r in recs])
        maps, gts = [], []
        for r in recs:
            m = loaded[str(r["key"])]
            m = next(iter(m.values())) if isinstance(m, dict) else m
            maps.append(run.map(r["key"])[0])
            gts.append(m)
        from .localize import upsample_map

        gts = [upsample_map(g, size) for g in gts]
        out = localization_metrics(
            [upsample_map(m, size) for m in maps],
            gts,
            size=size,
            groups=[r["key"] for r in recs],
            strata=[r.get("type") for r in recs],
        )
        typer.echo(json.dumps(out, indent=2))
    except MemLocateError as err:
        _fail(err)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="audit run folder"),
    top: int = typer.Option(8, "--top", help="prompts shown with their maps"),
    out: Path | None = typer.Option(None, "--out", help="default: RUN_DIR/report.html"),
) -> None:
    """A self-contained HTML report: metrics, top prompts with BE maps, per-step curves."""
    try:
        import numpy as np
        import torch

        from difflab_core.report import HtmlReport

        from .data import load_run
        from .detect import aggregate
        from .localize import overlay

        run = load_run(run_dir)
        records = [r for r in run.records if not r.get("nonfinite")]
        if not records:
            raise MemLocateError(f"{run_dir}: no usable records")
        rep = HtmlReport(f"mem-locate audit: {run_dir.name}")
        rep.add_json(run.config, summary="config.json")
        try:
            metrics = detect_metrics(run_dir)
            rep.add_heading("Detection")
            rep.add_table([{"metric": k, "value": v} for k, v in metrics.items() if k.startswith("det_")])
        except MemLocateError as err:
            rep.add_text(f"detection metrics unavailable: {err}")
        method = "be" if records[0].get("be") is not None else "wen"
        scores = aggregate(records, method)
        order = np.argsort(-scores)[:top]
        rep.add_heading(f"Top {len(order)} prompts by {method} score")
        rep.add_table(
            [
                {
                    "key": records[i]["key"],
                    "prompt": records[i]["prompt"],
                    "label": records[i].get("label"),
                    "kind": records[i].get("kind"),
                    method: float(scores[i]),
                }
                for i in order
            ]
        )
        imgs, caps = [], []
        for i in order:
            if records[i].get("map_file"):
                m = run.map(records[i]["key"])[0]
                imgs.append(overlay(torch.full((3, 128, 128), 0.5), m))
                caps.append(str(records[i]["key"]))
        if imgs:
            rep.add_images(imgs, caps, width=128)
        steps = records[0]["steps"]
        series = {}
        for lab in sorted({r.get("label") for r in records}, key=str):
            group = [np.mean(r[method], axis=0) for r in records if r.get("label") == lab]
            series[f"label={lab}"] = (steps, np.mean(group, axis=0).tolist())
        rep.add_plot(series, title=f"mean {method} magnitude per step", xlabel="step", ylabel=method)
        path = rep.save(out or run_dir / "report.html")
        typer.echo(f"wrote {path}")
    except MemLocateError as err:
        _fail(err)


@app.command()
def mitigate(
    model: Path = typer.Argument(..., help="diffusers pipeline folder"),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    out: Path = typer.Option(Path("mitigate-out"), "--out", "-o"),
    method: str = typer.Option("be-pe", "--method", help="be-pe, pe, prss or be-prss"),
    paraphrase: list[str] = typer.Option([], "--paraphrase", help="PRSS candidates (repeatable)"),
    steps: int = typer.Option(50, "--steps"),
    scale: float = typer.Option(7.5, "--scale"),
    n: int = typer.Option(1, "--n", help="images"),
    seed: int = typer.Option(0, "--seed"),
    target_loss: str = typer.Option(
        "1.0", "--target-loss", help="PE stops below this step-0 loss; 'auto' reads it from --audit RUN_DIR"
    ),
    audit_dir: Path | None = typer.Option(
        None, "--audit", help="audit run folder (for --target-loss auto: 95th percentile of clean prompts)"
    ),
    iterations: int = typer.Option(10, "--iterations"),
    unet: Path | None = typer.Option(None, "--unet"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Generate PROMPT with mitigation and save the images, the loss before/after and the mask used."""
    try:
        from difflab_core.report import to_pil, write_json

        from .localize import overlay
        from .mitigate import MitigationConfig, auto_target_loss
        from .mitigate import mitigate as run_mitigation

        if target_loss == "auto":
            if audit_dir is None:
                raise MemLocateError(
                    "--target-loss auto needs --audit RUN_DIR (an audit with label-0 prompts)"
                )
            from .data import load_run

            loss_target = auto_target_loss(load_run(audit_dir).records, masked=method.startswith("be-"))
        else:
            try:
                loss_target = float(target_loss)
            except ValueError as err:
                raise MemLocateError(f"--target-loss {target_loss!r}: use a number or 'auto'") from err
        pipe = _load(model, unet, device, dtype)
        config = MitigationConfig(
            num_inference_steps=steps,
            guidance_scale=scale,
            num_images_per_prompt=n,
            target_loss=loss_target,
            iterations=iterations,
        )
        res = run_mitigation(
            pipe, prompt, method=method, config=config, paraphrases=paraphrase or None, seed=seed
        )
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for j, image in enumerate(res.images):
            to_pil(image.float().cpu()).save(out / f"mitigated_{j}.png")
            files.append(f"mitigated_{j}.png")
            if res.mask is not None:
                overlay(image.float().cpu(), res.mask[min(j, len(res.mask) - 1)], out / f"mask_{j}.png")
                files.append(f"mask_{j}.png")
        summary = {
            "prompt": prompt,
            "method": method,
            "seed": seed,
            "triggered": res.triggered,
            "chosen_prompt": res.chosen_prompt,
            "target_loss": loss_target,
            "loss_before": res.loss_before,
            "loss_after": res.loss_after,
            "iterations": res.iterations,
            "files": files,
        }
        write_json(out / "mitigate.json", summary)
        typer.echo(
            f"{method}: loss {res.loss_before:.3f} -> {res.loss_after:.3f} in {res.iterations} iterations; "
            f"wrote {len(res.images)} image(s) to {out}"
        )
    except MemLocateError as err:
        _fail(err)


@app.command()
def measure(
    generated: list[Path] = typer.Argument(..., help="generated images (PNG/JPEG) of one prompt"),
    references: Path = typer.Option(..., "--references", "-r", help="folder of reference images"),
    mask: Path | None = typer.Option(None, "--mask", help="map or mask image (any size); none = whole image"),
    metric: str = typer.Option("ssim", "--metric", help="ssim, pixel or sscd"),
    sscd: Path | None = typer.Option(None, "--sscd", help="SSCD TorchScript file (metric sscd)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Localized similarity of generated images to reference images, weighted by a mask (spec §2.5)."""
    try:
        from .data import image_files, read_image
        from .measure import load_sscd, localized_similarity

        gens = torch.stack([read_image(p) for p in generated])
        ref_files = image_files(references)
        if not ref_files:
            raise MemLocateError(f"{references}: no PNG/JPEG reference images in the folder")
        refs = [read_image(p) for p in ref_files]
        size = refs[0].shape[-2:]
        refs = torch.stack(
            [torch.nn.functional.interpolate(r[None], size=size, mode="bilinear")[0] for r in refs]
        )
        weights = None
        if mask is not None:
            weights = read_image(mask, gray=True)
        embedder = load_sscd(sscd, device) if metric == "sscd" and sscd is not None else None
        if metric == "sscd" and embedder is None:
            raise MemLocateError("--metric sscd needs --sscd PATH (a TorchScript file)")
        result = localized_similarity(gens, refs, weights, metric=metric, embedder=embedder)
        from difflab_core.report import to_jsonable

        typer.echo(
            json.dumps(to_jsonable({k: v for k, v in result.items() if k != "matrix"} | {"metric": metric}))
        )
    except MemLocateError as err:
        _fail(err)


if __name__ == "__main__":
    app()
