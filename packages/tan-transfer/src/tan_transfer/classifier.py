"""The source-vs-target noisy domain classifier p_φ(y | x_t, t) (label 1 = target) and its gradient g.

`UNetEncoderClassifier` copies the source UNet's encoder (a noise-aware pretrained backbone, our offline stand-in for
the ImageNet noisy classifier of the official code); `SmallNoisyClassifier` is a from-scratch CNN.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import TanTransferError

__all__ = [
    "SmallNoisyClassifier",
    "UNetEncoderClassifier",
    "build_classifier",
    "load_custom_classifier",
    "target_logprob_grad",
    "train_domain_classifier",
]

logger = logging.getLogger(__name__)
TIME_BUCKETS = 5


def _timesteps(t: Tensor | int, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.reshape(-1).expand(x.shape[0])


def _clear_hooks(module: nn.Module) -> None:
    for m in module.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        getattr(m, "_forward_hooks_with_kwargs", {}).clear()


class _Pool(nn.Module):
    """Attention pooling (softmax of a 1×1 conv score over positions) or mean pooling: ``[B, C, H, W] -> [B, C]``."""

    def __init__(self, channels: int, kind: str) -> None:
        super().__init__()
        if kind not in ("attention", "mean"):
            raise TanTransferError("pooling", f"{kind!r}: use 'attention' or 'mean'")
        self.score = nn.Conv2d(channels, 1, 1) if kind == "attention" else None

    def forward(self, h: Tensor) -> Tensor:
        if self.score is None:
            return h.mean(dim=(2, 3))
        w = self.score(h).flatten(1).softmax(dim=1)
        return (h.flatten(2) * w[:, None]).sum(dim=2)


class UNetEncoderClassifier(nn.Module):
    """conv_in, time embedding, down blocks and mid block copied from a UNet, then GroupNorm → SiLU → pooling →
    Linear(2). ``forward(x_t, t, encoder_hidden_states=None) -> logits [B, 2]``."""

    def __init__(
        self, parts: dict[str, nn.Module], channels: int, groups: int, pooling: str, cross: bool
    ) -> None:
        super().__init__()
        self.conv_in = parts["conv_in"]
        self.time_proj = parts["time_proj"]
        self.time_embedding = parts["time_embedding"]
        self.down_blocks = parts["down_blocks"]
        self.mid_block = parts["mid_block"]
        self.cross = cross
        self.norm = nn.GroupNorm(groups, channels)
        self.pool = _Pool(channels, pooling)
        self.head = nn.Linear(channels, 2)

    @classmethod
    def from_unet(cls, unet: nn.Module, pooling: str = "attention") -> UNetEncoderClassifier:
        """Deep-copy ``unet``'s encoder (all of it trainable) and add a fresh 2-way head."""
        parts = {}
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
            part = getattr(unet, name, None)
            parts[name] = copy.deepcopy(part) if part is not None else None
        for part in parts.values():
            if part is not None:
                _clear_hooks(part)
        channels = unet.config.block_out_channels[-1]
        groups = math.gcd(unet.config.norm_num_groups or 1, channels)
        cross = type(unet).__name__ == "UNet2DConditionModel"
        model = cls(parts, channels, groups, pooling, cross).to(next(unet.parameters()).device)
        return model.float().requires_grad_(True)

    def forward(self, x: Tensor, t: Tensor | int, encoder_hidden_states: Tensor | None = None) -> Tensor:
        emb = self.time_embedding(self.time_proj(_timesteps(t, x)).to(x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(h, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h = self.mid_block(h, emb)
        return self.head(self.pool(F.silu(self.norm(h))))


def _sinusoid(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class SmallNoisyClassifier(nn.Module):
    """A 4-level CNN with sinusoidal time FiLM, trained from scratch: ``forward(x_t, t, **_) -> logits [B, 2]``."""

    def __init__(self, in_ch: int, size: int, width: int = 32) -> None:
        super().__init__()
        if in_ch < 1 or size < 1:
            raise TanTransferError(
                "SmallNoisyClassifier", f"need in_ch >= 1 and size >= 1, got {in_ch}, {size}"
            )
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, 4 * width))
        self.stem = nn.Conv2d(in_ch, width, 3, padding=1)
        chans = [width, width, 2 * width, 2 * width, 4 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(4)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(8, chans[i + 1]) for i in range(4))
        self.films = nn.ModuleList(nn.Linear(4 * width, 2 * chans[i + 1]) for i in range(4))
        self.head = nn.Linear(chans[-1], 2)

    def forward(self, x: Tensor, t: Tensor | int, encoder_hidden_states: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(_sinusoid(_timesteps(t, x), self.width))
        h = self.stem(x)
        for conv, norm, film in zip(self.convs, self.norms, self.films, strict=True):
            h = norm(conv(h))
            scale, shift = film(emb).chunk(2, dim=1)
            h = F.silu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return self.head(h.mean(dim=(2, 3)))


def load_custom_classifier(weights: str, factory: str) -> nn.Module:
    """``factory`` "module:callable" builds the module; ``weights`` (safetensors) are loaded strictly."""
    from difflab_core.errors import DifflabError
    from difflab_core.train import load_weights

    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise TanTransferError("classifier factory", f"{factory!r}: use 'module:callable'")
    try:
        model = getattr(importlib.import_module(module_name), attr)()
    except (ImportError, AttributeError) as err:
        raise TanTransferError("classifier factory", f"{factory!r} cannot be imported ({err})") from err
    try:
        load_weights(model, weights)
    except DifflabError as err:
        raise TanTransferError(weights, str(err)) from err
    return model


def build_classifier(
    kind: str, unet: nn.Module, *, pooling: str = "attention", in_ch=None, size=None
) -> nn.Module:
    """A fresh classifier: "unet_encoder" (from ``unet``) or "small_cnn" (sized like the UNet input)."""
    if kind == "unet_encoder":
        return UNetEncoderClassifier.from_unet(unet, pooling)
    if kind == "small_cnn":
        s = unet.config.sample_size
        return SmallNoisyClassifier(
            in_ch or unet.config.in_channels, size or (s if isinstance(s, int) else s[0])
        ).to(next(unet.parameters()).device)
    raise TanTransferError(
        "classifier", f"{kind!r}: use 'unet_encoder' or 'small_cnn' (or load a custom one)"
    )


def _call(clf: nn.Module, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    return clf(x, t) if cond is None else clf(x, t, encoder_hidden_states=cond)


def target_logprob_grad(clf: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
    """g = ∇_{x_t} log p_φ(y = target | x_t, t), detached, ``[B, C, H, W]`` (no parameter .grad is touched)."""
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        logp = _call(clf, x, t, cond).float().log_softmax(dim=1)[:, 1]
        (grad,) = torch.autograd.grad(logp.sum(), x)
    return grad.detach()


def _noisy(bundle, x0: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    ab = bundle.alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@torch.no_grad()
def _accuracy_by_bucket(clf, bundle, source: Tensor, target: Tensor, cond, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed + 7919)
    T = bundle.num_train_timesteps
    x = torch.cat([source, target])
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).long().to(x.device)
    out = {}
    for k in range(TIME_BUCKETS):
        lo, hi = k * T // TIME_BUCKETS, (k + 1) * T // TIME_BUCKETS
        t = torch.randint(lo, hi, (len(x),), generator=gen).to(x.device)
        c = None if cond is None else cond[:1].expand(len(x), -1, -1)
        pred = _call(clf, _noisy(bundle, x, t, gen), t, c).argmax(dim=1)
        # balanced accuracy: mean of the per-domain accuracies
        acc = [(pred[y == d] == d).float().mean().item() for d in (0, 1)]
        out[f"{lo}-{hi - 1}"] = round(sum(acc) / 2, 4)
    return out


def train_domain_classifier(
    bundle, source: Tensor, target: Tensor, cfg, *, classifier: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Train p_φ(y | x_t, t) on q(x_t | x₀) of source (y = 0) and target (y = 1) images (seeded, cfg.seed).

    ``source``/``target`` are images ``[N, C, H, W]`` in [−1, 1] (encoded for latent models). Balanced batches of
    ``cfg.classifier_batch`` per domain, AdamW(``cfg.classifier_lr``, wd ``cfg.classifier_weight_decay``), grad
    clip 1.0, ``cfg.classifier_steps`` steps. 20 % of the source images are held out; the report gives balanced
    accuracy on them plus the target shots (fresh noise) in 5 timestep buckets, and warns when it is below 0.6
    or above 0.99 at t > 900 (then it reads global statistics, not structure).
    """
    if len(source) < 2 or len(target) < 1:
        raise TanTransferError(
            "classifier data", f"need >= 2 source and >= 1 target images, got {len(source)}, {len(target)}"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    src = bundle.encode(source).float()
    tgt = bundle.encode(target).float()
    if src.shape[1:] != tgt.shape[1:]:
        raise TanTransferError(
            "classifier data", f"source {tuple(src.shape[1:])} and target {tuple(tgt.shape[1:])} differ"
        )
    perm = torch.randperm(len(src), generator=gen)
    n_hold = max(1, len(src) // 5)
    src_hold, src_train = src[perm[:n_hold]], src[perm[n_hold:]]
    cond = bundle.prompt_embeds([cfg.prompt]).float() if bundle.conditional else None
    if classifier is None:
        torch.manual_seed(cfg.seed)
        classifier = build_classifier(cfg.classifier, bundle.unet, pooling=cfg.classifier_pooling)
    clf = classifier.float().train()
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.classifier_lr, weight_decay=cfg.classifier_weight_decay)
    T, b = bundle.num_train_timesteps, cfg.classifier_batch
    labels = torch.cat([torch.zeros(b), torch.ones(b)]).long().to(src.device)
    losses = []
    for _ in range(cfg.classifier_steps):
        i = torch.randint(0, len(src_train), (b,), generator=gen)
        j = torch.randint(0, len(tgt), (b,), generator=gen)
        x0 = torch.cat([src_train[i.to(src.device)], tgt[j.to(tgt.device)]])
        t = torch.randint(0, T, (2 * b,), generator=gen).to(x0.device)
        c = None if cond is None else cond.expand(2 * b, -1, -1)
        loss = F.cross_entropy(_call(clf, _noisy(bundle, x0, t, gen), t, c), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    opt.zero_grad(set_to_none=True)
    clf.eval().requires_grad_(False)
    by_t = _accuracy_by_bucket(clf, bundle, src_hold, tgt, cond, cfg.seed)
    warns = []
    mean_acc = sum(by_t.values()) / len(by_t)
    if mean_acc < 0.6:
        warns.append(f"held-out accuracy {mean_acc:.2f} < 0.6: the classifier barely separates the domains")
    last = list(by_t.values())[-1]
    if last > 0.99:
        warns.append(
            f"accuracy {last:.2f} at t > {T * 4 // 5}: it reads global image statistics, not structure"
        )
    for w in warns:
        warnings.warn(w, stacklevel=2)
    report = {
        "kind": type(clf).__name__,
        "steps": cfg.classifier_steps,
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5) if losses else None,
        "heldout_accuracy": round(mean_acc, 4),
        "heldout_accuracy_by_t": by_t,
        "n_source_train": len(src_train),
        "n_source_heldout": len(src_hold),
        "n_target": len(tgt),
        "warnings": warns,
    }
    return clf, report
