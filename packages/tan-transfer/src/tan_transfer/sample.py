"""Sampling from an adapted model with any diffusers scheduler, and diffusers pipelines with the adapters in."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import Tensor, nn

from .adapters import AdaptedUNet, load_adapters
from .errors import TanTransferError

__all__ = ["default_scheduler", "make_pipeline", "sample"]


def default_scheduler(bundle):
    """`DDIMScheduler` on the model's β schedule; x̂₀ clipped to [−1, 1] for pixel models [code]."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(bundle.noise_scheduler.config, clip_sample=bundle.vae is None)


def _resolve_model(model_or_dir, bundle) -> nn.Module:
    if model_or_dir is None:
        return bundle.unet
    if isinstance(model_or_dir, (str, Path)):
        return load_adapters(bundle.unet, model_or_dir, copy_unet=True).eval()
    if isinstance(model_or_dir, AdaptedUNet):
        return model_or_dir
    raise TanTransferError(
        "model_or_dir",
        f"expected an AdaptedUNet, an adapter folder or None, got {type(model_or_dir).__name__}",
    )


def _eps(model: nn.Module, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    if isinstance(model, AdaptedUNet):
        return model(x, t, cond)
    if cond is None:
        return model(x, t, return_dict=False)[0]
    return model(x, t, encoder_hidden_states=cond, return_dict=False)[0]


@torch.no_grad()
def sample(
    model_or_dir: AdaptedUNet | str | Path | None,
    bundle,
    n: int,
    *,
    scheduler=None,
    steps: int = 100,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 50,
    prompt: str | None = None,
    guidance_scale: float | None = None,
) -> Tensor:
    """``n`` images ``[n, C, H, W]`` in [0, 1] from the adapted model (``None``: the source model).

    ``scheduler``: any diffusers scheduler (default `default_scheduler`: DDIM, η = ``eta``, 100 steps; the
    official evaluation used η = 1 and 500 steps). ``eta`` and the generator go to ``step`` when it takes them.
    Text-conditional models take ``prompt`` (default "") and optional classifier-free ``guidance_scale``.
    Seeded: the same ``seed`` and ``batch_size`` give the same images.
    """
    if n < 1 or steps < 1 or batch_size < 1:
        raise TanTransferError(
            "sample", f"n, steps and batch_size must be >= 1, got {n}, {steps}, {batch_size}"
        )
    model = _resolve_model(model_or_dir, bundle)
    was_training = model.training
    model.eval()
    base = scheduler if scheduler is not None else default_scheduler(bundle)
    params = inspect.signature(base.step).parameters
    unet = model.unet if isinstance(model, AdaptedUNet) else model
    channels = unet.config.in_channels
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    device = bundle.device
    dtype = next(unet.parameters()).dtype
    cond = uncond = None
    if bundle.conditional:
        cond = bundle.prompt_embeds([prompt or ""]).to(dtype)
        if guidance_scale is not None and guidance_scale != 1.0:
            uncond = bundle.prompt_embeds([""]).to(dtype)
    elif prompt:
        raise TanTransferError("prompt", "this model is unconditional; it takes no prompt")
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(n, channels, size, size, generator=gen)
    outs = []
    for start in range(0, n, batch_size):
        sched = type(base).from_config(base.config)
        sched.set_timesteps(steps)
        x = (noise[start : start + batch_size] * sched.init_noise_sigma).to(device, dtype)
        b = x.shape[0]
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            tt = t.to(device)
            if uncond is not None:
                both = _eps(
                    model,
                    torch.cat([inp, inp]),
                    tt,
                    torch.cat([cond.expand(b, -1, -1), uncond.expand(b, -1, -1)]),
                )
                c, u = both.chunk(2)
                eps = u + guidance_scale * (c - u)
            else:
                eps = _eps(model, inp, tt, None if cond is None else cond.expand(b, -1, -1))
            kwargs = {}
            if "eta" in params:
                kwargs["eta"] = eta
            if "generator" in params:
                kwargs["generator"] = gen
            x = sched.step(eps, t, x, **kwargs).prev_sample
        outs.append(((bundle.decode(x).float() + 1) / 2).clamp(0, 1).cpu())
    model.train(was_training)
    return torch.cat(outs)


def make_pipeline(bundle, model: AdaptedUNet, *, sampler: str = "ddim"):
    """A diffusers pipeline using the adapted UNet: `DDIMPipeline`/`DDPMPipeline` for pixel models, otherwise the
    bundle's own pipeline class with the UNet swapped in."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    if not isinstance(model, AdaptedUNet):
        raise TanTransferError("model", f"expected an AdaptedUNet, got {type(model).__name__}")
    if sampler not in ("ddim", "ddpm"):
        raise TanTransferError("sampler", f"{sampler!r}: use 'ddim' or 'ddpm'")
    if bundle.pipeline is not None and bundle.vae is not None:
        components = {**bundle.pipeline.components, "unet": model.unet}
        pipe = type(bundle.pipeline)(**components)
    elif sampler == "ddim":
        pipe = DDIMPipeline(
            unet=model.unet, scheduler=DDIMScheduler.from_config(bundle.noise_scheduler.config)
        )
    else:
        pipe = DDPMPipeline(
            unet=model.unet, scheduler=DDPMScheduler.from_config(bundle.noise_scheduler.config)
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
