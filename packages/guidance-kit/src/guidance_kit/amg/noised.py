"""The iDDPM code path of AMG (`AMGConfig.official_iddpm`, spec §2.3): G_sim on x_t against the *noised*
training set, armed, paused, applied as a DDPM mean shift.

r = ℓ(x_t, ñ₀)/(α·mean of the k smallest ℓ), denominator detached, where the distance to a noised training
image ñ = √ᾱ_t·n + √(1−ᾱ_t)·z is replaced by its expectation over z [reconstruction; no random numbers]:
ℓ(x_t, ñ) = √(mean((x_t − √ᾱ_t·n)²) + (1 − ᾱ_t))/2 on [−1, 1] images.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import GuidanceKitError
from ..index import NeighbourIndex

__all__ = ["NoisedPixelDistance"]


class NoisedPixelDistance:
    """``(r [B], nearest [B])`` of x_t [B, C, H, W] (C = 1 or 3, H = the index's pixel size) at noise level ᾱ
    against the index's images noised to that level; r is differentiable in x_t."""

    def __init__(self, index: NeighbourIndex, *, alpha: float = 0.5, k: int = 50) -> None:
        self.index = index
        self.alpha = alpha
        self.k = k

    def __call__(self, x_t: Tensor, abar: float) -> tuple[Tensor, Tensor]:
        if x_t.shape[-1] != self.index.pixel_size or x_t.shape[1] not in (1, 3):
            raise GuidanceKitError(
                f"detection='noised' compares x_t with the index pixels directly: x_t must be [B, 1|3, "
                f"{self.index.pixel_size}, {self.index.pixel_size}] (the index's pixel_size), got {tuple(x_t.shape)}"
            )
        a = abar**0.5
        # mean((x_t − √ᾱ·n)²) = 4ᾱ·mean((q − p)²) with q = (x_t/√ᾱ + 1)/2 and p = (n + 1)/2 the stored pixels
        query = self.index.to_query((x_t.float() / a + 1) / 2)
        dist, rows = self.index.search(query.detach(), self.k, "pixel")
        ell_k = (4 * abar * dist.to(x_t.device) ** 2 + (1 - abar)).sqrt() / 2
        ref = self.index.flat_pixels()[rows[:, 0]].to(x_t.device)
        mse = 4 * abar * ((query.flatten(1) - ref) ** 2).mean(dim=1)
        ell = (mse + (1 - abar)).sqrt() / 2
        return ell / (self.alpha * ell_k.mean(dim=1)).clamp_min(1e-12), rows[:, 0]
