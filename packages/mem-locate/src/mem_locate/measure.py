"""Measurement: localized similarity "LS" between generations and references under the BE map (spec §2.5).

M̃ is the map bilinearly upsampled to the image size, w = M̃/mean(M̃) and M̄ = M̃/max(M̃):

- ``ssim``:  Σ w·SSIM(g, r)_hw / Σ w (Gaussian window 11, σ 1.5, K = (0.01, 0.03), averaged over channels);
- ``pixel``: 1 − √mean(w·(g − r)²);
- ``sscd``:  ⟨E(g⊙M̄), E(r⊙M̄)⟩ with an L2-normalised embedder E (SSCD from a local TorchScript file).

With M ≡ 1 these are plain SSIM, 1 − RMSE and the unmasked embedding similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab_core.metrics import ssim_map

from .errors import MemLocateError, core_errors
from .localize import upsample_map

__all__ = ["load_sscd", "localized_similarity", "masked_sse", "webster_template_match"]

SSCD_REPLICATION = 0.5  # SSCD > 0.5 means replication [paper: Somepalli et al. 2023]
SSCD_WEN_SELECTION = 0.7  # Wen et al.'s selection threshold [paper]
WEBSTER_THRESHOLD = 2.5e3  # Webster's template-match threshold at 256² [official code]


def load_sscd(path, device="cpu"):
    """SSCD from a TorchScript file (core `SSCDEmbedder`); checks that it returns [B, D]."""
    from difflab_core.metrics import SSCDEmbedder

    with core_errors("--sscd"):
        emb = SSCDEmbedder.from_torchscript(path, device)
    try:
        with torch.no_grad():
            out = emb.features(torch.rand(1, 3, 64, 64, device=device))
    except Exception as err:
        raise MemLocateError(
            f"{path}: the TorchScript model failed on a [1, 3, 224, 224] input ({err})"
        ) from err
    if out.ndim != 2 or out.shape[0] != 1:
        raise MemLocateError(f"{path}: the TorchScript model must return [B, D], got {tuple(out.shape)}")
    return emb


def _images(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise MemLocateError(
            f"localized_similarity: {what} must be [B, 3, H, W] in [0, 1], got {tuple(x.shape)}"
        )
    return x


def localized_similarity(
    generated: torch.Tensor,
    references: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    metric: str = "ssim",
    embedder=None,
) -> dict:
    """LS of each generation g [n, 3, H, W] against each reference r [R, 3, H', W'] (resized to H×W).

    ``mask``: BE maps [h, w] (shared) or [n, h, w] (one per generation); None means M ≡ 1.
    Returns ``{"matrix": [R, n], "per_generation": [n] (max over references), "mean", "max"}``; for ``sscd``
    also ``"unmasked"`` (the same statistics without the mask).
    """
    g = _images(generated, "generated")
    r = _images(references, "references")
    n, _, h, w = g.shape
    if r.shape[-2:] != (h, w):
        r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False)
    m = torch.ones(n, h, w) if mask is None else torch.as_tensor(mask).float()
    if m.ndim == 2:
        m = m[None].expand(n, *m.shape)
    if m.ndim != 3 or m.shape[0] != n:
        raise MemLocateError(
            f"localized_similarity: mask must be [h, w] or [{n}, h, w], got {tuple(m.shape)}"
        )
    m = upsample_map(m, (h, w)).to(g.device).clamp_min(0)
    if (m.flatten(1).sum(1) <= 0).any():
        raise MemLocateError("localized_similarity: a mask is all zero; the similarity is undefined")
    weight = m / m.mean(dim=(-2, -1), keepdim=True)
    matrix = torch.empty(r.shape[0], n)
    extra = {}
    if metric == "ssim":
        for i in range(r.shape[0]):
            s = ssim_map(g, r[i : i + 1].expand_as(g))
            matrix[i] = (weight * s).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1))
    elif metric == "pixel":
        for i in range(r.shape[0]):
            d2 = (g - r[i : i + 1]).pow(2) * weight[:, None]
            matrix[i] = 1 - d2.mean(dim=(1, 2, 3)).sqrt()
    elif metric == "sscd":
        if embedder is None:
            raise MemLocateError("metric='sscd' needs embedder= (load one with load_sscd(path))")
        mbar = (m / m.amax(dim=(-2, -1), keepdim=True))[:, None]
        with torch.no_grad():
            eg = embedder.embed(g * mbar)  # [n, D]
            er = torch.stack([embedder.embed(r * mbar[j : j + 1]) for j in range(n)], dim=1)  # [R, n, D]
            matrix = (er * eg[None]).sum(-1).cpu()
            plain = (embedder.embed(r) @ embedder.embed(g).T).cpu()
        per_plain = plain.max(dim=0).values
        extra["unmasked"] = {"matrix": plain, "mean": float(per_plain.mean()), "max": float(per_plain.max())}
    else:
        raise MemLocateError(f"metric={metric!r}: use 'ssim', 'pixel' or 'sscd'")
    per = matrix.max(dim=0).values
    return {
        "matrix": matrix,
        "per_generation": per,
        "mean": float(per.mean()),
        "max": float(per.max()),
        **extra,
    }


def masked_sse(
    template: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor, *, size: int = 256
) -> torch.Tensor:
    """Webster's Σ(t·m − g·m)² / mean(m) at ``size``² in [0, 1]: template/generated [B|1, 3, H, W], mask [B|1, H, W]."""
    t = _images(template, "template")
    g = _images(generated, "generated")
    mk = torch.as_tensor(mask).float()
    if mk.ndim == 2:
        mk = mk[None]
    resize = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # noqa: E731
    t, g = resize(t), resize(g)
    mk = F.interpolate(mk[:, None], size=(size, size), mode="nearest")
    num = ((t * mk - g * mk) ** 2).sum(dim=(1, 2, 3))
    return num / mk.mean(dim=(1, 2, 3)).clamp_min(1e-12)


def webster_template_match(
    template, generated, mask, *, threshold: float = WEBSTER_THRESHOLD
) -> torch.Tensor:
    """True where `masked_sse` < ``threshold`` (2.5e3 at 256², Webster's ``gather_groundtruth_labels.py``)."""
    return masked_sse(template, generated, mask) < threshold
