"""The DiffTriplet network (§2.2): core temporal encoder + a concatenation denoising decoder.

Encoder: :class:`difflab_core.seqdiff.SequenceEncoder` (F -> 128, 4 mixed layers, k = 5) whose layers
1–3 form the 384-channel condition. Decoder: ``1×1 conv([condition; u])`` -> 256 channels, the timestep
embedding added once, 4 unconditioned mixed layers (k = 11), ``1×1 conv`` -> 131 logits. Sigmoid (not
softmax) maps logits to the multi-hot joint vector. Defaults give 5,903,110 parameters for F = 1600.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from difflab_core.seqdiff import (
    MixedConvAttention,
    MixedStack,
    SequenceEncoder,
    TimeMLP,
    ddim_sample_x0,
    make_ddim_scheduler,
)

from .errors import DiffTripletError
from .guidance import AssociationGuidance

__all__ = ["MODES", "DiffTripletDecoder", "DiffTripletModel"]

MODES = ("decoder", "encoder", "ensemble")


class DiffTripletDecoder(nn.Module):
    """``(cond (B, D_c, L), t (B,), u (B, C, L) in [0, 1]) -> x0 logits (B, C, L)``."""

    def __init__(
        self,
        num_classes: int,
        cond_dim: int,
        num_layers: int,
        num_f_maps: int,
        kernel_size: int,
        dropout: float,
        time_emb_dim: int,
        causal: bool,
    ) -> None:
        super().__init__()
        self.time_in = TimeMLP(time_emb_dim)
        self.conv_in = nn.Conv1d(cond_dim + num_classes, num_f_maps, 1)
        self.module = MixedStack(
            num_layers, num_f_maps, kernel_size, dropout, time_dim=time_emb_dim, causal=causal
        )
        self.conv_out = nn.Conv1d(num_f_maps, num_classes, 1)

    def forward(self, cond: Tensor, t: Tensor, u: Tensor) -> Tensor:
        h = self.conv_in(torch.cat([cond, u.to(cond.dtype)], dim=1))
        return self.conv_out(self.module(h, temb=self.time_in(t)))


class DiffTripletModel(ModelMixin, ConfigMixin):
    """DiffTriplet: :meth:`encode` once per video, :meth:`denoise` at each DDIM step, :meth:`sample`."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        input_dim: int = 1600,
        num_classes: int = 131,
        encoder_layers: int = 4,
        encoder_f_maps: int = 128,
        encoder_kernel_size: int = 5,
        normal_dropout: float = 0.1,
        channel_dropout: float = 0.5,
        temporal_dropout: float = 0.5,
        feature_layer_indices: tuple[int, ...] = (1, 2, 3),
        use_instance_norm: bool = False,
        decoder_layers: int = 4,
        decoder_f_maps: int = 256,
        decoder_kernel_size: int = 11,
        decoder_dropout: float = 0.2,
        time_emb_dim: int = 512,
        causal: bool = False,
        num_train_timesteps: int = 1000,
        snr_scale: float = 1.0,
        sampling_steps: int = 8,
        ddim_eta: float = 1.0,
    ) -> None:
        super().__init__()
        if causal and use_instance_norm:
            raise DiffTripletError(
                "causal=True needs use_instance_norm=False (the input norm sees the future)"
            )
        self.encoder = SequenceEncoder(
            input_dim,
            encoder_layers,
            encoder_f_maps,
            num_classes,
            encoder_kernel_size,
            normal_dropout,
            channel_dropout,
            temporal_dropout,
            tuple(feature_layer_indices),
            causal=causal,
            use_instance_norm=use_instance_norm,
        )
        self.decoder = DiffTripletDecoder(
            num_classes,
            self.encoder.cond_dim,
            decoder_layers,
            decoder_f_maps,
            decoder_kernel_size,
            decoder_dropout,
            time_emb_dim,
            causal,
        )
        if causal:  # InstanceNorm over time sees the future: the causal layers use identity instead
            for layer in self.modules():
                if isinstance(layer, MixedConvAttention):
                    layer.norm = nn.Identity()
        self.scheduler = make_ddim_scheduler(num_train_timesteps)

    def encode(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """``feats (B, F, L) -> (encoder logits (B, C, L), condition (B, D_c, L))``."""
        return self.encoder(feats)

    def denoise(self, cond: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """x0 logits ``(B, C, L)`` for decoder input ``u`` in [0, 1] at timesteps ``t (B,)``."""
        return self.decoder(cond, t, u)

    def forward(
        self, feats: Tensor, t: Tensor, u: Tensor, zero_condition: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Training pass: ``(encoder logits, x0 logits)``; ``zero_condition`` feeds an all-zero condition."""
        enc_logits, cond = self.encode(feats)
        if zero_condition:
            cond = torch.zeros_like(cond)
        return enc_logits, self.denoise(cond, t, u)

    @torch.no_grad()
    def sample(
        self,
        feats: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        guidance: AssociationGuidance | None = None,
        mode: str = "decoder",
    ) -> Tensor:
        """Joint probabilities ``(B, C, L)`` (or ``(C, L)`` for ``feats (F, L)``).

        ``decoder``: DDIM (η from the config, ``num_steps`` default 8) from ``N(0, I)``, ``guidance``
        applied to ``p`` at every step; ``encoder``: sigmoid of the encoder logits; ``ensemble``: their mean.
        """
        if mode not in MODES:
            raise DiffTripletError(f"mode={mode!r}; use one of {MODES}")
        single = feats.dim() == 2
        if single:
            feats = feats.unsqueeze(0)
        if feats.dim() != 3 or feats.shape[1] != self.config.input_dim:
            raise DiffTripletError(
                f"features must be (F={self.config.input_dim}, T) or (B, F, T), got {tuple(feats.shape)}"
            )
        feats = feats.to(device=self.device, dtype=self.dtype)
        enc_logits, cond = self.encode(feats)
        encoder_probs = torch.sigmoid(enc_logits)
        if mode == "encoder":
            probs = encoder_probs
        else:

            def predict_probs(t: Tensor, u: Tensor) -> Tensor:
                return torch.sigmoid(self.denoise(cond, t, u))

            probs = ddim_sample_x0(
                predict_probs,
                (cond.shape[0], self.config.num_classes, cond.shape[2]),
                self.scheduler,
                num_steps or self.config.sampling_steps,
                self.config.ddim_eta,
                generator,
                prob_hook=guidance,
                scale=self.config.snr_scale,
                device=cond.device,
            )
            if mode == "ensemble":
                probs = (probs + encoder_probs) / 2
        return probs[0] if single else probs
