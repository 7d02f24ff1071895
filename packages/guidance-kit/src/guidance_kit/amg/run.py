"""AMG inside users' own ``pipe(...)`` calls: the `amg` context manager, `generate_with_amg`, `calibrate`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from difflab_core.tracking import DenoiserCall, DenoiserEditHook

from ..denoiser import resolve_denoiser
from ..errors import GuidanceKitError, core_errors
from ..schedules import compress_schedule
from .config import AMGConfig
from .guidance import AMGStepRecord, AntiMemorizationGuidance
from .profiles import SIM_SCALE_GRID

__all__ = [
    "AMGResult",
    "amg",
    "calibrate",
    "generate_with_amg",
    "load_preview_decoder",
    "pipeline_decoder",
    "vae_decoder",
]


def pipeline_decoder(pipe):
    """x̂₀ → images [B,3,H,W] in [0,1]: ``vae.decode(x̂₀/scaling_factor)`` for latent pipelines, else
    (x̂₀+1)/2; clamped, differentiable."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return lambda x0: ((x0 + 1) / 2).clamp(0, 1)
    return vae_decoder(vae)


def vae_decoder(vae):
    """x̂₀ latents → images [B,3,H,W] in [0,1] through ``vae.decode(x̂₀/scaling_factor)``; clamped,
    differentiable."""
    factor = float(getattr(vae.config, "scaling_factor", 1.0))

    def decode(x0: Tensor) -> Tensor:
        images = vae.decode(x0.to(vae.dtype) / factor, return_dict=False)[0].float()
        return ((images + 1) / 2).clamp(0, 1)

    return decode


def load_preview_decoder(path: str | Path, *, latent_channels: int | None = None, device=None):
    """A diffusers `AutoencoderTiny` (e.g. TAESD) from a local folder, frozen, for previewing x̂₀ during AMG
    detection. ``latent_channels``: the pipeline's, checked against the decoder's."""
    from diffusers import AutoencoderTiny

    from difflab_core.loading import load_model, read_json

    folder = Path(path)
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise GuidanceKitError(
            f"preview_decoder: {folder} is not a local AutoencoderTiny folder (config.json + weights)"
        )
    with core_errors("preview_decoder"):
        name = read_json(config_file).get("_class_name")
    if name != "AutoencoderTiny":
        raise GuidanceKitError(f"preview_decoder: {config_file} describes {name!r}, not an AutoencoderTiny")
    with core_errors(f"preview_decoder {folder}"):
        decoder = load_model(folder, AutoencoderTiny)
    found = int(decoder.config.latent_channels)
    if latent_channels is not None and found != int(latent_channels):
        raise GuidanceKitError(
            f"preview_decoder: {folder} decodes {found}-channel latents but the pipeline's latents have "
            f"{latent_channels} channels"
        )
    decoder.requires_grad_(False)
    return decoder.to(device).eval() if device is not None else decoder.eval()


def _latent_channels(pipe_or_unet, module) -> int | None:
    vae = getattr(pipe_or_unet, "vae", None)
    if vae is not None and hasattr(vae.config, "latent_channels"):
        return int(vae.config.latent_channels)
    channels = getattr(getattr(module, "config", None), "in_channels", None)
    return None if channels is None else int(channels)


def _detection_decoder(pipe_or_unet, module, index, config: AMGConfig, decoder, is_pipe: bool):
    """What x̂₀ becomes before detection: the given ``decoder``, the preview `AutoencoderTiny`, nothing
    (``pixel_space="latent"``) or the pipeline's own decode."""
    if config.pixel_space == "latent":
        vae = getattr(pipe_or_unet, "vae", None) if is_pipe else None
        stored = index.latent_info.get("scaling_factor") if index.has_latents else None
        found = getattr(getattr(vae, "config", None), "scaling_factor", None)
        if stored is not None and found is not None and abs(float(found) - float(stored)) > 1e-6:
            raise GuidanceKitError(
                f"pixel_space='latent': the index's latents were made with scaling_factor {stored} but the "
                f"pipeline's VAE has {found}; build the index with this pipeline's VAE"
            )
        return None
    if config.preview_decoder is None:
        return decoder or pipeline_decoder(pipe_or_unet if is_pipe else None)
    if decoder is not None:
        raise GuidanceKitError("decoder= and config.preview_decoder exclude each other; give one")
    device = next(module.parameters()).device
    channels = _latent_channels(pipe_or_unet, module)
    return vae_decoder(load_preview_decoder(config.preview_decoder, latent_channels=channels, device=device))


def _prompt_encoder(pipe):
    if not hasattr(pipe, "encode_prompt") or getattr(pipe, "text_encoder", None) is None:
        return None

    def encode(text: str) -> Tensor:
        with torch.no_grad():
            return pipe.encode_prompt(text, pipe.device, 1, False)[0]

    return encode


class _AMGHandler:
    def __init__(self, engine: AntiMemorizationGuidance, scale, skip: int | None, k: float) -> None:
        self.engine = engine
        self.scale = scale
        self.skip = skip
        self.k = k
        self.stats = {"denoiser_calls": 0, "uncond_forwards": 0}
        self._schedule = None

    def before(self, call: DenoiserCall) -> bool:
        self.stats["denoiser_calls"] += 1
        if self.skip is None or not call.cfg:
            self.stats["uncond_forwards"] += int(call.cfg)
            return False
        if call.j == 0 or self._schedule is None:
            self._schedule = compress_schedule(call.n, min(self.skip, call.n), self.k, weight_mode="none")
        guided = call.j >= self._schedule.n or self._schedule.is_guided(call.j)
        full = guided or (call.j > 0 and self.engine.wants_cfg())
        self.stats["uncond_forwards"] += int(full)
        return not full

    def after(self, call: DenoiserCall) -> Tensor | None:
        return self.engine.edit(call, self.scale())


@contextmanager
def amg(
    pipe_or_unet,
    index,
    *,
    config: AMGConfig | None = None,
    captions=None,
    sscd_path: str | Path | None = None,
    log_path: str | Path | None = None,
    scheduler=None,
    guidance_scale: float | None = None,
    decoder=None,
) -> Iterator[AntiMemorizationGuidance]:
    """Anti-Memorization Guidance inside the block: call ``pipe(...)`` as usual.

    ``pipe_or_unet``: a diffusers pipeline (CFG batched as [uncond; cond]; g read from the pipeline) or a bare
    denoiser with ``scheduler=`` (and ``guidance_scale=`` when it runs CFG as [null; y], as `sample` does).
    ``captions``: `CaptionStats`, or one caption per index row (built into `CaptionStats`).
    Yields the `AntiMemorizationGuidance` (``records``, ``summary()``, ``stats``). ``log_path``: per-step
    records as JSONL, written on exit. ``decoder``: x̂₀ → images in [0, 1] for detection (default: the
    pipeline's VAE, or ``config.preview_decoder``; none with ``config.pixel_space="latent"``).
    """
    config = config or AMGConfig()
    if isinstance(captions, (list, tuple)):
        from ..captions import CaptionStats

        captions = CaptionStats.build(list(captions), index)
    module, sched = resolve_denoiser(pipe_or_unet, scheduler)
    if sched is None:
        raise GuidanceKitError("amg: pass scheduler= with a bare denoiser (ᾱ_t is read from it)")
    if config.backend == "sscd" and index.embedder is None:
        if sscd_path is None:
            raise GuidanceKitError("backend='sscd' needs sscd_path= (a local SSCD TorchScript file)")
        from difflab_core.metrics import SSCDEmbedder

        with core_errors("sscd_path"):
            index.embedder = SSCDEmbedder.from_torchscript(sscd_path)
    is_pipe = module is not pipe_or_unet
    engine = AntiMemorizationGuidance(
        config,
        index,
        captions=captions,
        decoder=_detection_decoder(pipe_or_unet, module, index, config, decoder, is_pipe),
        encode_prompt=_prompt_encoder(pipe_or_unet) if is_pipe else None,
    )
    if is_pipe:
        scale = (
            (lambda: float(guidance_scale))
            if guidance_scale is not None
            else (lambda: float(getattr(pipe_or_unet, "guidance_scale", 1.0)))
        )
        has_flag = hasattr(type(pipe_or_unet), "do_classifier_free_guidance")
        cfg = (lambda call: bool(pipe_or_unet.do_classifier_free_guidance)) if has_flag else False
    else:
        g = 1.0 if guidance_scale is None else float(guidance_scale)
        scale, cfg = (lambda: g), g != 1.0
    handler = _AMGHandler(engine, scale, config.compress_skip, config.compress_k)
    engine.stats = handler.stats
    try:
        with DenoiserEditHook(module, handler, scheduler=sched, cfg=cfg):
            yield engine
    finally:
        if log_path is not None:
            path = Path(log_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as fh:
                for record in engine.records:
                    fh.write(json.dumps(record.to_dict()) + "\n")


@dataclass
class AMGResult:
    """``images`` [len(seeds)·len(prompts), 3, H, W] in [0, 1], seed-major; ``records``: per-step
    `AMGStepRecord`s (``run`` = seed position); ``summary``: `AntiMemorizationGuidance.summary` plus timing."""

    images: Tensor
    records: list[AMGStepRecord]
    summary: dict


def generate_with_amg(
    pipe,
    prompts: Sequence[str],
    *,
    index,
    seeds: Sequence[int] = (0,),
    config: AMGConfig | None = None,
    captions=None,
    out_dir: str | Path | None = None,
    sscd_path: str | Path | None = None,
    **pipe_kwargs,
) -> AMGResult:
    """Generate every prompt once per seed with AMG; each image's noise comes from its own
    ``torch.Generator("cpu").manual_seed(seed)``, so a plain ``pipe(prompts, generator=[...])`` with the same
    generators is the no-AMG reference. ``pipe_kwargs`` go to ``pipe(...)`` (e.g. num_inference_steps,
    guidance_scale). ``out_dir``: PNGs ``<seed>_<prompt#>.png``, ``steps.jsonl`` and ``summary.json``."""
    prompts = list(prompts)
    if not prompts:
        raise GuidanceKitError("prompts: give at least one prompt")
    if not seeds:
        raise GuidanceKitError("seeds: give at least one seed")
    start = time.perf_counter()
    images = []
    kwargs = {"output_type": "pt"} | pipe_kwargs
    log = None if out_dir is None else Path(out_dir) / "steps.jsonl"
    with amg(pipe, index, config=config, captions=captions, sscd_path=sscd_path, log_path=log) as engine:
        for seed in seeds:
            gens = [torch.Generator("cpu").manual_seed(int(seed)) for _ in prompts]
            images.append(pipe(prompts, generator=gens, **kwargs).images)
    images = torch.cat(images) if isinstance(images[0], Tensor) else [im for batch in images for im in batch]
    summary = engine.summary() | {
        "wall_s": round(time.perf_counter() - start, 3),
        "stats": dict(engine.stats),
    }
    if out_dir is not None:
        _save(Path(out_dir), images, prompts, seeds, summary)
    return AMGResult(images, engine.records, summary)


def _save(folder: Path, images, prompts, seeds, summary) -> None:
    from difflab_core.report import to_pil

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        seed, p = seeds[i // len(prompts)], i % len(prompts)
        (to_pil(image) if isinstance(image, Tensor) else image).save(folder / f"{seed}_{p:04d}.png")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def calibrate(
    pipe,
    index,
    clean_prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    quantile: float = 0.99,
    memorized_prompts: Sequence[str] | None = None,
    is_memorized=None,
    config: AMGConfig | None = None,
    **pipe_kwargs,
) -> AMGConfig:
    """Fit AMG to a model: raise ``lambda_floor`` to the ``quantile`` of σ₁ over clean generations (if
    higher), then, with ``memorized_prompts`` and ``is_memorized(images) -> bool [N]``, pick ``sim_scale`` as the
    smallest grid value that halves their memorized fraction (spec §2.3)."""
    config = config or AMGConfig()
    if not 0 < quantile <= 1:
        raise GuidanceKitError(f"quantile must be in (0, 1], got {quantile}")
    probe = config.replace(terms=frozenset(), lambda_floor=float("inf"))
    result = generate_with_amg(pipe, clean_prompts, index=index, seeds=seeds, config=probe, **pipe_kwargs)
    sigmas = torch.tensor([r.sigma1 for r in result.records if r.sigma1 is not None])
    floor = config.lambda_floor
    if len(sigmas):
        floor = max(floor, float(torch.quantile(sigmas, quantile)))
    config = config.replace(lambda_floor=floor)
    if memorized_prompts is None:
        return config
    if is_memorized is None:
        raise GuidanceKitError("calibrate: memorized_prompts needs is_memorized(images) -> bool tensor")
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds for _ in memorized_prompts]
    kwargs = {"output_type": "pt"} | pipe_kwargs
    before = (
        is_memorized(pipe(list(memorized_prompts) * len(seeds), generator=gens, **kwargs).images)
        .float()
        .mean()
    )
    for scale in SIM_SCALE_GRID:
        trial = config.replace(sim_scale=scale)
        after = generate_with_amg(
            pipe, memorized_prompts, index=index, seeds=seeds, config=trial, **pipe_kwargs
        )
        if float(is_memorized(after.images).float().mean()) <= 0.5 * float(before):
            return trial
    return config.replace(sim_scale=SIM_SCALE_GRID[-1])
