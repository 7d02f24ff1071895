"""``genlab demo``: few-shot transfer, fast samplers and cheap guidance on the embedded digits models.

Stages (each cached under ``OUT/cache/<stage>-<fingerprint>/`` by `difflab_core.store.cached_stage`, so a rerun
or a resumed run skips finished stages):

1. ``adapt``: the shipped digits DDPM trained on 0–4 is adapted to ten shots of the digit 9 with TAN
   (tan-transfer: ANT adapters, similarity guidance, adversarial noise); the same number of plain adapter
   iterations gives the fine-tuning baseline. Proxy metrics against the real 9s.
2. ``samplers``: the adapted model sampled with DDIM, the Adam-style momentum sampler (adam-sampler) and
   DPM-Solver++ at 10/20/50 steps; Fréchet distance in the digits-classifier features to the real 9s.
3. ``guidance``: classifier guidance on the class-conditional digits DDPM, on every step versus Compress
   Guidance (guidance-kit) on ⌊n/5⌋ + 2 of them; classifier calls, CPU time and the accuracy of an
   independent digits classifier.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from difflab_core.cli import status

from .sampling import SAMPLERS, scheduler_spec


@dataclass
class DemoConfig:
    """What the demo runs; ``quick`` fits in about three minutes on two CPU cores.

    ``quick`` trains 24 iterations instead of the paper's 300, at 10× the paper's learning rate (5e-4) so the
    short run still moves the model; the full demo keeps tan-transfer's defaults.
    """

    out: str = "genlab-demo"
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    shots: int = 10
    target_class: int = 9
    iterations: int = 300
    batch_size: int = 40
    adversarial_steps: int = 10
    lr: float | None = None
    """None: tan-transfer's default (5e-5 for pixel models, the paper's, over 300 iterations)."""
    samples: int = 500
    nfes: tuple[int, ...] = (10, 20, 50)
    guidance_steps: int = 50
    guidance_per_class: int = 10
    guidance_scale: float = 5.0
    compress_skip: int = 5
    compress_k: float = 2.0

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> DemoConfig:
        base = (
            cls(quick=True, iterations=24, lr=5e-4, batch_size=10, samples=64, guidance_per_class=2)
            if quick
            else cls()
        )
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the demo; returns ``{"figures", "stages"}`` and writes the report into ``cfg.out``."""
    from difflab_core.store import cached_stage

    torch.manual_seed(cfg.seed)
    cache = Path(cfg.out) / "cache"
    adapt_cfg = {k: getattr(cfg, k) for k in ("seed", "shots", "target_class", "iterations", "batch_size")}
    adapt_cfg |= {"adversarial_steps": cfg.adversarial_steps, "samples": cfg.samples, "lr": cfg.lr}
    with status("adapting the digits DDPM to ten shots of a 9 (TAN)", progress):
        adapt = cached_stage(cache, "adapt", adapt_cfg, lambda d: _adapt(cfg, d, progress))
    sampler_cfg = {
        "adapt": adapt["adapter_dir"],
        "samples": cfg.samples,
        "nfes": list(cfg.nfes),
        "seed": cfg.seed,
    }
    with status("sampling the adapted model with DDIM, AMS and DPM-Solver++", progress):
        samplers = cached_stage(cache, "samplers", sampler_cfg, lambda d: _samplers(cfg, adapt, d))
    guide_cfg = {k: getattr(cfg, k) for k in ("guidance_steps", "guidance_per_class", "guidance_scale")}
    guide_cfg |= {"skip": cfg.compress_skip, "k": cfg.compress_k, "seed": cfg.seed}
    with status("classifier guidance: every step vs Compress Guidance", progress):
        guidance = cached_stage(cache, "guidance", guide_cfg, lambda d: _guidance(cfg, d))
    stages = {"adapt": adapt, "samplers": samplers, "guidance": guidance}
    figures = figures_from(stages, cfg)
    from .demo_report import write_report

    write_report(Path(cfg.out), cfg, stages, figures)
    return {"figures": figures, "stages": stages}


# ------------------------------------------------------------------------------------------------ stages


def _adapt(cfg: DemoConfig, stage: Path, progress: bool) -> dict[str, Any]:
    import copy

    from safetensors.torch import save_file

    from difflab_core.report import image_grid
    from difflab_core.testbed import digits_ddpm
    from tan_transfer import DPMBundle, TANConfig, digits_task, proxy_metrics, sample, train_tan

    task = digits_task(target_class=cfg.target_class, shots=cfg.shots, seed=cfg.seed)
    source = digits_ddpm(classes=task.source_classes, device=cfg.device)
    steps = 25 if cfg.quick else 100
    variants = {
        "finetune_adapter": {"similarity_guidance": False, "adversarial_noise": False},
        "tan_adapter": {},
    }
    samples = {
        "source_only": sample(
            None, DPMBundle.from_unet(source.unet, source.scheduler), cfg.samples, steps=steps, seed=cfg.seed
        )
    }
    runs: dict[str, Any] = {}
    for name, switches in variants.items():
        bundle = DPMBundle.from_unet(copy.deepcopy(source.unet), source.scheduler)
        tan_cfg = TANConfig(
            iterations=cfg.iterations,
            batch_size=cfg.batch_size,
            micro_batch=min(10, cfg.batch_size),
            ascent_steps=cfg.adversarial_steps,
            classifier_steps=60 if cfg.quick else 300,
            seed=cfg.seed,
            lr=cfg.lr,
            monitor_every=0,  # the overfitting monitor is for long runs; the demo reports its own proxies
            **switches,
        )
        result = train_tan(
            bundle, task.shots, tan_cfg, source=task.source, output_dir=stage / name, progress=progress
        )
        model = result.model.eval()
        samples[name] = sample(model, bundle, cfg.samples, steps=steps, seed=cfg.seed)
        runs[name] = {
            "adapter_dir": str(result.adapter_dir),
            "sec_per_iter": result.sec_per_iter,
            "trainable_fraction": result.trainable_fraction,
            "classifier": result.classifier_report,
        }
    save_file({k: v.contiguous() for k, v in samples.items()}, str(stage / "samples.safetensors"))
    grids = {}
    for name, images in samples.items():
        image_grid(images[:32], 8).save(stage / f"grid_{name}.png")
        grids[name] = f"grid_{name}.png"
    image_grid((task.shots + 1) / 2, 10).save(stage / "shots.png")
    metrics = {
        name: proxy_metrics(images, task.shots, target_class=cfg.target_class)
        for name, images in samples.items()
    }
    return {
        "source_classes": list(task.source_classes),
        "iterations": cfg.iterations,
        "sampling_steps": steps,
        "trainable_fraction": runs["tan_adapter"]["trainable_fraction"],
        "adapter_dir": runs["tan_adapter"]["adapter_dir"],
        "runs": runs,
        "metrics": metrics,
        "grids": grids,
        "shots_grid": "shots.png",
        "stage_dir": str(stage),
    }


def _samplers(cfg: DemoConfig, adapt: dict[str, Any], stage: Path) -> dict[str, Any]:
    from adam_sampler import compare_samplers
    from adam_sampler.compare import sample
    from adam_sampler.features import digits_features, digits_reference_stats
    from difflab_core.report import image_grid
    from difflab_core.testbed import real_digits

    unet, scheduler_config = _adapted_unet(adapt)
    feats = digits_features()
    real = real_digits((cfg.target_class,))[0]
    specs = {name: scheduler_spec(name) for name in SAMPLERS}
    result = compare_samplers(
        unet,
        scheduler_config,
        specs,
        cfg.nfes,
        n=cfg.samples,
        seeds=(cfg.seed,),
        feature_fn=feats,
        real_stats=digits_reference_stats(feats, real),
        out_dir=stage / "cells",
        run_tag=f"genlab-demo adapted digits 9, digits features, {adapt['adapter_dir']}",
    )
    grids = {}
    for name, spec in specs.items():
        for nfe in (min(cfg.nfes), max(cfg.nfes)):
            x = sample(
                unet, spec.build(scheduler_config), 16, nfe, generator=torch.Generator().manual_seed(cfg.seed)
            )
            path = stage / f"grid_{name}_{nfe}.png"
            image_grid(((x + 1) / 2).clamp(0, 1), 8).save(path)
            grids[f"{name}_{nfe}"] = path.name
    fd = {name: {nfe: cell["mean"] for nfe, cell in cells.items()} for name, cells in result["fid"].items()}
    return {"fd": fd, "ratios_vs_ddim": result["ratios"], "grids": grids, "stage_dir": str(stage)}


def _guidance(cfg: DemoConfig, stage: Path) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    from difflab_core.report import image_grid
    from difflab_core.testbed import digits_ddpm_memorized
    from guidance_kit import (
        classifier_guidance,
        compress_schedule,
        fit_encoder_classifier,
        full_schedule,
        sample,
    )

    model = digits_ddpm_memorized()
    labels = torch.arange(10).repeat(cfg.guidance_per_class)
    null = torch.full_like(labels, model.null_class)
    clf = fit_encoder_classifier(
        model.unet,
        model.scheduler,
        model.train_images * 2 - 1,
        model.train_labels,
        null_class=model.null_class,
    )
    n = cfg.guidance_steps
    schedules = {
        "full": full_schedule(n),
        "compress": compress_schedule(n, cfg.compress_skip, cfg.compress_k),
    }
    out: dict[str, Any] = {"steps": n, "samples": len(labels), "scale": cfg.guidance_scale}
    warm = DDIMScheduler.from_config(model.scheduler.config)
    with classifier_guidance(model.unet, clf, labels, scale=cfg.guidance_scale, skip=1, scheduler=warm):
        sample(
            model.unet, warm, num_inference_steps=2, class_labels=null
        )  # first-call costs out of the timings
    for name, schedule in [("unguided", None), *schedules.items()]:
        scheduler = DDIMScheduler.from_config(model.scheduler.config)
        start = time.process_time()
        generator = torch.Generator().manual_seed(cfg.seed)
        if schedule is None:
            x = sample(model.unet, scheduler, num_inference_steps=n, class_labels=null, generator=generator)
            calls = 0
        else:
            with classifier_guidance(
                model.unet, clf, labels, scale=cfg.guidance_scale, schedule=schedule, scheduler=scheduler
            ) as run:
                x = sample(
                    model.unet, scheduler, num_inference_steps=n, class_labels=null, generator=generator
                )
            calls = run.stats["classifier_calls"]
        seconds = time.process_time() - start
        images = ((x + 1) / 2).clamp(0, 1)
        image_grid(images, 10).save(stage / f"grid_{name}.png")
        predicted = model.clean_classifier.predict(images)
        out[name] = {
            "classifier_calls": calls,
            "cpu_seconds": seconds,
            "accuracy": float((predicted == labels).float().mean()),
            "predicted": predicted.tolist(),
            "grid": f"grid_{name}.png",
        }
    out["labels"] = labels.tolist()
    out["stage_dir"] = str(stage)
    return out


# ------------------------------------------------------------------------------------------------ helpers


def _adapted_unet(adapt: dict[str, Any]):
    """The TAN-adapted digits UNet (adapters attached in place, eval mode) and its scheduler config."""
    from difflab_core.testbed import digits_ddpm
    from tan_transfer import load_adapters

    source = digits_ddpm(classes=tuple(adapt["source_classes"]))
    model = load_adapters(source.unet, adapt["adapter_dir"]).eval()
    return model.unet, dict(source.scheduler.config)


def figures_from(stages: dict[str, Any], cfg: DemoConfig) -> dict[str, Any]:
    """The report's figures, read from the stage results only (so the test can recompute them)."""
    adapt, samplers, guidance = stages["adapt"], stages["samplers"], stages["guidance"]
    figures: dict[str, Any] = {"mode": "quick" if cfg.quick else "full", "shots": cfg.shots}
    figures["adapt"] = {k: adapt[k] for k in ("iterations", "trainable_fraction")}
    for variant in ("source_only", "finetune_adapter", "tan_adapter"):
        figures["adapt"][variant] = dict(adapt["metrics"][variant])
    figures["samplers_fd"] = samplers["fd"]
    figures["samplers_ratio_vs_ddim"] = samplers["ratios_vs_ddim"]
    full, comp = guidance["full"], guidance["compress"]
    figures["guidance"] = {
        "steps": guidance["steps"],
        "classifier_calls_full": full["classifier_calls"],
        "classifier_calls_compress": comp["classifier_calls"],
        "cpu_time_ratio_compress_over_full": comp["cpu_seconds"] / full["cpu_seconds"],
        "accuracy_unguided": guidance["unguided"]["accuracy"],
        "accuracy_full": full["accuracy"],
        "accuracy_compress": comp["accuracy"],
    }
    return figures
