"""Bright Ending (Chen et al., ICLR 2025): where in the image is the copy?

At the final denoising step, memorized patches put high cross-attention on the end-of-text token. For a batch
of prompt-major images b, the BE map is (spec §2.2)

    M_b = mean_{l ∈ S} mean_h softmax(q kᵀ/√d)[b, h, :, e_b]  reshaped to [h_S, w_S],

with S the down-path ``attn2`` layers at the highest resolution that has cross-attention, e_b the first EOS
position of image b's prompt, and the conditional CFG branch only. `BrightEnding` produces it in one pipeline
run through `difflab_core.attention.AttentionCapture`; nothing of the pipeline is forked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from difflab_core.attention import (
    AttentionCapture,
    LayerInfo,
    cross_attention_layers,
    eos_indices,
    select_layers,
)
from difflab_core.tracking import NoiseTrace, NoiseTracker

from .errors import MemLocateError, core_errors

__all__ = [
    "BrightEnding",
    "LocalizeResult",
    "binarize",
    "check_pipeline",
    "draw_latents",
    "normalize_maps",
    "otsu_threshold",
    "overlay",
    "ren_le_layer",
    "select_be_layers",
    "upsample_map",
]


# ---------------------------------------------------------------------------------------------- pipeline checks
def check_pipeline(pipe) -> None:
    """Raise unless ``pipe`` is a text-to-image pipeline with a diffusers UNet that has cross-attention."""
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "down_blocks"):
        raise MemLocateError(
            f"{type(pipe).__name__}: BE needs a UNet with cross-attention layers (SD1.x/SD2.x/SDXL); "
            "transformer pipelines (SD3, Flux) are not supported"
        )
    if getattr(pipe, "tokenizer", None) is None:
        raise MemLocateError(f"{type(pipe).__name__}: the pipeline has no tokenizer")
    with core_errors(type(pipe).__name__):
        if not cross_attention_layers(unet):
            raise MemLocateError(f"{type(pipe).__name__}: BE needs a UNet with cross-attention layers")


def select_be_layers(unet, spec="down-highest") -> list[LayerInfo]:
    """The BE layer set S (spec §2.2.1): core's `select_layers`, with errors as `MemLocateError`."""
    with core_errors(f"layers={spec!r}"):
        return select_layers(unet, spec)


def ren_le_layer(unet, override: str | None = None) -> LayerInfo:
    """Ren et al.'s LE layer: call-order index 3 among ``attn2`` layers (the last if fewer), or ``override``."""
    with core_errors("ren_layer"):
        if override is not None:
            return select_layers(unet, [override] if "." in override and "*" not in override else override)[0]
        layers = [info for info in cross_attention_layers(unet) if info.name.endswith("attn2")]
    if not layers:
        raise MemLocateError("ren_le_layer: the UNet has no attn2 cross-attention layer")
    return layers[3] if len(layers) > 3 else layers[-1]


@contextmanager
def ddim_scheduler(pipe, scheduler: str = "ddim"):
    """Swap ``pipe.scheduler`` for DDIM (``DDIMScheduler.from_config``) inside the block; ``"keep"`` opts out."""
    from diffusers import DDIMScheduler

    if scheduler not in ("ddim", "keep"):
        raise MemLocateError(f"scheduler={scheduler!r}: use 'ddim' (the official sampler) or 'keep'")
    saved = pipe.scheduler
    if scheduler == "ddim" and not isinstance(saved, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(saved.config)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = saved


def draw_latents(
    pipe,
    seeds: Sequence[int],
    n: int,
    *,
    height: int | None = None,
    width: int | None = None,
    rng_device: str = "cpu",
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """x_T for a prompt-major batch: prompt i's n latents come from one call of a generator seeded ``seeds[i]``.

    Returns (latents [len(seeds)·n, C, h, w] on the pipeline's device and dtype, generators): the list holds
    prompt i's generator n times, so that DDIM noise with η > 0 continues each prompt's own stream.
    """
    device = pipe.unet.device
    if rng_device not in ("cpu", "same"):
        raise MemLocateError(f"latent_rng_device={rng_device!r}: use 'cpu' or 'same'")
    gen_device = "cpu" if rng_device == "cpu" else device
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    size = int(pipe.unet.config.sample_size)
    h = (height // factor) if height else size
    w = (width // factor) if width else size
    shape = (n, int(pipe.unet.config.in_channels), h, w)
    latents, gens = [], []
    for s in seeds:
        g = torch.Generator(gen_device).manual_seed(int(s))
        latents.append(torch.randn(shape, generator=g, device=gen_device, dtype=torch.float32))
        gens.extend([g] * n)
    return torch.cat(latents).to(device=device, dtype=pipe.unet.dtype), gens


# ---------------------------------------------------------------------------------------------- map helpers
def upsample_map(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps [B, h, w] (or [h, w]) to ``size``; fp32."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    m = maps.float()
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    if m.ndim != 3:
        raise MemLocateError(f"upsample_map: maps must be [B, h, w] or [h, w], got {tuple(maps.shape)}")
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return m[0] if squeeze else m


def normalize_maps(maps: torch.Tensor, mode: str = "minmax", *, per_image: bool = True) -> torch.Tensor:
    """Rescale maps [B, h, w].

    ``mode``: "minmax" → [0, 1]; "log1p" → log1p then min–max; "mean" → m / mean(m) (the scale BE's detection
    and mitigation use); "max" → m / max(m). ``per_image=False`` takes the statistics over the whole batch.
    A constant map becomes 0 under min–max.
    """
    m = maps.float()
    if m.ndim == 2:
        m = m[None]
    dims = (-2, -1) if per_image else (0, -2, -1)
    if mode == "log1p":
        m, mode = torch.log1p(m.clamp_min(0)), "minmax"
    if mode == "minmax":
        lo, hi = m.amin(dim=dims, keepdim=True), m.amax(dim=dims, keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1), torch.zeros_like(m))
    if mode == "mean":
        return m / m.mean(dim=dims, keepdim=True).clamp_min(1e-12)
    if mode == "max":
        return m / m.amax(dim=dims, keepdim=True).clamp_min(1e-12)
    raise MemLocateError(f"normalize_maps: mode={mode!r}; use 'minmax', 'log1p', 'mean' or 'max'")


def otsu_threshold(values: torch.Tensor | np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the bin centre maximising the between-class variance."""
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    x = x.ravel()
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w1 = np.cumsum(hist).astype(np.float64)
    w2 = np.cumsum(hist[::-1])[::-1].astype(np.float64)
    m1 = np.cumsum(hist * centers) / np.maximum(w1, 1e-300)
    m2 = (np.cumsum((hist * centers)[::-1]) / np.maximum(w2[::-1], 1e-300))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def binarize(maps: torch.Tensor, threshold: float | str = "otsu") -> torch.Tensor:
    """Binary masks (float {0, 1}) from maps [B, h, w]: ``map > threshold``, or Otsu per image."""
    m = maps.float()
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    if threshold == "otsu":
        out = torch.stack([(mi > otsu_threshold(mi)).float() for mi in m])
    elif isinstance(threshold, (int, float)):
        out = (m > float(threshold)).float()
    else:
        raise MemLocateError(f"binarize: threshold={threshold!r}; give a number or 'otsu'")
    return out[0] if squeeze else out


def overlay(image, heat: torch.Tensor, path: str | os.PathLike[str] | None = None, *, alpha: float = 0.5):
    """A heatmap PNG of ``heat`` [h, w] over ``image`` ([3, H, W] in [0, 1] or PIL); saved to ``path`` if given."""
    from difflab_core.report import heatmap_overlay

    with core_errors("overlay"):
        img = heatmap_overlay(image, heat, alpha=alpha)
    if path is not None:
        img.save(path)
    return img


# ---------------------------------------------------------------------------------------------- result
@dataclass
class LocalizeResult:
    """What `BrightEnding` returns.

    ``images``: pipeline output (``[B, 3, H, W]`` in [0, 1] for ``output_type="pt"``); ``maps`` [B, h, w] fp32
    raw BE maps at ``timestep`` (the last step); ``eos_index`` LongTensor[B]; ``layers`` the layer names;
    ``noise`` a core `NoiseTrace` when tracked; ``seeds`` one per prompt; ``tokens`` [S, L, B, K]
    head-and-query-mean token distributions at ``token_steps`` × ``token_layers`` when requested (Ren).
    """

    images: object
    maps: torch.Tensor
    eos_index: torch.Tensor
    layers: list[str]
    timestep: float
    noise: NoiseTrace | None = None
    seeds: list[int] | None = None
    num_images_per_prompt: int = 1
    tokens: torch.Tensor | None = None
    token_steps: list[int] | None = None
    token_layers: list[str] | None = None

    def upsample(self, size: int | tuple[int, int]) -> torch.Tensor:
        """Maps bilinearly resized to ``size``: [B, H, W]."""
        return upsample_map(self.maps, size)

    def normalized(self, mode: str = "minmax") -> torch.Tensor:
        """Per-image normalised maps (see `normalize_maps`)."""
        return normalize_maps(self.maps, mode)

    def binarize(self, threshold: float | str = "otsu", *, size: int | tuple[int, int] | None = None):
        """Binary masks from the min–max normalised maps (optionally resized first)."""
        m = self.maps if size is None else self.upsample(size)
        return binarize(normalize_maps(m, "minmax"), threshold)


# ---------------------------------------------------------------------------------------------- Bright Ending
class BrightEnding:
    """Localize memorized regions with the end-token attention map of the last denoising step.

    Args:
        pipe: a diffusers Stable Diffusion pipeline (SD1.x/2.x; SDXL experimental).
        layers: the layer set S, any `difflab_core.attention.select_layers` spec (default: "down-highest").
        scheduler: "ddim" swaps in ``DDIMScheduler.from_config`` for the call (official), "keep" does not.
    """

    def __init__(self, pipe, *, layers="down-highest", scheduler: str = "ddim") -> None:
        check_pipeline(pipe)
        if scheduler not in ("ddim", "keep"):
            raise MemLocateError(f"scheduler={scheduler!r}: use 'ddim' or 'keep'")
        self.pipe = pipe
        self.layers = select_be_layers(pipe.unet, layers)
        self.scheduler = scheduler

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        eos_index: int | Sequence[int] | torch.Tensor | None = None,
        track_noise: bool = False,
        noise_keep: Sequence[str] = ("norm", "sqsum"),
        steps: str | Sequence[int] = "last",
        tokens: str | Sequence[str] | None = None,
        token_steps: str | Sequence[int] = "all",
        latent_rng_device: str = "cpu",
        capture_map: bool = True,
        inner_context=None,
        **pipe_kwargs,
    ) -> LocalizeResult:
        """One pipeline run with capture; see the class doc and spec §2.1–2.2.

        ``seed``: prompt i uses ``seed + i`` (or ``seed[i]`` for a list); its n latents come from one call.
        ``eos_index``: overrides the token column (needed with ``prompt_embeds``); one int, or one per prompt.
        ``steps``: capture steps besides the default last one ("all" or a list; ``maps`` is the last step's).
        ``tokens``: a layer spec whose token distributions are also recorded at ``token_steps`` (Ren).
        ``capture_map=False`` skips the BE capture (``maps`` is then empty; e.g. Wen's early-stopped runs).
        ``inner_context``: a context manager entered inside the capture (e.g. core's ``PlantedAttention``).
        ``pipe_kwargs`` go to the pipeline (``eta``, ``height``, ``guidance_rescale``, ``output_type``, …).
        """
        pipe = self.pipe
        if num_inference_steps < 1:
            raise MemLocateError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
        if num_images_per_prompt < 1:
            raise MemLocateError(f"num_images_per_prompt must be ≥ 1, got {num_images_per_prompt}")
        if guidance_scale <= 1:
            raise MemLocateError(
                f"guidance_scale must be > 1 (got {guidance_scale}): BE reads the conditional half of a CFG batch"
            )
        for reserved in ("latents", "num_images_per_prompt"):
            if reserved in pipe_kwargs:
                raise MemLocateError(
                    f"{reserved}= is set by BrightEnding; pass seed= / num_images_per_prompt="
                )
        n = num_images_per_prompt
        embeds = pipe_kwargs.get("prompt_embeds")
        if prompt is None and embeds is None:
            raise MemLocateError("give a prompt (or prompt_embeds with eos_index)")
        prompts = [prompt] if isinstance(prompt, str) else (list(prompt) if prompt is not None else None)
        n_prompts = len(prompts) if prompts is not None else int(embeds.shape[0])
        if eos_index is None:
            if prompts is None:
                raise MemLocateError(
                    "prompt_embeds needs eos_index=: the end-token position cannot be read from embeddings"
                )
            with core_errors("eos_index"):
                eos = eos_indices(pipe.tokenizer, prompts, n)
        else:
            eos = torch.as_tensor(eos_index, dtype=torch.long).reshape(-1)
            if eos.numel() == 1:
                eos = eos.expand(n_prompts)
            if eos.numel() != n_prompts:
                raise MemLocateError(
                    f"eos_index: give one index or one per prompt ({n_prompts}), got {eos.numel()}"
                )
            eos = eos.repeat_interleave(n)
        seeds = [int(seed) + i for i in range(n_prompts)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != n_prompts:
            raise MemLocateError(f"seed: got {len(seeds)} seeds for {n_prompts} prompts")
        neg = pipe_kwargs.get("negative_prompt")
        if neg and (not isinstance(neg, list) or any(neg)):
            import warnings

            warnings.warn(
                'a non-empty negative prompt changes the unconditional branch (BE uses "")', stacklevel=2
            )
        output_type = pipe_kwargs.pop("output_type", "pt")
        latents, gens = draw_latents(
            pipe,
            seeds,
            n,
            height=pipe_kwargs.get("height"),
            width=pipe_kwargs.get("width"),
            rng_device=latent_rng_device,
        )
        generator = pipe_kwargs.pop("generator", gens)
        if isinstance(steps, str) and steps not in ("last", "all"):
            raise MemLocateError(f"steps={steps!r}: use 'last', 'all' or a list of step indices")
        cap_steps = steps if steps in ("last", "all") else sorted({*steps, num_inference_steps - 1})
        with ddim_scheduler(pipe, self.scheduler) as scheduler, core_errors("BrightEnding"):
            capture = (
                AttentionCapture(pipe.unet, self.layers, scheduler=scheduler, steps=cap_steps, columns=eos)
                if capture_map
                else None
            )
            token_cap = None
            if tokens is not None:
                layer_list = (
                    tokens
                    if isinstance(tokens, list) and tokens and isinstance(tokens[0], LayerInfo)
                    else (select_be_layers(pipe.unet, tokens))
                )
                token_cap = AttentionCapture(
                    pipe.unet, layer_list, scheduler=scheduler, steps=token_steps, query_mean=True
                )
            tracker = (
                NoiseTracker(pipe.unet, scheduler=scheduler, keep=tuple(noise_keep), batch_size=n_prompts * n)
                if track_noise
                else None
            )
            with (
                capture or nullcontext(),
                token_cap or nullcontext(),
                tracker or nullcontext(),
                inner_context or nullcontext(),
            ):
                out = pipe(
                    prompts,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    num_images_per_prompt=n,
                    latents=latents,
                    generator=generator,
                    output_type=output_type,
                    **pipe_kwargs,
                )
            last = len(scheduler.timesteps) - 1
            if capture is None:
                maps = torch.empty(0)
            elif last not in capture.captured_steps:
                raise MemLocateError(
                    "BrightEnding: the last step was not reached (interrupted sampling?); no map was captured"
                )
            else:
                maps = capture.column_map(step=last)[:, 0].float()
            timestep = float(scheduler.timesteps[last])
            tok = tok_steps = tok_layers = None
            if token_cap is not None and token_cap.records:
                tok_steps = token_cap.captured_steps
                tok_layers = [info.name for info in token_cap.layers]
                tok = torch.stack(
                    [
                        torch.stack([token_cap.records[(name, s)].token_mass for name in tok_layers])
                        for s in tok_steps
                    ]
                )
        return LocalizeResult(
            images=out.images,
            maps=maps,
            eos_index=eos,
            layers=[info.name for info in self.layers],
            timestep=timestep,
            noise=tracker.trace() if tracker is not None else None,
            seeds=seeds,
            num_images_per_prompt=n,
            tokens=tok,
            token_steps=tok_steps,
            token_layers=tok_layers,
        )
