"""Diffusion over label sequences (DiffAct, Liu et al. ICCV 2023), shared by diffact and difftriplet.

* :class:`MixedConvAttention` / :class:`MixedStack` — dilated conv + local windowed attention layers
  over ``(B, D, L)`` sequences, optionally conditioned on ``(B, D_c, L)`` features.
* :class:`SequenceEncoder` — the temporal encoder (ASFormer-style) giving frame logits and the
  concatenated features of chosen layers as the decoder's condition.
* :func:`timestep_embedding`, :class:`TimeMLP` — sinusoidal timestep features and their MLP.
* :func:`to_signal`, :func:`from_signal`, :func:`noisy_input` — ``[0, 1]`` maps <-> ``±scale`` signals.
* :class:`SeqDDIMScheduler` (:func:`make_ddim_scheduler`) — diffusers DDIM with a float64 cosine
  schedule, DiffAct's truncated-``linspace`` timestep list and a clamp that keeps S=5 finite.
* :func:`ddim_sample_x0` — the x0-predicting DDIM loop with a per-step probability hook.

Module attribute names follow the official DiffAct code so its state dicts load strictly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from torch import Tensor, nn

from difflab_core.errors import DifflabError

__all__ = [
    "MixedConvAttention",
    "MixedStack",
    "SeqDDIMScheduler",
    "SequenceEncoder",
    "TimeMLP",
    "ddim_sample_x0",
    "from_signal",
    "make_ddim_scheduler",
    "noisy_input",
    "timestep_embedding",
    "to_signal",
]

_MASK_LEAK = 1e-6
"""Added inside ``log(mask + leak)`` as in the official code; keeps fully-padded windows finite."""


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise DifflabError(f"kernel_size={kernel_size} must be a positive odd int")


class MixedConvAttention(nn.Module):
    """One layer: ``h + FFN(InstanceNorm(conv(h̃) + attn(h̃, c̃)))`` over ``(B, D, L)``.

    The conv has ``kernel_size`` taps spaced ``dilation`` apart; the single-head attention lets frame
    ``l`` attend to exactly those taps (zero outside the sequence, masked with ``log(m + 1e-6)``).
    Queries and keys see ``[h̃; c̃]`` when ``cond_dim > 0``; values see ``h̃`` only. ``causal`` puts
    every tap at or before ``l``.
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int,
        dilation: int,
        dropout: float,
        cond_dim: int = 0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        self.d_model, self.kernel_size, self.dilation = d_model, kernel_size, dilation
        self.cond_dim, self.causal = cond_dim, causal
        span = (kernel_size - 1) * dilation
        self.pad = (span, 0) if causal else (span // 2, span // 2)
        self.conv_block = nn.Sequential(nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation))
        self.att_linear_q = nn.Conv1d(d_model + cond_dim, d_model, 1)
        self.att_linear_k = nn.Conv1d(d_model + cond_dim, d_model, 1)
        self.att_linear_v = nn.Conv1d(d_model, d_model, 1)
        self.ffn_block = nn.Sequential(
            nn.Conv1d(d_model, d_model, 1), nn.ReLU(), nn.Conv1d(d_model, d_model, 1)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.InstanceNorm1d(d_model, affine=False, track_running_stats=False)

    def _taps(self, x: Tensor) -> Tensor:
        """``(B, C, L) -> (B, C, k, L)``: the values at the ``k`` dilated taps of every frame."""
        b, c, length = x.shape
        padded = F.pad(x, self.pad).unsqueeze(2)
        cols = F.unfold(padded, (1, self.kernel_size), dilation=(1, self.dilation))
        return cols.view(b, c, self.kernel_size, length)

    def attention(self, h: Tensor, cond: Tensor | None) -> Tensor:
        """Windowed single-head attention, ``(B, D, L)``."""
        qk_in = h if cond is None else torch.cat([h, cond], dim=1)
        q = self.att_linear_q(qk_in)
        keys = self._taps(self.att_linear_k(qk_in))
        values = self._taps(self.att_linear_v(h))
        mask = self._taps(torch.ones_like(h[:1, :1]))  # (1, 1, k, L)
        scores = (q.unsqueeze(2) * keys).sum(1, keepdim=True) / math.sqrt(self.d_model)
        weights = torch.softmax(scores + torch.log(mask + _MASK_LEAK), dim=2) * mask
        return (weights * values).sum(2)

    def forward(self, h: Tensor, cond: Tensor | None = None) -> Tensor:
        if (cond is None) != (self.cond_dim == 0):
            raise DifflabError(
                f"MixedConvAttention built with cond_dim={self.cond_dim} but called "
                f"{'without' if cond is None else 'with'} a condition"
            )
        h_drop = self.dropout(h)
        cond_drop = None if cond is None else self.dropout(cond)
        mixed = self.conv_block(F.pad(h_drop, self.pad)) + self.attention(h_drop, cond_drop)
        # a one-frame sequence normalises to zeros (torch refuses InstanceNorm over one element)
        normed = self.norm(mixed) if mixed.shape[-1] > 1 else torch.zeros_like(mixed)
        return h + self.ffn_block(normed)


class MixedStack(nn.Module):
    """``num_layers`` :class:`MixedConvAttention` layers with dilations ``1, 2, 4, ...``.

    With ``time_dim``, ``time_proj(swish(temb))`` (``Linear(time_dim, d_model)``) is added to the hidden
    state once, broadcast over time, before the first layer.
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        kernel_size: int,
        dropout: float,
        cond_dim: int = 0,
        time_dim: int | None = None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.time_proj = nn.Linear(time_dim, d_model) if time_dim else None
        self.layers = nn.ModuleList(
            MixedConvAttention(d_model, kernel_size, 2**i, dropout, cond_dim, causal)
            for i in range(num_layers)
        )

    def forward(
        self,
        h: Tensor,
        cond: Tensor | None = None,
        temb: Tensor | None = None,
        return_layers: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``h``: ``(B, D, L)``; ``temb``: ``(B, time_dim)``. Optionally also every layer's output."""
        if self.time_proj is not None:
            if temb is None:
                raise DifflabError("this MixedStack has a time projection; pass temb")
            h = h + self.time_proj(F.silu(temb)).unsqueeze(-1)
        outputs = []
        for layer in self.layers:
            h = layer(h, cond)
            outputs.append(h)
        return (h, outputs) if return_layers else h


class SequenceEncoder(nn.Module):
    """Frame features ``(B, F, L)`` -> ``(logits (B, C, L), condition (B, D_c, L))``.

    Channel then temporal ``Dropout2d`` on the input, ``conv_in`` F->f, :class:`MixedStack` without
    condition, ``conv_out`` f->C. The condition concatenates, in order, the outputs of the layers in
    ``feature_layer_indices`` (-1: the raw input, placed first; -2: the softmax, placed last).
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int,
        num_f_maps: int,
        num_classes: int,
        kernel_size: int,
        normal_dropout: float,
        channel_dropout: float,
        temporal_dropout: float,
        feature_layer_indices: tuple[int, ...] | list[int],
        causal: bool = False,
        use_instance_norm: bool = False,
    ) -> None:
        super().__init__()
        bad = [i for i in feature_layer_indices if i >= num_layers or i < -2]
        if bad:
            raise DifflabError(
                f"feature_layer_indices {list(feature_layer_indices)}: {bad} not in -2..{num_layers - 1}"
            )
        self.feature_layer_indices = tuple(int(i) for i in feature_layer_indices)
        self.input_norm = nn.InstanceNorm1d(input_dim) if use_instance_norm else None
        self.channel_dropout = nn.Dropout2d(channel_dropout)
        self.temporal_dropout = nn.Dropout2d(temporal_dropout)
        self.conv_in = nn.Conv1d(input_dim, num_f_maps, 1)
        self.encoder = MixedStack(num_layers, num_f_maps, kernel_size, normal_dropout, causal=causal)
        self.conv_out = nn.Conv1d(num_f_maps, num_classes, 1)
        sizes = {-1: input_dim, -2: num_classes}
        self.cond_dim = sum(sizes.get(i, num_f_maps) for i in self.feature_layer_indices)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        raw = feats
        if self.input_norm is not None:
            feats = self.input_norm(feats)
        x = self.channel_dropout(feats.unsqueeze(3)).squeeze(3)  # (B, F, L, 1): drops whole channels
        x = self.temporal_dropout(x.transpose(1, 2).unsqueeze(3)).squeeze(3).transpose(1, 2)
        h, layers = self.encoder(self.conv_in(x), return_layers=True)
        logits = self.conv_out(h)
        parts = [raw] if -1 in self.feature_layer_indices else []
        parts += [layers[i] for i in self.feature_layer_indices if i >= 0]
        if -2 in self.feature_layer_indices:
            parts.append(torch.softmax(logits, dim=1))
        cond = torch.cat(parts, dim=1) if parts else logits.new_zeros(logits.shape[0], 0, logits.shape[2])
        return logits, cond


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``(B,) -> (B, dim)``: frequencies ``exp(-k ln(max_period)/(dim/2 - 1))``, sin first."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1)
    )
    args = t.float().reshape(-1, 1) * freqs
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimeMLP(nn.ModuleList):
    """``Linear(dim, dim) -> swish -> Linear(dim, dim)`` on :func:`timestep_embedding` (children ``0``, ``1``)."""

    def __init__(self, dim: int) -> None:
        super().__init__([nn.Linear(dim, dim), nn.Linear(dim, dim)])
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        """``t``: ``(B,)`` integer timesteps -> ``(B, dim)``."""
        return self[1](F.silu(self[0](timestep_embedding(t, self.dim))))


def to_signal(y01: Tensor, scale: float) -> Tensor:
    """``[0, 1]`` map -> diffusion signal ``scale (2 y - 1)``."""
    return scale * (2.0 * y01 - 1.0)


def from_signal(x: Tensor, scale: float) -> Tensor:
    """Signal -> ``[0, 1]``: ``(clip(x, ±scale) / scale + 1) / 2``."""
    return (x.clamp(-scale, scale) / scale + 1.0) / 2.0


def noisy_input(
    x0: Tensor, t: Tensor | int, noise: Tensor, scheduler: SeqDDIMScheduler, scale: float
) -> Tensor:
    """The decoder input ``from_signal(√ᾱ_t x0 + √(1-ᾱ_t) ε)`` for ``t`` of shape ``()`` or ``(B,)``."""
    t = torch.as_tensor(t, device=torch.device("cpu")).long().reshape(-1)
    alpha = scheduler.alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    alpha = alpha.reshape(-1, *([1] * (x0.dim() - 1)))
    return from_signal(alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise, scale)


def official_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """DiffAct's list ``reversed(int(linspace(-1, T-1, S+1)))``: ``[999, ..., -1]`` (S+1 entries)."""
    times = torch.linspace(-1, num_train_timesteps - 1, steps=num_steps + 1).int().tolist()
    return list(reversed(times))


class SeqDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` with DiffAct's exact sampling arithmetic.

    * the cosine (``squaredcos_cap_v2``) schedule is held in float64, like the official code;
    * :meth:`set_timesteps` uses :func:`official_timesteps` for every step count, and :meth:`step`
      takes the previous timestep from that list (``-1`` means ``ᾱ = 1``, i.e. return x̂0);
    * ``1 - ᾱ_{t'} - σ²`` is clamped at 0 (float rounding made it negative, and NaN, at S=5).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "sample",
        timestep_spacing: str = "trailing",
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
    ) -> None:
        if beta_schedule != "squaredcos_cap_v2" or prediction_type != "sample":
            raise DifflabError(
                f"SeqDDIMScheduler is DiffAct's cosine x0 sampler; got beta_schedule={beta_schedule!r}, "
                f"prediction_type={prediction_type!r}"
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
        )
        n = num_train_timesteps

        def alpha_bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
        self._previous: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        n = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n:
            raise DifflabError(f"num_inference_steps={num_inference_steps} must be in 1..{n}")
        times = official_timesteps(num_inference_steps, n)
        self.num_inference_steps = num_inference_steps
        self._previous = dict(itertools.pairwise(times))
        self.timesteps = torch.tensor(times[:-1], dtype=torch.long, device=device)

    def previous_timestep(self, timestep: int | Tensor) -> int:
        t = int(timestep)
        if t not in self._previous:
            raise DifflabError(
                f"timestep {t} is not in the list set by set_timesteps; call set_timesteps first"
            )
        return self._previous[t]

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 1.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[Tensor, Tensor]:
        """One DDIM step from x_t to x_{t'} given x̂0 = ``model_output`` (``prediction_type="sample"``)."""
        t = int(timestep)
        prev = self.previous_timestep(t)
        alpha = float(self.alphas_cumprod[t])
        alpha_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else float(self.final_alpha_cumprod)
        x0 = model_output
        eps = (sample - math.sqrt(alpha) * x0) / math.sqrt(1 - alpha)
        sigma = eta * math.sqrt((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev))
        direction = math.sqrt(max(1 - alpha_prev - sigma**2, 0.0))
        prev_sample = math.sqrt(alpha_prev) * x0 + direction * eps
        if sigma > 0:
            if variance_noise is None:
                variance_noise = torch.randn(x0.shape, generator=generator, device=_gen_device(generator))
            prev_sample = prev_sample + sigma * variance_noise.to(device=x0.device, dtype=x0.dtype)
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def make_ddim_scheduler(num_train_timesteps: int = 1000) -> SeqDDIMScheduler:
    """DiffAct's sampler: cosine schedule, x0 prediction, trailing spacing, no clipping, ᾱ_{-1} = 1."""
    return SeqDDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
    )


@torch.no_grad()
def ddim_sample_x0(
    predict_probs: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, ...],
    scheduler: SeqDDIMScheduler,
    num_steps: int,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    prob_hook: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    scale: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """DDIM over ``[0, 1]`` probability maps; returns the last predicted map, ``shape``.

    ``x ~ N(0, I)`` (not scaled); at each ``t``: ``p = predict_probs(t, from_signal(x))`` (then
    ``prob_hook(p, t)`` if given), ``x̂0 = clip(to_signal(p), ±scale)``, and a scheduler step to t'.
    Noise comes from ``generator`` (on its own device, then moved to ``device``).
    """
    device = torch.device(device) if device is not None else _gen_device(generator)
    scheduler.set_timesteps(num_steps)
    x = torch.randn(shape, generator=generator, device=_gen_device(generator)).to(device)
    probs = None
    for t in scheduler.timesteps:
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        probs = predict_probs(t_batch, from_signal(x, scale))
        if prob_hook is not None:
            probs = prob_hook(probs, t_batch)
        x0 = to_signal(probs, scale).clamp(-scale, scale)
        x = scheduler.step(x0, t, x, eta=eta, generator=generator).prev_sample
    return probs
