"""An exact, parameter-free "autoencoder": 2×2 pixel-unshuffle (32×32×3 → 16×16×12) and its inverse.

It stands in for the VAE of a `StableDiffusionPipeline`, so the testbed runs the stock pipeline while its
latents are lossless images: x ∈ [−1, 1]^{3×H×W} ↔ z = unshuffle(x). ``scaling_factor`` is 1, so the
pipeline's division by it before decoding changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class PointDistribution:
    """A deterministic latent "distribution": ``sample()`` and ``mode()`` both return the latent."""

    def __init__(self, latent: torch.Tensor) -> None:
        self.latent = latent

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent

    def mode(self) -> torch.Tensor:
        return self.latent


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Lossless VAE stand-in: ``encode`` is ``pixel_unshuffle(x, factor)``, ``decode`` its inverse.

    ``block_out_channels`` only exists so pipelines derive ``vae_scale_factor = 2 ** (len − 1) = factor``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        factor: int = 2,
        scaling_factor: float = 1.0,
        block_out_channels: tuple[int, ...] = (12, 12),
        latent_channels: int = 12,
    ) -> None:
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != factor:
            raise ValueError("block_out_channels must have log2(factor) + 1 entries")
        if latent_channels != in_channels * factor**2:
            raise ValueError("latent_channels must equal in_channels * factor**2")
        # A buffer gives the module a device and dtype, as pipelines expect of a VAE.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x [B, C, H, W] in [−1, 1] → latent [B, C·f², H/f, W/f] (times ``scaling_factor`` in use)."""
        latent = F.pixel_unshuffle(x, self.config.factor)
        dist = PointDistribution(latent)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """latent [B, C·f², h, w] → image [B, C, h·f, w·f]."""
        image = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample
