"""The DiffAct network (§2.2–2.4): temporal encoder + conditioned denoising decoder, a diffusers model.

Module paths follow the official code (``encoder.conv_in``, ``encoder.encoder.layers.{i}``,
``decoder.time_in.{0,1}``, ``decoder.module.time_proj``, ``decoder.module.layers.{i}`` ...) so its
state dicts load strictly (see :mod:`diffact.convert`).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from difflab_core.seqdiff import MixedStack, SequenceEncoder, TimeMLP, ddim_sample_x0, make_ddim_scheduler

from .config import DiffActConfig


class DiffActDecoder(nn.Module):
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
    ) -> None:
        super().__init__()
        self.time_in = TimeMLP(time_emb_dim)
        self.conv_in = nn.Conv1d(num_classes, num_f_maps, 1)
        self.module = MixedStack(
            num_layers, num_f_maps, kernel_size, dropout, cond_dim, time_dim=time_emb_dim
        )
        self.conv_out = nn.Conv1d(num_f_maps, num_classes, 1)

    def forward(self, cond: Tensor, t: Tensor, u: Tensor) -> Tensor:
        h = self.module(self.conv_in(u), cond, self.time_in(t))
        return self.conv_out(h)


class DiffActModel(ModelMixin, ConfigMixin):
    """DiffAct: :meth:`encode` once per video, then :meth:`denoise` at each DDIM step (:meth:`sample`)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        input_dim: int = 2048,
        num_classes: int = 11,
        encoder_layers: int = 10,
        encoder_f_maps: int = 64,
        encoder_kernel_size: int = 5,
        normal_dropout: float = 0.5,
        channel_dropout: float = 0.5,
        temporal_dropout: float = 0.5,
        feature_layer_indices: tuple[int, ...] = (5, 7, 9),
        use_instance_norm: bool = False,
        decoder_layers: int = 8,
        decoder_f_maps: int = 24,
        decoder_kernel_size: int = 5,
        decoder_dropout: float = 0.1,
        time_emb_dim: int = 512,
        num_train_timesteps: int = 1000,
        snr_scale: float = 0.5,
        sampling_steps: int = 25,
        ddim_eta: float = 1.0,
    ) -> None:
        super().__init__()
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
            use_instance_norm=use_instance_norm,
        )
        self.decoder = DiffActDecoder(
            num_classes,
            self.encoder.cond_dim,
            decoder_layers,
            decoder_f_maps,
            decoder_kernel_size,
            decoder_dropout,
            time_emb_dim,
        )
        self.scheduler = make_ddim_scheduler(num_train_timesteps)

    @classmethod
    def from_diffact_config(cls, cfg: DiffActConfig) -> DiffActModel:
        """Build an untrained model from a :class:`~diffact.config.DiffActConfig`."""
        enc, dec, diff = cfg.encoder, cfg.decoder, cfg.diffusion
        return cls(
            input_dim=enc.input_dim,
            num_classes=cfg.data.num_classes,
            encoder_layers=enc.num_layers,
            encoder_f_maps=enc.num_f_maps,
            encoder_kernel_size=enc.kernel_size,
            normal_dropout=enc.normal_dropout,
            channel_dropout=enc.channel_dropout,
            temporal_dropout=enc.temporal_dropout,
            feature_layer_indices=tuple(enc.feature_layer_indices),
            use_instance_norm=enc.use_instance_norm,
            decoder_layers=dec.num_layers,
            decoder_f_maps=dec.num_f_maps,
            decoder_kernel_size=dec.kernel_size,
            decoder_dropout=dec.dropout,
            time_emb_dim=dec.time_emb_dim,
            num_train_timesteps=diff.num_train_timesteps,
            snr_scale=diff.snr_scale,
            sampling_steps=diff.sampling_steps,
            ddim_eta=diff.ddim_eta,
        )

    def encode(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """``feats (B, F, L) -> (encoder logits (B, C, L), condition (B, D_c, L))``."""
        return self.encoder(feats)

    def denoise(self, cond: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """x0 logits ``(B, C, L)`` for decoder input ``u`` in [0, 1] at timesteps ``t (B,)``."""
        return self.decoder(cond, t, u)

    def forward(
        self, feats: Tensor, t: Tensor, u: Tensor, cond_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Training pass: ``(encoder logits, x0 logits)``, the condition multiplied by ``cond_mask (L,)``."""
        enc_logits, cond = self.encode(feats)
        if cond_mask is not None:
            cond = cond * cond_mask.to(cond.dtype)
        return enc_logits, self.denoise(cond, t, u)

    @torch.no_grad()
    def sample(
        self,
        feats: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """Class probabilities ``(B, C, L)``: DDIM (η from the config) from ``N(0, I)`` to x̂0."""
        if cond is None:
            _, cond = self.encode(feats)
        shape = (cond.shape[0], self.config.num_classes, cond.shape[2])

        def predict_probs(t: Tensor, u: Tensor) -> Tensor:
            return torch.softmax(self.denoise(cond, t, u), dim=1)

        return ddim_sample_x0(
            predict_probs,
            shape,
            self.scheduler,
            num_steps or self.config.sampling_steps,
            self.config.ddim_eta,
            generator,
            scale=self.config.snr_scale,
            device=cond.device,
        )
