"""`load_dpm`: a pretrained diffusion model from a local diffusers folder, as a `DPMBundle`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab_core.device import resolve_device
from difflab_core.errors import DifflabError
from difflab_core.loading import load_model, load_pipeline, read_json

from .errors import TanTransferError

__all__ = ["DPMBundle", "load_dpm"]

SUPPORTED_UNETS = ("UNet2DModel", "UNet2DConditionModel")


@dataclass
class DPMBundle:
    """A diffusion model's parts: ``unet``, its training ``noise_scheduler`` (a `DDPMScheduler`), and for latent
    or text-conditional models ``vae`` (KL or VQ), ``text_encoder``, ``tokenizer``; ``pipeline`` when loaded
    from a pipeline folder. Images are ``[B, C, H, W]`` in [−1, 1] everywhere.
    """

    unet: nn.Module
    noise_scheduler: Any
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    pipeline: Any = None
    path: Path | None = None
    _embeds: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        name = type(self.unet).__name__
        if name not in SUPPORTED_UNETS:
            raise TanTransferError(
                self.path or "unet", f"found a {name}; supported UNets are {SUPPORTED_UNETS}"
            )
        if self.conditional and (self.text_encoder is None or self.tokenizer is None):
            raise TanTransferError(
                self.path or "unet",
                "a UNet2DConditionModel needs a text_encoder and tokenizer (a full pipeline)",
            )

    @classmethod
    def from_unet(cls, unet: nn.Module, scheduler: Any = None) -> DPMBundle:
        """A pixel-space bundle from an in-memory UNet; ``scheduler``'s config fixes β_t (default: linear DDPM)."""
        from diffusers import DDPMScheduler

        config = dict(scheduler.config) if scheduler is not None else {}
        return cls(unet=unet, noise_scheduler=DDPMScheduler.from_config(config))

    @property
    def conditional(self) -> bool:
        return type(self.unet).__name__ == "UNet2DConditionModel"

    @property
    def latent_kind(self) -> str | None:
        """None (pixel), "kl" (AutoencoderKL) or "vq" (VQModel)."""
        if self.vae is None:
            return None
        return "vq" if type(self.vae).__name__ == "VQModel" else "kl"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the images the model makes (pixels)."""
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        if self.vae is not None:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(size)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.noise_scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def _scaling(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [−1, 1] → what the UNet models: identity, KL latent mean × scaling_factor, or VQ latents."""
        images = images.to(self.device, dtype=next(self.unet.parameters()).dtype)
        if self.vae is None:
            return images
        vae_in = images.to(next(self.vae.parameters()).dtype)
        if self.latent_kind == "vq":
            return self.vae.encode(vae_in).latents * self._scaling()
        return self.vae.encode(vae_in).latent_dist.mean * self._scaling()

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """The UNet's space → images in [−1, 1] (clamped)."""
        if self.vae is None:
            return x0.clamp(-1, 1)
        z = (x0 / self._scaling()).to(next(self.vae.parameters()).dtype)
        return self.vae.decode(z).sample.clamp(-1, 1)

    @torch.no_grad()
    def prompt_embeds(self, prompts: list[str] | str) -> Tensor:
        """Text-encoder hidden states ``[B, L, D]`` for ``prompts`` (cached per prompt)."""
        if not self.conditional:
            raise TanTransferError("prompt", "this model is unconditional; it takes no prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeds]
        if missing:
            tok = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            device = next(self.text_encoder.parameters()).device
            hidden = self.text_encoder(tok.input_ids.to(device))[0]
            for p, h in zip(missing, hidden, strict=True):
                self._embeds[p] = h
        return torch.stack([self._embeds[p] for p in prompts]).to(self.device)

    def to(self, device: str | torch.device) -> DPMBundle:
        device = resolve_device(device)
        for part in (self.unet, self.vae, self.text_encoder):
            if part is not None:
                part.to(device)
        self._embeds = {k: v.to(device) for k, v in self._embeds.items()}
        return self


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not Path(path).exists()


def _scheduler_from_folder(folder: Path):
    from diffusers import DDPMScheduler

    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return DDPMScheduler.from_config(read_json(candidate))
    return DDPMScheduler()  # ANT's linear 1e-4..0.02, T = 1000


def load_dpm(
    path: str | Path, *, device: str | torch.device = "auto", dtype: torch.dtype | None = None
) -> DPMBundle:
    """Load a local diffusers model: a ``UNet2DModel`` folder (config.json + weights, optional
    scheduler_config.json), or a pipeline folder (``model_index.json``: DDPM/DDIM, latent with ``vqvae``/``vae``,
    or Stable-Diffusion-like text-conditional). Nothing is downloaded; a hub id raises `TanTransferError`.
    """
    import diffusers

    text = str(path)
    if _looks_like_hub_id(text):
        raise TanTransferError(text, "looks like a hub id; download the model once and give its local folder")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise TanTransferError(folder, "model folder not found")
    if not folder.is_dir():
        raise TanTransferError(folder, "expected a diffusers folder, found a file")
    dev = resolve_device(device)
    try:
        if (folder / "model_index.json").is_file():
            index = read_json(folder / "model_index.json")
            unet_entry = index.get("unet")
            if not unet_entry or unet_entry[1] not in SUPPORTED_UNETS:
                found = unet_entry[1] if unet_entry else "no unet"
                raise TanTransferError(
                    folder, f"model_index.json has {found}; supported UNets are {SUPPORTED_UNETS}"
                )
            pipe = load_pipeline(folder, device=dev, dtype=dtype or "fp32")
            pipe.set_progress_bar_config(disable=True)
            scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
            vae = getattr(pipe, "vqvae", None) or getattr(pipe, "vae", None)
            bundle = DPMBundle(
                unet=pipe.unet,
                noise_scheduler=scheduler,
                vae=vae,
                text_encoder=getattr(pipe, "text_encoder", None),
                tokenizer=getattr(pipe, "tokenizer", None),
                pipeline=pipe,
                path=folder,
            )
        elif (folder / "config.json").is_file():
            config = read_json(folder / "config.json")
            cls_name = config.get("_class_name", "UNet2DModel")
            if cls_name not in SUPPORTED_UNETS:
                raise TanTransferError(
                    folder, f"config.json describes a {cls_name}; supported UNets are {SUPPORTED_UNETS}"
                )
            if cls_name == "UNet2DConditionModel":
                raise TanTransferError(
                    folder, "a bare UNet2DConditionModel needs its pipeline folder (vae, text encoder)"
                )
            unet = load_model(folder, diffusers.UNet2DModel, dtype=dtype or "fp32")
            bundle = DPMBundle(unet=unet.to(dev), noise_scheduler=_scheduler_from_folder(folder), path=folder)
        else:
            found = sorted(p.name for p in folder.iterdir())[:8]
            raise TanTransferError(
                folder, f"no model_index.json or config.json (found {found}); not a diffusers folder"
            )
    except TanTransferError:
        raise
    except DifflabError as err:
        raise TanTransferError(folder, str(err)) from err
    bundle.unet.eval().requires_grad_(False)
    for part in (bundle.vae, bundle.text_encoder):
        if part is not None:
            part.eval().requires_grad_(False)
    return bundle
