"""``memguard audit``: a resumable mem-locate audit of a local Stable Diffusion folder, with a report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from difflab_core.errors import DifflabError


def load_sd(model: Path, device: str = "auto", dtype: str = "auto"):
    """A local Stable Diffusion pipeline, checked for what BE needs, progress bar off."""
    import diffusers
    import torch
    import transformers

    from difflab_core.loading import load_pipeline
    from mem_locate.localize import check_pipeline

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipe = load_pipeline(model, device=device, dtype=dtype)
    check_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_audit(
    model: Path,
    prompts: Path,
    out: Path,
    *,
    labels: bool = False,
    steps: int = 50,
    scale: float = 7.5,
    images_per_prompt: int = 4,
    seed: int = 0,
    methods: tuple[str, ...] = ("be", "wen", "ren"),
    batch_prompts: int = 1,
    new_run: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any] | None:
    """Audit ``prompts`` into ``out`` (``results.jsonl``, ``maps/``, ``images/``); on the main process write
    ``figures.json`` and ``report.html`` and return a summary (None on other ranks)."""
    from mem_locate.data import load_prompts, load_run
    from mem_locate.detect import AuditConfig, Auditor

    records = load_prompts(prompts)
    if labels:
        unlabeled = [r.key for r in records if r.label is None]
        if unlabeled:
            raise DifflabError(
                f"{prompts}: --labels given but {len(unlabeled)} prompt(s) have no label or type "
                f"(first: key {unlabeled[0]!r})"
            )
    cfg = AuditConfig(
        num_inference_steps=steps,
        guidance_scale=scale,
        num_images_per_prompt=images_per_prompt,
        gen_seed=seed,
        dtype=dtype,
        batch_prompts=batch_prompts,
        methods=methods,
        ren_modes=("le", "ae") if "ren" in methods else ("le",),
        save_images=True,
    ).validate()
    pipe = load_sd(model, device, dtype)
    result = Auditor(pipe, cfg).run(records, out, new_run=new_run, progress=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    run = load_run(out)
    usable = result.usable()
    if not usable:
        raise DifflabError(f"{out}: no usable results (every prompt gave non-finite scores)")
    return _report(run, usable, labels, out)


def _report(run, records: list[dict], labels: bool, out: Path) -> dict[str, Any]:
    import torch

    from difflab_core.metrics import roc_curve
    from difflab_core.report import HtmlReport, heatmap_overlay, write_json
    from mem_locate.detect import METHODS, aggregate
    from mem_locate.evaluate import detection_table

    present = [m for m in METHODS if records[0].get("wen" if m == "wen1" else m) is not None and m != "wen1"]
    scores = {m: aggregate(records, m) for m in present}
    figures: dict[str, Any] = {"n_prompts": len(records), "methods": present}
    rep = HtmlReport(f"memguard audit: {out.name}")
    if labels:
        figures.update(detection_table(records, scores))
        y = np.asarray([r["label"] for r in records])
        if len(np.unique(y)) == 2:
            curves = {}
            for m, s in scores.items():
                fpr, tpr, _ = roc_curve(s, y)
                curves[m] = (fpr, tpr)
            rep.add_heading("Detection ROC")
            rep.add_plot(curves, title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    rep.add_heading("Figures")
    rep.add_table([{"figure": k, "value": v} for k, v in figures.items() if not isinstance(v, list)])
    top_method = "be" if "be" in scores else present[0]
    order = np.argsort(-scores[top_method], kind="stable")[:12]
    rep.add_heading(f"Top prompts by {top_method} score")
    rep.add_table(
        [
            {"key": records[i]["key"], "prompt": records[i]["prompt"], "label": records[i].get("label")}
            | {m: float(scores[m][i]) for m in present}
            for i in order
        ]
    )
    tiles, captions = [], []
    for i in order:
        rec = records[i]
        if rec.get("map_file") and rec.get("image_files"):
            image = run.images(rec["key"])[0]
            heat = torch.nn.functional.interpolate(
                run.map(rec["key"])[:1, None], size=image.shape[-2:], mode="bilinear", align_corners=False
            )[0, 0]
            tiles.append(heatmap_overlay(image, heat))
            captions.append(str(rec["key"]))
    if tiles:
        rep.add_heading("BE maps of the top prompts")
        rep.add_images(tiles, captions, width=128)
    write_json(out / "figures.json", figures)
    path = rep.save(out / "report.html")
    return figures | {"report": str(path)}
