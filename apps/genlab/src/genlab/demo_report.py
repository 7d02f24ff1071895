"""The demo's ``report.json`` and self-contained ``report.html``: proxy metrics, sample grids, the sampler
Fréchet-distance curves and the guidance comparison."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

DISTS = (
    "difflab-genlab",
    "tan-transfer",
    "adam-sampler",
    "guidance-kit",
    "difflab-core",
    "torch",
    "diffusers",
)


def _grid(stage_dir: str, name: str) -> Image.Image:
    img = Image.open(Path(stage_dir) / name)
    return img.resize((img.width * 3, img.height * 3), Image.NEAREST)


def write_report(out: Path, cfg, stages: dict[str, Any], figures: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.html``; returns their paths."""
    from difflab_core.report import HtmlReport, package_versions, write_json

    config = asdict(cfg)
    versions = package_versions(*DISTS)
    json_path = write_json(out / "report.json", {"figures": figures, "config": config, "versions": versions})
    adapt, samplers, guidance = stages["adapt"], stages["samplers"], stages["guidance"]

    rep = HtmlReport(f"genlab demo ({figures['mode']})")
    rep.add_heading("1. Few-shot transfer (tan-transfer)")
    rep.add_text(
        f"The shipped digits DDPM, trained on the digits 0–4 only, adapted to {cfg.shots} shots of the digit "
        f"{cfg.target_class} for {adapt['iterations']} iterations. Only the ANT adapters train "
        f"({adapt['trainable_fraction']:.1%} of the weights). 'finetune_adapter' is the same adapters with the "
        "plain DDPM loss; 'tan_adapter' adds similarity guidance and adversarial noise. Proxy FID: Fréchet "
        "distance in a digits classifier's features to all real 9s (lower is better); target-class rate: share "
        "of samples that classifier reads as a 9."
    )
    rep.add_table(
        [
            {"variant": name, **metrics}
            for name, metrics in figures["adapt"].items()
            if isinstance(metrics, dict)
        ]
    )
    rep.add_images(
        [_grid(adapt["stage_dir"], adapt["grids"][name]) for name in adapt["grids"]]
        + [_grid(adapt["stage_dir"], adapt["shots_grid"])],
        [*adapt["grids"], "the shots"],
    )
    rep.add_heading("2. Samplers on the adapted model (adam-sampler)")
    rep.add_text(
        f"{cfg.samples} samples per cell from the same initial noise; Fréchet distance to the real 9s in the "
        "digits-classifier features (lower is better)."
    )
    series = {}
    for name, cells in figures["samplers_fd"].items():
        steps = sorted(cells, key=int)
        series[name] = ([int(s) for s in steps], [cells[s] for s in steps])
    rep.add_plot(series, title="proxy FID by number of steps", xlabel="steps", ylabel="Fréchet distance")
    names = list(samplers["grids"])
    rep.add_images([_grid(samplers["stage_dir"], samplers["grids"][n]) for n in names], names)
    rep.add_heading("3. Compress Guidance (guidance-kit)")
    g = figures["guidance"]
    rep.add_text(
        f"Classifier guidance (scale {guidance['scale']}) toward each digit on the class-conditional digits "
        f"DDPM, {g['steps']} DDIM steps, {guidance['samples']} samples: the classifier's gradient on every "
        f"step ({g['classifier_calls_full']} calls) against Compress Guidance ({g['classifier_calls_compress']} "
        "calls). Accuracy is read by an independent clean digits classifier."
    )
    rep.add_images(
        [_grid(guidance["stage_dir"], guidance[name]["grid"]) for name in ("unguided", "full", "compress")],
        ["unguided", "full guidance", "Compress Guidance"],
    )
    rep.add_heading("Figures")
    rep.add_figures(figures)
    rep.add_json({"config": config, "versions": versions}, summary="configuration and versions")
    return rep.save(out / "report.html"), json_path
