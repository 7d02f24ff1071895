"""AMG detection: σ, the similarity of a predicted image x̂₀ to its nearest training image (higher = closer).

- `PixelSimilarity` (offline default): r = ℓ(x̂₀, n₀)/(α·mean of the k smallest ℓ), ℓ = RMSE on [0, 1]
  pixels (= √mean((a−b)²)/2 on [−1, 1]), denominator detached; σ = 1 − r/2, so r = 1.4 ↦ σ = 0.3.
- `LatentPixelSimilarity` (``pixel_space="latent"``): the same r on x̂₀'s latents against the VAE latents
  stored in the index (ℓ = RMSE over latent elements; r is a ratio, so the latent scale cancels): no decode.
- `SSIMSimilarity`: SSIM(x̂₀, n₀) with n₀ re-ranked by SSIM among the 32 pixel-nearest.
- `EmbeddingSimilarity`: cosine of L2-normalised embeddings (SSCD or any `ImageSimilarity`).

Each is differentiable in the images; the neighbour search itself is not (and draws no random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from difflab_core.metrics import ssim

from ..errors import GuidanceKitError
from ..index import NeighbourIndex

__all__ = [
    "Detection",
    "EmbeddingSimilarity",
    "LatentPixelSimilarity",
    "PixelSimilarity",
    "SSIMSimilarity",
    "make_similarity",
]


@dataclass
class Detection:
    """``sigma`` [B] (differentiable when the images were), ``nearest`` [B] index rows, ``neighbours`` [B, K]
    (nearest first; for caption deduplication) or None."""

    sigma: Tensor
    nearest: Tensor
    neighbours: Tensor | None = None


class PixelSimilarity:
    """σ = 1 − r/2 from the pixel score r (AMG's normalised L2, α = 0.5, k = 50)."""

    def __init__(self, index: NeighbourIndex, *, alpha: float = 0.5, k: int = 50) -> None:
        self.index = index
        self.alpha = alpha
        self.k = k

    def __call__(self, images: Tensor, neighbours: int = 0) -> Detection:
        dist, rows = self._search(images.detach(), max(self.k, neighbours))
        denom = self.alpha * dist[:, : self.k].mean(dim=1).to(images.device)
        query = self._flat_query(images)
        ref = self._stored()[rows[:, 0]].to(images.device)
        ell = ((query - ref) ** 2).mean(dim=1).add(1e-12).sqrt()
        r = ell / denom.clamp_min(1e-12)
        return Detection(1 - r / 2, rows[:, 0], rows if neighbours else None)

    def _search(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self.index.search(x, k, "pixel")

    def _flat_query(self, x: Tensor) -> Tensor:
        return self.index.to_query(x).flatten(1)

    def _stored(self) -> Tensor:
        return self.index.flat_pixels()


class LatentPixelSimilarity(PixelSimilarity):
    """σ = 1 − r/2 with r computed on latents: x̂₀ [B, C, h, w] (the denoiser's space) against the index's stored
    VAE latents (α = 0.5, k = 50). Takes latents, not images: use it with an identity decoder."""

    def __init__(self, index: NeighbourIndex, *, alpha: float = 0.5, k: int = 50) -> None:
        index.flat_latents()  # raises GuidanceKitError when the index has no latents
        super().__init__(index, alpha=alpha, k=k)

    def _search(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self.index.search_latents(x, k)

    def _flat_query(self, x: Tensor) -> Tensor:
        return self.index.check_latent_query(x)

    def _stored(self) -> Tensor:
        return self.index.flat_latents()


class SSIMSimilarity:
    """σ = SSIM(x̂₀, n₀) (window 11, σ 1.5, range 1), n₀ the best by SSIM among the 32 pixel-nearest."""

    def __init__(self, index: NeighbourIndex, *, candidates: int = 32) -> None:
        self.index = index
        self.candidates = candidates

    def __call__(self, images: Tensor, neighbours: int = 0) -> Detection:
        _, rows = self.index.search(images.detach(), max(self.candidates, neighbours), "pixel")
        cand = rows[:, : self.candidates]
        query = self.index.to_query(images)
        b, k = cand.shape
        refs = self.index.pixels(cand.reshape(-1)).to(images.device)
        scores = ssim(query.repeat_interleave(k, dim=0), refs).view(b, k)
        best = scores.argmax(dim=1)
        return Detection(
            scores.gather(1, best[:, None])[:, 0],
            cand.gather(1, best[:, None].cpu())[:, 0],
            rows if neighbours else None,
        )


class EmbeddingSimilarity:
    """σ = cosine(embed(x̂₀), key of n₀) for the index's ``backend`` keys ("sscd" or "embedding")."""

    def __init__(self, index: NeighbourIndex, backend: str) -> None:
        if backend not in index.keys:
            raise GuidanceKitError(
                f"backend={backend!r}: the index has no such keys (it has {list(index.backends)})"
            )
        if index.embedder is None:
            raise GuidanceKitError(
                f"backend={backend!r}: the index has no embedder; pass sscd_path= or embedder="
            )
        self.index = index
        self.backend = backend

    def __call__(self, images: Tensor, neighbours: int = 0) -> Detection:
        _, rows = self.index.search(images.detach(), 1, self.backend)
        emb = self.index.embedder.embed(images).float()
        keys = self.index.keys[self.backend][rows[:, 0]].to(emb.device).float()
        sigma = (emb * torch.nn.functional.normalize(keys, dim=1)).sum(dim=1)
        extra = self.index.search(images.detach(), neighbours, "pixel")[1] if neighbours else None
        return Detection(sigma, rows[:, 0], extra)


def make_similarity(config, index: NeighbourIndex):
    """The detector for ``config.backend`` over ``index``."""
    if config.backend == "pixel" and config.pixel_space == "latent":
        return LatentPixelSimilarity(index, alpha=config.pixel_alpha, k=config.pixel_k)
    if config.backend == "pixel":
        return PixelSimilarity(index, alpha=config.pixel_alpha, k=config.pixel_k)
    if config.backend == "ssim":
        return SSIMSimilarity(index)
    return EmbeddingSimilarity(index, config.backend)
