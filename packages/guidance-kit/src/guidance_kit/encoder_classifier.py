"""A noisy classifier made of a diffusion UNet's encoder half, as in ADM: frozen down/mid blocks + a linear head.

`EncoderClassifier(unet, num_classes)` computes p(y | x_t, t) from the globally pooled mid-block features of
``unet`` (a `UNet2DModel`; class-conditional models are run with their null class). `fit_encoder_classifier`
fits the head by full-batch L-BFGS on features of noised training images (seconds on a CPU), so classifier
guidance costs what it costs in ADM: an encoder forward and backward per guided step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import GuidanceKitError

__all__ = ["EncoderClassifier", "fit_encoder_classifier"]


class EncoderClassifier(nn.Module):
    """``forward(x_t [B,C,H,W], t [B] long) -> logits [B, num_classes]`` from ``unet``'s encoder features."""

    def __init__(self, unet: nn.Module, num_classes: int, *, null_class: int | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.null_class = null_class
        width = unet.config.block_out_channels[-1]
        self.head = nn.Linear(width, num_classes)

    def features(self, x: Tensor, t: Tensor) -> Tensor:
        """Pooled mid-block features [B, D]."""
        unet = self.unet
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
        if unet.class_embedding is not None:
            label = self.null_class if self.null_class is not None else 0
            emb = emb + unet.class_embedding(torch.full_like(t, label)).to(x.dtype)
        h = unet.conv_in(x)
        for block in unet.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        h = unet.mid_block(h, emb)
        return h.mean(dim=(2, 3))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.head(self.features(x, t))


def fit_encoder_classifier(
    unet: nn.Module,
    scheduler,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int = 10,
    null_class: int | None = None,
    noise_draws: int = 2,
    iterations: int = 100,
    seed: int = 0,
) -> EncoderClassifier:
    """Fit the linear head on frozen encoder features of ``images`` ([N,C,H,W] in [−1, 1]) noised at uniform
    random t by ``scheduler.add_noise`` (``noise_draws`` draws each); returns the classifier in eval mode."""
    if images.ndim != 4 or len(images) != len(labels):
        raise GuidanceKitError(
            f"images [N,C,H,W] and labels [N] must match, got {tuple(images.shape)}, {len(labels)}"
        )
    gen = torch.Generator().manual_seed(seed)
    model = EncoderClassifier(unet, num_classes, null_class=null_class).eval()
    model.unet.requires_grad_(False)
    feats, ys = [], []
    with torch.no_grad():
        for _ in range(noise_draws):
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=gen)
            noisy = scheduler.add_noise(images, torch.randn(images.shape, generator=gen), t)
            feats.append(model.features(noisy, t))
            ys.append(labels)
    x, y = torch.cat(feats), torch.cat(ys).long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    head = nn.Linear(x.shape[1], num_classes)
    optimiser = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure():
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(head(z), y) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        model.head.weight.copy_(head.weight / std)
        model.head.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    return model
