"""``memguard generate``: images with a per-image memorization verdict and BE heatmap, optionally mitigated.

The verdict comes from an unmitigated BE pass at the same seed: the image's BE score (mean masked Δε magnitude
over the steps) against a threshold, given directly or set from an audit's clean prompts (mem-locate
`flag_prompts`). Mitigation then regenerates from the same initial noise: ``be-pe`` and ``prss`` through
mem-locate, ``amg`` through guidance-kit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from difflab_core.errors import DifflabError

MITIGATIONS = ("none", "be-pe", "prss", "amg")


def run_generate(
    model: Path,
    prompt: str,
    out: Path,
    *,
    mitigate: str = "none",
    images_per_prompt: int = 1,
    steps: int = 50,
    scale: float = 7.5,
    seed: int = 0,
    threshold: float | None = None,
    audit_dir: Path | None = None,
    target_loss: float = 1.0,
    paraphrases: list[str] | None = None,
    index: Path | None = None,
    captions: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Generate ``prompt`` into ``out`` (PNG images, BE heatmaps, ``verdicts.json``); returns the summary."""
    from difflab_core.report import heatmap_overlay, to_pil, write_json
    from mem_locate.detect import AuditConfig, Auditor

    if mitigate not in MITIGATIONS:
        raise DifflabError(f"--mitigate {mitigate!r}: use one of {', '.join(MITIGATIONS)}")
    if not prompt.strip():
        raise DifflabError("--prompt is empty")
    if mitigate == "amg" and index is None:
        raise DifflabError("--mitigate amg needs --index DIR (build one with `guidance-kit build-index`)")
    if audit_dir is not None:
        threshold, target_loss = _from_audit(audit_dir, threshold, target_loss)
    from .audit import load_sd

    pipe = load_sd(model, device, dtype)
    cfg = AuditConfig(
        num_inference_steps=steps,
        guidance_scale=scale,
        num_images_per_prompt=images_per_prompt,
        gen_seed=seed,
        methods=("be", "wen"),
        save_images=True,
    ).validate()
    scores, tensors = Auditor(pipe, cfg).score_prompts([prompt], [seed])
    be_scores = np.asarray(scores[0].be, dtype=np.float64).mean(axis=1)
    images, maps = tensors["images"].float().cpu(), tensors["maps"].float().cpu()
    final, info = images, {}
    if mitigate in ("be-pe", "prss"):
        final, info = _mem_locate(pipe, prompt, mitigate, cfg, maps, seed, target_loss, paraphrases)
    elif mitigate == "amg":
        final, info = _amg(pipe, prompt, cfg, seed, index, captions)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for j in range(len(images)):
        heat = _upsample(maps[j], images.shape[-2:])
        to_pil(final[j]).save(out / f"image_{j}.png")
        heatmap_overlay(images[j], heat).save(out / f"heatmap_{j}.png")
        item = {
            "file": f"image_{j}.png",
            "heatmap": f"heatmap_{j}.png",
            "be_score": float(be_scores[j]),
            "verdict": _verdict(be_scores[j], threshold),
        }
        if mitigate != "none":
            to_pil(images[j]).save(out / f"unmitigated_{j}.png")
            item["unmitigated"] = f"unmitigated_{j}.png"
        items.append(item)
    summary = {
        "prompt": prompt,
        "seed": seed,
        "mitigate": mitigate,
        "threshold": threshold,
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "images": items,
        "mitigation": info,
    }
    write_json(out / "verdicts.json", summary)
    return summary


def _verdict(score: float, threshold: float | None) -> str:
    if threshold is None:
        return "unjudged (give --threshold or --audit)"
    return "memorized" if score > threshold else "not memorized"


def _upsample(be_map, size):
    import torch.nn.functional as F

    return F.interpolate(be_map[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def _from_audit(audit_dir: Path, threshold: float | None, target_loss: float) -> tuple[float, float]:
    """The BE flag threshold and the be-pe target loss from an audit's clean prompts (explicit threshold wins)."""
    from mem_locate.data import load_run
    from mem_locate.detect import flag_prompts
    from mem_locate.mitigate import auto_target_loss

    records = load_run(audit_dir).records
    if threshold is None:
        threshold = flag_prompts(records, "be").threshold
    return threshold, auto_target_loss(records, masked=True)


def _mem_locate(pipe, prompt, method, cfg, maps, seed, target_loss, paraphrases):
    from mem_locate.mitigate import MitigationConfig
    from mem_locate.mitigate import mitigate as run_mitigation

    if method == "prss" and not paraphrases:
        raise DifflabError("--mitigate prss needs at least one --paraphrase")
    mcfg = MitigationConfig(
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        num_images_per_prompt=cfg.num_images_per_prompt,
        target_loss=target_loss,
    )
    res = run_mitigation(
        pipe,
        prompt,
        method=method,
        config=mcfg,
        paraphrases=paraphrases,
        mask=maps if method == "be-pe" else None,
        seed=seed,
    )
    info = {
        "triggered": res.triggered,
        "loss_before": res.loss_before,
        "loss_after": res.loss_after,
        "iterations": res.iterations,
        "chosen_prompt": res.chosen_prompt,
        "target_loss": target_loss,
    }
    return res.images.float().cpu(), info


def _amg(pipe, prompt, cfg, seed, index: Path, captions: Path | None):
    from guidance_kit import AMGConfig, CaptionStats, NeighbourIndex, generate_with_amg
    from mem_locate.localize import draw_latents

    latents, _ = draw_latents(pipe, [seed], cfg.num_images_per_prompt)
    result = generate_with_amg(
        pipe,
        [prompt] * cfg.num_images_per_prompt,
        index=NeighbourIndex.load(index),
        captions=CaptionStats.load(captions) if captions is not None else None,
        seeds=[seed],
        config=AMGConfig(),
        latents=latents,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
    )
    fired = {
        name: sum(bool(getattr(r, f"fired_{name}")) for r in result.records) for name in ("spe", "dup", "sim")
    }
    return result.images.float().cpu(), {"amg_fired_steps": fired, "triggered": any(fired.values())}
