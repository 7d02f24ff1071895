"""The demo's ``report.json`` and self-contained ``report.html``: segmentation metrics with segment bar plots,
and the triplet average-precision table."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

DISTS = ("difflab-videolab", "diffact", "difftriplet", "ivtmetrics", "difflab-core", "torch", "scikit-learn")


def write_report(out: Path, cfg, stages: dict[str, Any], figures: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.html``; returns their paths."""
    from difflab_core.report import HtmlReport, package_versions, write_json

    config = asdict(cfg)
    versions = package_versions(*DISTS)
    json_path = write_json(out / "report.json", {"figures": figures, "config": config, "versions": versions})
    segment, triplet = stages["segment"], stages["triplet"]

    rep = HtmlReport(f"videolab demo ({figures['mode']})")
    rep.add_heading("1. Temporal action segmentation (diffact)")
    rep.add_text(
        f"A synthetic MS-TCN-format dataset ({len(segment['classes'])} classes incl. background; "
        f"{len(segment['test_videos'])} test videos of 120 frames). DiffAct (tiny preset) trained for "
        f"{segment['steps']} steps; the checkpoint of step {segment['selected_step']} was selected on a "
        "validation hold-out. Metrics on the test videos (MS-TCN convention, %):"
    )
    rep.add_table(
        [{k: segment["test_metrics"]["mstcn"][k] for k in ("Acc", "Edit", "F1@10", "F1@25", "F1@50")}]
    )
    stage = Path(segment["stage_dir"])
    rep.add_images(
        [Image.open(stage / p["plot"]) for p in segment["plots"]],
        [f"{p['video']}: ground truth (top), DiffAct (bottom)" for p in segment["plots"]],
    )
    rep.add_heading("2. Surgical action triplets (difftriplet)")
    rep.add_text(triplet["description"])
    rep.add_table([{"component": k, "AP": v} for k, v in figures["triplet"].items()])
    if triplet.get("per_class"):
        rep.add_table(triplet["per_class"])
    rep.add_heading("Figures")
    rep.add_figures(figures)
    rep.add_json({"config": config, "versions": versions}, summary="configuration and versions")
    return rep.save(out / "report.html"), json_path
