"""DiffAct's training objective for one video (§2.4–2.6).

``loss = w_ce CE_E + w_s TMSE_E + w_ce CE_D + w_s TMSE_D + w_b Bd_D`` where E are the encoder
logits and D the decoder's x0 logits from a noised one-hot sequence at a random timestep, with a
random condition mask. Every random draw except dropout comes from the item's own generator.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from difflab_core.seqdiff import SeqDDIMScheduler, make_ddim_scheduler, noisy_input, to_signal

from .config import DiffActConfig
from .masks import condition_mask
from .model import DiffActModel

SMOOTH_CLAMP = 16.0


@functools.cache
def _scheduler(num_train_timesteps: int) -> SeqDDIMScheduler:
    return make_ddim_scheduler(num_train_timesteps)


def cross_entropy(logits: Tensor, labels: Tensor, soft_sigma: float | None, weights: Tensor | None) -> Tensor:
    """Frame-averaged CE of ``logits (1, C, L)``; frames with label < 0 are skipped.

    ``soft_sigma``: targets are the one-hot rows filtered with ``gaussian_filter1d`` (not renormalised),
    no class weights. Otherwise ``weights[y] * -log p_y`` averaged over frames (not over weight sums).
    """
    valid = labels >= 0
    log_p = F.log_softmax(logits[0], dim=0)  # (C, L)
    if soft_sigma:
        one_hot = F.one_hot(labels.clamp(min=0), logits.shape[1]).T.float().cpu().numpy()
        soft = gaussian_filter1d(one_hot, soft_sigma, axis=1)
        target = torch.from_numpy(soft.astype(np.float32)).to(logits.device)
        per_frame = -(target * log_p).sum(0)
    else:
        per_frame = -log_p.gather(0, labels.clamp(min=0)[None])[0]
        if weights is not None:
            per_frame = per_frame * weights.to(logits.device)[labels.clamp(min=0)]
    return per_frame[valid].mean() if valid.any() else logits.sum() * 0


def smoothing_loss(logits: Tensor) -> Tensor:
    """T-MSE: mean over c and t >= 1 of ``min(16, (log p_t - sg(log p_{t-1}))²)``."""
    log_p = F.log_softmax(logits, dim=1)
    diff = log_p[:, :, 1:] - log_p.detach()[:, :, :-1]
    return torch.clamp(diff**2, max=SMOOTH_CLAMP).mean()


def boundary_loss(logits: Tensor, boundary: Tensor, labels: Tensor) -> Tensor:
    """BCE of ``b_t = 1 - Σ_c p_t sg(p_{t-1})`` against the boundary target, t >= 1 (log clamped at -100)."""
    p = torch.softmax(logits, dim=1)
    b = (1.0 - (p[:, :, 1:] * p.detach()[:, :, :-1]).sum(1))[0].clamp(0.0, 1.0)
    valid = labels[1:] >= 0
    if not valid.any():
        return logits.sum() * 0
    return F.binary_cross_entropy(b[valid], boundary[1:][valid].to(b.dtype))


def training_losses(
    model: DiffActModel | torch.nn.Module, item: dict, cfg: DiffActConfig, class_weights: Tensor | None = None
) -> dict[str, Tensor]:
    """The loss parts (``ce_enc``, ``smooth_enc``, ``ce_dec``, ``smooth_dec``, ``boundary_dec``) and ``loss``.

    ``model`` may be wrapped (DDP): only its ``forward`` is called.
    ``item``: ``features (F, L)``, ``labels (L,)`` long (-100 ignored), ``boundary (L,)``, ``seed``.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(item["seed"]))
    feats = item["features"].to(device).unsqueeze(0)
    labels = item["labels"].to(device)
    boundary = item["boundary"].to(device)
    num_classes = cfg.data.num_classes
    scale = cfg.diffusion.snr_scale

    t = torch.randint(cfg.diffusion.num_train_timesteps, (1,), generator=generator)
    noise = torch.randn((1, num_classes, labels.shape[0]), generator=generator).to(device)
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).T.float() * (labels >= 0).float()
    u = noisy_input(
        to_signal(one_hot[None], scale), t, noise, _scheduler(cfg.diffusion.num_train_timesteps), scale
    )
    kinds = cfg.diffusion.cond_types
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
    mask = condition_mask(kind, labels, boundary, generator)
    enc_logits, dec_logits = model(feats, t.to(device), u, mask)

    sigma, lw = cfg.loss.soft_label, cfg.loss
    parts = {
        "ce_enc": cross_entropy(enc_logits, labels, sigma, class_weights),
        "smooth_enc": smoothing_loss(enc_logits),
        "ce_dec": cross_entropy(dec_logits, labels, sigma, class_weights),
        "smooth_dec": smoothing_loss(dec_logits),
        "boundary_dec": boundary_loss(dec_logits, boundary, labels),
    }
    parts["loss"] = (
        lw.ce_weight * (parts["ce_enc"] + parts["ce_dec"])
        + lw.smooth_weight * (parts["smooth_enc"] + parts["smooth_dec"])
        + lw.boundary_weight * parts["boundary_dec"]
    )
    return parts
