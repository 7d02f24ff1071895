"""The demo's ``report.json`` and self-contained ``report.html`` (core `HtmlReport`): figures, ROC curves, BE
heatmaps next to ground-truth masks, and before/after grids of the mitigated prompts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch.nn.functional as F

FIGURES_HEADING = "Figures"


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _versions() -> dict[str, str]:
    from difflab_core.report import package_versions

    return package_versions(
        "difflab-memguard", "mem-locate", "guidance-kit", "difflab-core", "torch", "diffusers"
    )


def write_report(
    out: Path,
    cfg,
    tb,
    run,
    records: list[dict],
    figures: dict[str, Any],
    *,
    curves: dict[str, tuple[list[float], list[float]]],
    verdicts_before: dict[str, list[bool]],
    mitigation: dict[str, dict],
    flags: dict,
) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.html``; returns their paths."""
    from difflab_core.report import HtmlReport, heatmap_overlay, write_json

    index = {r.key: i for i, r in enumerate(tb.records)}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    json_path = write_json(
        out / "report.json",
        {"figures": figures, "config": config, "versions": _versions(), "testbed": tb.card.get("name", "")},
    )

    rep = HtmlReport(f"memguard demo ({cfg.mode})")
    rep.add_text(
        f"Every prompt of the memorization testbed ({sum(figures['n_prompts'].values())} prompts: "
        f"{figures['n_prompts']['global']} copy a whole training photo, {figures['n_prompts']['local']} copy a "
        f"trigger patch, {figures['n_prompts']['none']} are novel) was generated with {cfg.steps} DDIM steps, "
        f"{cfg.images_per_prompt} image(s) each, and audited with Bright Ending (BE), Wen and Ren. Prompts "
        f"scoring above the {cfg.flag_quantile:.0%} quantile of the novel prompts' {cfg.flag_method} scores were "
        "flagged and regenerated with mitigation at the same seeds. An image counts as memorized when it is "
        "within RMSE 0.1 of its training target (the whole photo, or the patch inside its mask)."
    )
    rep.add_heading("Detection")
    rep.add_table(
        [
            {
                "detector": name,
                "AUC (all)": figures[f"det_all_{m}_auc"],
                "TPR@1%FPR (all)": figures[f"det_all_{m}_tpr1"],
                "AUC (whole-photo copies)": figures[f"det_global_{m}_auc"],
                "AUC (patch copies)": figures[f"det_local_{m}_auc"],
            }
            for m, name in (("be", "BE"), ("wen", "Wen"), ("ren_le", "Ren LE"), ("ren_ae", "Ren AE"))
        ]
    )
    rep.add_text(
        f"BE localization of the copied patch: pixel AUROC {_f(figures['loc_local_auroc'])}, best IoU "
        f"{_f(figures['loc_local_best_iou'])}. Flagged by {figures['flag_method']}: {figures['n_flagged']} prompts "
        f"(recall {_f(figures['flag_recall'])}, false-positive rate {_f(figures['flag_false_positive_rate'])})."
    )
    rep.add_heading("Mitigation: memorized fraction of the flagged prompts' images")
    rows = [
        {
            "": "before",
            "all": figures["memorized_fraction_before"],
            "whole-photo copies": figures.get("memorized_fraction_before_global"),
            "patch copies": figures.get("memorized_fraction_before_local"),
        }
    ]
    for m in cfg.mitigations:
        tag = m.replace("-", "_")
        rows.append(
            {
                "": f"after {m}",
                "all": figures.get(f"memorized_fraction_after_{tag}"),
                "whole-photo copies": figures.get(f"memorized_fraction_after_{tag}_global"),
                "patch copies": figures.get(f"memorized_fraction_after_{tag}_local"),
            }
        )
    rep.add_table(rows)

    rep.add_heading("Detection: ROC over all prompts (memorized vs novel)")
    rep.add_plot(
        {m: c for m, c in curves.items()},
        title="ROC",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )

    rep.add_heading("Localization: BE map on the generated image, next to the ground-truth mask")
    local = [r for r in records if r["kind"] == "local"][:6]
    tiles, captions = [], []
    for r in local:
        image = run.images(r["key"])[0]
        be_map = run.map(r["key"])[0]
        heat = F.interpolate(be_map[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[
            0, 0
        ]
        mask = tb.masks[index[r["key"]]].float()
        tiles += [image, heatmap_overlay(image, heat), mask[None].expand(3, -1, -1)]
        captions += [r["key"], "BE map", "ground truth"]
    if tiles:
        rep.add_images(tiles, captions, width=96)

    rep.add_heading("Mitigation: before and after, same seed")
    methods = list(cfg.mitigations)
    shown = 0
    for key in flags["mitigated"]:
        rows = [mitigation.get(f"{m}/{key}") for m in methods]
        if any(row is None for row in rows):
            continue
        before = run.images(key)
        tiles = [before[0]] + [row["images"][0] for row in rows]
        caps = [f"{key} before: {'copy' if verdicts_before[key][0] else 'ok'}"] + [
            f"{m}: {'copy' if row['copied'][0] else 'ok'}" for m, row in zip(methods, rows, strict=True)
        ]
        rep.add_images(tiles, caps, width=96)
        shown += 1
        if shown >= 8:
            break
    if shown == 0:
        rep.add_text("No prompt was flagged, so nothing was mitigated.")
    if "video_n_videos" in figures:
        rep.add_heading("Video memorization: the planted sprite-video testbed")
        rep.add_text(
            f"{figures['video_n_videos']} generated videos (copies of a training video's content, its motion, both, "
            "or neither; static and camera-pan videos) audited against the training videos and images by mem-video. "
            "The full per-video report is cache/video-audit/report.html."
        )
        rep.add_table(
            [
                {
                    "copy type": what,
                    "recall": figures[f"video_{what}_recall"],
                    "false positive rate": figures[f"video_{what}_false_positive_rate"],
                }
                for what in ("content", "motion")
            ]
        )
    rep.add_heading(FIGURES_HEADING)
    rep.add_figures(figures)
    rep.add_json({"config": config, "versions": _versions()}, summary="configuration and versions")
    html_path = rep.save(out / "report.html")
    return html_path, json_path
