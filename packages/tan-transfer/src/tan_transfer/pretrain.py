"""`pretrain_source`: train the source DDPM of an offline task (e.g. photo patches) and cache it as a diffusers folder.

The model and noise schedule are those of core's shipped digits DDPM (`difflab_core.testbed.digits`:
``UNet2DModel`` with blocks (16, 32, 64), attention at the lowest resolution, 0.69 M parameters at 1×16×16; a
1000-step cosine ``DDPMScheduler``, ε-prediction, x₀ clipped when sampling) and so is the recipe (AdamW lr 2e-3,
100 warm-up steps then cosine, gradient clip 1, EMA 0.995, batch 64). Training runs on `difflab_core.train.Trainer`
(Accelerate, checkpoints every ``checkpoint_every`` steps, exact resume).

Layout of ``out_dir``: ``config.json`` (settings + data fingerprint; a rerun with other settings raises),
``checkpoints/`` + ``train_log.jsonl`` (Trainer), ``model_ema.safetensors``, and ``pipeline/``: a
``DDPMPipeline`` folder (``model_index.json``, ``unet/`` safetensors, ``scheduler/``) that `load_dpm` and any
diffusers code load. ``pretrain.json`` is written last: its presence marks a finished run, which a second call
just loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from difflab_core.errors import DifflabError
from difflab_core.loading import file_sha256
from difflab_core.store import write_run_config
from difflab_core.testbed.digits import DDPM_RECIPE, scheduler_config, unet_config
from difflab_core.tiny import seeded
from difflab_core.train import TrainConfig, Trainer, seeded_loader

from .errors import TanTransferError
from .model import DPMBundle, load_dpm

__all__ = ["PIPELINE_DIR", "default_unet_config", "denoising_loss", "pretrain_source"]

PIPELINE_DIR = "pipeline"
DONE_FILE = "pretrain.json"


def default_unet_config(size: int, channels: int) -> dict[str, Any]:
    """Core's digits-DDPM `UNet2DModel` config (`DDPM_RECIPE`) for ``channels × size × size`` images."""
    return unet_config(DDPM_RECIPE, size, channels)


def denoising_loss(unet: nn.Module, x0: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The DDPM ε-prediction loss: mean ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² over t ~ U{0..T−1}, ε ~ N(0, I).

    ``x0`` ``[B, C, H, W]`` in [−1, 1]; noise and t come from the global torch RNG (checkpointed by the Trainer).
    """
    noise = torch.randn_like(x0)
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), device=x0.device)
    ab = alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
    pred = unet(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t).sample
    return F.mse_loss(pred, noise)


def _check_images(images: Tensor, batch_size: int) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise TanTransferError("images", "must be a tensor [N, C, H, W] in [-1, 1]")
    n, _, h, w = images.shape
    if h != w:
        raise TanTransferError("images", f"must be square, got {h}×{w}")
    if not bool(torch.isfinite(images).all()):
        raise TanTransferError("images", "hold non-finite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise TanTransferError("images", f"must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    if n < batch_size:
        raise TanTransferError("images", f"{n} images are fewer than batch_size={batch_size}")
    return images.detach().float().cpu()


def _fingerprint(images: Tensor) -> str:
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def _build_unet(config: dict[str, Any], seed: int) -> nn.Module:
    from diffusers import UNet2DModel

    try:
        with seeded(seed):
            return UNet2DModel(**config)
    except (TypeError, ValueError) as err:
        raise TanTransferError("unet_config", f"not a valid UNet2DModel config: {err}") from err


def pretrain_source(
    images: Tensor,
    *,
    out_dir: str | Path,
    steps: int = 4000,
    batch_size: int = DDPM_RECIPE.batch_size,
    lr: float = DDPM_RECIPE.lr,
    seed: int = 0,
    unet_config: dict[str, Any] | None = None,
    checkpoint_every: int = 250,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> DPMBundle:
    """Train an unconditional pixel DDPM on ``images`` ``[N, C, S, S]`` in [−1, 1]; return it as a `DPMBundle`.

    ``unet_config`` (default `default_unet_config`) is passed to ``UNet2DModel``; its ``sample_size`` /
    channels must match the images. The EMA weights are written to ``out_dir/pipeline`` (a ``DDPMPipeline``
    folder, safetensors) and loaded back with `load_dpm`. A stopped run resumes from its last checkpoint; a
    finished ``out_dir`` is only loaded; one made with other settings or data raises `TanTransferError`.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    if steps < 1:
        raise TanTransferError("steps", f"must be >= 1, got {steps}")
    if batch_size < 1:
        raise TanTransferError("batch_size", f"must be >= 1, got {batch_size}")
    if not lr > 0:
        raise TanTransferError("lr", f"must be > 0, got {lr}")
    images = _check_images(images, batch_size)
    channels, size = images.shape[1], images.shape[2]
    config = dict(unet_config) if unet_config is not None else default_unet_config(size, channels)
    expected = {"sample_size": size, "in_channels": channels, "out_channels": channels}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k, v) != v}
    if wrong:
        raise TanTransferError("unet_config", f"{wrong} does not fit the images ({channels}×{size}×{size})")
    config |= expected
    sched_config = scheduler_config(DDPM_RECIPE)
    settings = {
        "unet_config": config,
        "scheduler": sched_config,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "recipe": {
            "warmup_steps": DDPM_RECIPE.warmup_steps,
            "lr_schedule": DDPM_RECIPE.lr_schedule,
            "max_grad_norm": DDPM_RECIPE.max_grad_norm,
            "ema_decay": DDPM_RECIPE.ema_decay,
            "weight_decay": DDPM_RECIPE.weight_decay,
        },
        "n_images": len(images),
        "data_fingerprint": _fingerprint(images),
    }
    out_dir = Path(out_dir)
    try:
        write_run_config(out_dir, settings)
    except DifflabError as err:
        raise TanTransferError(
            out_dir, f"was pretrained with other settings or data ({err}); use another out_dir or delete it"
        ) from err
    pipeline_dir = out_dir / PIPELINE_DIR
    if not (out_dir / DONE_FILE).is_file():
        unet = _build_unet(config, seed)
        noise_scheduler = DDPMScheduler.from_config(sched_config)
        alphas_cumprod = noise_scheduler.alphas_cumprod.float()

        def loss_fn(model: nn.Module, batch, step: int) -> Tensor:
            return denoising_loss(model, batch[0], alphas_cumprod)

        loader = seeded_loader(TensorDataset(images), batch_size, seed=seed, drop_last=True)
        train_config = TrainConfig(
            max_steps=steps,
            lr=lr,
            weight_decay=DDPM_RECIPE.weight_decay,
            warmup_steps=min(DDPM_RECIPE.warmup_steps, steps - 1),
            lr_schedule=DDPM_RECIPE.lr_schedule,
            max_grad_norm=DDPM_RECIPE.max_grad_norm,
            ema_decay=DDPM_RECIPE.ema_decay,
            checkpoint_every=checkpoint_every,
            seed=seed,
            log_every=min(50, steps),
            progress=progress,
        )
        trainer = Trainer(unet, loss_fn, loader, train_config, out_dir)
        try:
            result = trainer.fit(resume=True)
        except DifflabError as err:
            raise TanTransferError(out_dir, str(err)) from err
        trained = trainer.accelerator.unwrap_model(trainer.model).cpu().eval()
        with trainer.ema.average_weights(trained):
            DDPMPipeline(unet=trained, scheduler=noise_scheduler).save_pretrained(
                pipeline_dir, safe_serialization=True
            )
        card = {
            "steps": result.step,
            "final_loss": result.last_loss,
            "loss_history": [[s, round(v, 5)] for s, v in result.loss_history],
            "weights": "ema",
            "unet_sha256": file_sha256(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"),
            "fingerprint": json.loads((out_dir / "config.json").read_text())["fingerprint"],
        }
        tmp = out_dir / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.replace(out_dir / DONE_FILE)
    return _load_finished(out_dir, device)


def _load_finished(out_dir: Path, device: str | torch.device) -> DPMBundle:
    card = json.loads((out_dir / DONE_FILE).read_text())
    weights = out_dir / PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file() or file_sha256(weights) != card.get("unet_sha256"):
        raise TanTransferError(
            weights, f"missing or changed since {DONE_FILE} was written; delete {out_dir} to pretrain again"
        )
    return load_dpm(out_dir / PIPELINE_DIR, device=device)
