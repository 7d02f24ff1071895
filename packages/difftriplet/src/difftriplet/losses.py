"""DiffTriplet's training objective for one video (§2.3).

``L = 0.5 BCE(encoder logits, Y) + 0.5 BCE(decoder logits, Y)``, each averaged over all channels and
frames. The decoder sees ``u = from_signal(x_t)`` with ``x_0 = λ(2Y - 1)``, one ``t`` and one ``ε`` per
video, and an all-zero condition with probability ``P(zero)`` from ``cond_types``. Every random draw
except dropout comes from the item's own generator.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab_core.seqdiff import SeqDDIMScheduler, make_ddim_scheduler, noisy_input, to_signal

from .config import DiffTripletConfig

__all__ = ["training_losses"]


@functools.cache
def _scheduler(num_train_timesteps: int) -> SeqDDIMScheduler:
    return make_ddim_scheduler(num_train_timesteps)


def training_losses(
    model: torch.nn.Module, item: dict, cfg: DiffTripletConfig, pos_weight: Tensor | None = None
) -> dict[str, Tensor]:
    """``{"bce_enc", "bce_dec", "loss"}`` for ``item`` = ``features (F, L)``, ``labels (C, L)``, ``seed``.

    ``model`` may be wrapped (DDP): only its ``forward`` is called. ``pos_weight (C,)`` weights positives.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(item["seed"]))
    feats = item["features"].to(device).unsqueeze(0)
    y = item["labels"].to(device=device, dtype=torch.float32).unsqueeze(0)
    diff = cfg.diffusion
    t = torch.randint(diff.num_train_timesteps, (1,), generator=generator)
    noise = torch.randn(y.shape, generator=generator).to(device)
    u = noisy_input(
        to_signal(y, diff.snr_scale), t, noise, _scheduler(diff.num_train_timesteps), diff.snr_scale
    )
    kind = diff.cond_types[int(torch.randint(len(diff.cond_types), (1,), generator=generator))]
    enc_logits, dec_logits = model(feats, t.to(device), u, kind == "zero")
    weight = None if pos_weight is None else pos_weight.to(device).reshape(1, -1, 1)
    parts = {
        "bce_enc": F.binary_cross_entropy_with_logits(enc_logits, y, pos_weight=weight),
        "bce_dec": F.binary_cross_entropy_with_logits(dec_logits, y, pos_weight=weight),
    }
    parts["loss"] = 0.5 * parts["bce_enc"] + 0.5 * parts["bce_dec"]
    return parts
