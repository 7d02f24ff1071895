"""``genlab sample``: one call that picks a sampler (DDIM, adam-sampler's AMS, DPM-Solver++) and a guidance mode
(none, guidance on every step, Compress Guidance) for a local model.

Unconditional pixel `UNet2DModel` folders take classifier guidance from a noisy classifier trained with
guidance-kit (``train_noisy_classifier``); text-conditional pipelines take classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from difflab_core.errors import DifflabError

GUIDANCE_MODES = ("none", "full", "compress")
SAMPLERS = ("ddim", "ams", "dpmpp")
"""genlab's sampler names: DDIM, adam-sampler's momentum sampler, diffusers' DPM-Solver++."""


@dataclass
class SampleRequest:
    """What to sample; ``label``/``classifier_dir`` for classifier guidance, ``prompt`` for text models."""

    scheduler: str = "ams"
    steps: int = 20
    n: int = 16
    seed: int = 0
    guidance: str = "none"
    classifier_dir: str | None = None
    label: int | None = None
    scale: float = 5.0
    guidance_scale: float = 7.5
    skip: int = 5
    k: float = 2.0
    prompt: str | None = None


def generate(bundle: Any, req: SampleRequest) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images ``[n, C, H, W]`` in [0, 1] and what was done (guidance calls, the sampler's config)."""
    if req.guidance not in GUIDANCE_MODES:
        raise DifflabError(f"--guidance {req.guidance!r}: use one of {', '.join(GUIDANCE_MODES)}")
    if req.steps < 1 or req.n < 1:
        raise DifflabError(f"--steps {req.steps} / --n {req.n}: both must be ≥ 1")
    spec = scheduler_spec(req.scheduler)
    if bundle.conditional:
        return _text_conditional(bundle, req, spec)
    if bundle.latent_kind is not None:
        raise DifflabError(
            f"{bundle.path}: latent unconditional models are not supported by genlab sample yet"
        )
    return _pixel(bundle, req, spec)


def scheduler_spec(name: str):
    """adam-sampler's `SchedulerSpec` for a genlab sampler name (``ddim``, ``ams``, ``dpmpp``)."""
    from adam_sampler import SchedulerSpec

    kinds = {"ddim": SchedulerSpec("ddim", eta=0.0), "ams": SchedulerSpec("ams", eta=0.0)}
    kinds["dpmpp"] = SchedulerSpec("dpmsolver++")
    if name not in kinds:
        raise DifflabError(f"--scheduler {name!r}: use one of {', '.join(SAMPLERS)}")
    return kinds[name]


def _pixel(bundle, req: SampleRequest, spec) -> tuple[torch.Tensor, dict[str, Any]]:
    from guidance_kit import (
        classifier_guidance,
        compress_schedule,
        full_schedule,
        load_noisy_classifier,
        sample,
    )

    scheduler = spec.build(bundle.noise_scheduler.config)
    generator = torch.Generator().manual_seed(req.seed)
    info: dict[str, Any] = {"scheduler": spec.describe(), "guidance": req.guidance}
    if req.guidance == "none":
        x = sample(
            bundle.unet, scheduler, num_inference_steps=req.steps, batch_size=req.n, generator=generator
        )
        return ((x + 1) / 2).clamp(0, 1), info
    if req.classifier_dir is None or req.label is None:
        raise DifflabError(
            f"--guidance {req.guidance} on an unconditional model needs --classifier DIR (guidance-kit "
            "train_noisy_classifier output) and --label"
        )
    classifier = load_noisy_classifier(req.classifier_dir, unet=bundle.unet)
    num_classes = classifier.head.out_features
    if not 0 <= req.label < num_classes:
        raise DifflabError(
            f"--label {req.label}: the classifier in {req.classifier_dir} has {num_classes} classes"
        )
    labels = torch.full((req.n,), int(req.label))
    schedule = (
        full_schedule(req.steps) if req.guidance == "full" else compress_schedule(req.steps, req.skip, req.k)
    )
    with classifier_guidance(
        bundle.unet, classifier, labels, scale=req.scale, schedule=schedule, scheduler=scheduler
    ) as run:
        x = sample(
            bundle.unet, scheduler, num_inference_steps=req.steps, batch_size=req.n, generator=generator
        )
    info |= {"classifier_calls": run.stats["classifier_calls"], "label": req.label, "scale": req.scale}
    return ((x + 1) / 2).clamp(0, 1), info


def _text_conditional(bundle, req: SampleRequest, spec) -> tuple[torch.Tensor, dict[str, Any]]:
    from guidance_kit import compress_cfg

    pipe = bundle.pipeline
    if pipe is None:
        raise DifflabError(f"{bundle.path}: a text-conditional model must be a full pipeline folder")
    if req.classifier_dir is not None:
        raise DifflabError(
            "--classifier: text-conditional models use classifier-free guidance; drop --classifier"
        )
    pipe.scheduler = spec.build(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(req.seed)
    scale = 1.0 if req.guidance == "none" else req.guidance_scale
    kwargs = dict(num_inference_steps=req.steps, guidance_scale=scale, generator=generator, output_type="pt")
    prompts = [req.prompt or ""] * req.n
    info: dict[str, Any] = {"scheduler": spec.describe(), "guidance": req.guidance, "guidance_scale": scale}
    if req.guidance == "compress":
        with compress_cfg(pipe, skip=req.skip, k=req.k) as run:
            images = pipe(prompts, **kwargs).images
        info["uncond_forwards"] = run.stats["uncond_forwards"]
    else:
        images = pipe(prompts, **kwargs).images
    return images.float().cpu().clamp(0, 1), info
