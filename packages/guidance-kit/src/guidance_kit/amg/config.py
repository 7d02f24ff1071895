"""`AMGConfig`: Anti-Memorization Guidance's switches and constants, with the paper's defaults.

Constants are the official AMG-sd code's (spec §2.2–2.3): λ_t = 0.3 + 0.1·exp(−0.005·t′);
s₁ = clip(σ₁(s₀−1)/0.5, 0, s₀−1); s₂ = clip(σ₁(s₀−1−s₁)/0.3, 0, s₀−1−s₁); 10-step G_dup hold;
c₃ = c_sim·(σ₂ − 0.3)·exp((1000 − t′)/170).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..errors import GuidanceKitError
from .profiles import SIM_SCALES

__all__ = ["GRADS", "TERMS", "AMGConfig"]

TERMS = ("spe", "dup", "sim")
GRADS = ("x0", "through_unet")


@dataclass(frozen=True)
class AMGConfig:
    """Anti-Memorization Guidance settings (defaults: the paper's gating with the official constants).

    ``terms``: any of "spe" (despecification), "dup" (caption deduplication), "sim" (dissimilarity).
    ``gating``: "paper" (a term acts only while σ > λ_t) or "official" (the code: also whenever σ > 0 for
    G_spe). ``backend``: "pixel" (offline default), "ssim", "sscd" or "embedding".
    ``detect_every``: detect on every r-th step (active holds continue between).
    ``sim_max_noise_ratio``: caps the (1−ᾱ_t)/ᾱ_t factor by which G_sim moves x̂₀ (δx̂₀ =
    −min((1−ᾱ)/ᾱ, cap)·c₃·∇σ₂); 212 is Stable Diffusion's value at t = T, where the official constants were
    set, so SD runs are unaffected; schedules with ᾱ_T → 0 (cosine, zero-SNR) would otherwise explode
    [reconstruction]. None disables the cap.
    ``grad``: how G_sim differentiates σ₂ by x_t: "x0" (official code: through x̂₀ with ε̂′ held constant,
    ∇_{x_t} = ∇_{x̂₀}/√ᾱ_t) or "through_unet" (the paper's literal gradient: ε̂′(x_t) is re-evaluated with
    autograd through the denoiser calls that make it, about 3× a firing step's cost).
    ``detection``: "x0" (x̂₀ against the index, the paper's SD path) or "noised" (the iDDPM code: x_t against
    the noised training images, G_sim only, see `official_iddpm`). ``noised_*`` apply only to "noised":
    λ(f) = top − span·exp(−rate·f) with ``noised_lambda`` = (top, span, rate), f = t/T; guidance is armed by a
    step with r < ``noised_arm`` and then fires while r < λ(f), shifting the DDPM mean by
    Σ_t·``noised_scale``·(λ − r)·∇_{x_t}r; after ``noised_pause_after`` consecutive armed steps without firing,
    detection pauses for ``noised_pause_steps`` steps.
    ``compress_skip``: with a value, CFG runs only on the Compress schedule's steps (and inside G_dup holds).
    ``pixel_space``: where the pixel backend compares x̂₀ with the index: "image" (decoded by the VAE, the
    paper) or "latent" (x̂₀'s latents against the VAE latents stored in the index: no decode at all, for
    detection or for G_sim's gradient) [reconstruction]. ``preview_decoder``: a local diffusers
    `AutoencoderTiny` folder that decodes x̂₀ for detection (and G_sim) instead of the pipeline's VAE; the
    final images still come from the pipeline's VAE [reconstruction].
    """

    terms: frozenset[str] = field(default_factory=lambda: frozenset(TERMS))
    gating: str = "paper"
    backend: str = "pixel"
    lambda_floor: float = 0.3
    lambda_span: float = 0.1
    lambda_rate: float = 0.005
    spe_full: float = 0.5
    dup_full: float = 0.3
    dup_hold: int = 10
    dup_neighbours: int = 1000
    dup_min_count: int = 21
    dup_mode: str = "neighbourhood"
    sim_scale: float | None = None
    sim_offset: float = 0.3
    sim_tau: float = 170.0
    grad: str = "x0"
    sim_max_noise_ratio: float | None = 212.0
    detect_every: int = 1
    pixel_alpha: float = 0.5
    pixel_k: int = 50
    compress_skip: int | None = None
    compress_k: float = 2.0
    detection: str = "x0"
    noised_lambda: tuple[float, float, float] = (1.95, 0.45, 6.25)
    noised_arm: float = 1.5
    noised_scale: float = 8e4
    noised_pause_after: int = 3
    noised_pause_steps: int = 10
    pixel_space: str = "image"
    preview_decoder: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", frozenset(self.terms))
        if self.preview_decoder is not None:
            object.__setattr__(self, "preview_decoder", str(self.preview_decoder))
        bad = sorted(set(self.terms) - set(TERMS))
        if bad:
            raise GuidanceKitError(f"terms: unknown {bad}; use any of {TERMS}")
        if self.gating not in ("paper", "official"):
            raise GuidanceKitError(f"gating={self.gating!r}: use 'paper' or 'official'")
        if self.backend not in ("pixel", "ssim", "sscd", "embedding"):
            raise GuidanceKitError(f"backend={self.backend!r}: use 'pixel', 'ssim', 'sscd' or 'embedding'")
        if self.dup_mode not in ("neighbourhood", "nearest"):
            raise GuidanceKitError(f"dup_mode={self.dup_mode!r}: use 'neighbourhood' or 'nearest'")
        if self.grad not in GRADS:
            raise GuidanceKitError(
                f"grad={self.grad!r}: use 'x0' (the official code's gradient through x̂₀ only) or "
                "'through_unet' (the paper's gradient through the denoiser)"
            )
        if self.detection not in ("x0", "noised"):
            raise GuidanceKitError(f"detection={self.detection!r}: use 'x0' or 'noised'")
        if self.detection == "noised" and (self.terms - {"sim"} or self.backend != "pixel"):
            raise GuidanceKitError(
                "detection='noised' (the iDDPM code path) supports terms={'sim'} with backend='pixel' only"
            )
        if self.pixel_space not in ("image", "latent"):
            raise GuidanceKitError(f"pixel_space={self.pixel_space!r}: use 'image' or 'latent'")
        if self.pixel_space == "latent" and (self.backend != "pixel" or self.detection != "x0"):
            raise GuidanceKitError(
                "pixel_space='latent' compares x̂₀ latents with stored VAE latents: it needs backend='pixel' "
                f"and detection='x0' (got backend={self.backend!r}, detection={self.detection!r})"
            )
        if self.preview_decoder is not None and (self.pixel_space == "latent" or self.detection != "x0"):
            raise GuidanceKitError(
                "preview_decoder decodes x̂₀ for image-space detection: it cannot be combined with "
                "pixel_space='latent' or detection='noised'"
            )
        if self.noised_pause_after < 1 or self.noised_pause_steps < 0 or self.noised_scale < 0:
            raise GuidanceKitError("noised_pause_after must be ≥ 1, noised_pause_steps and noised_scale ≥ 0")
        if not isinstance(self.detect_every, int) or self.detect_every < 1:
            raise GuidanceKitError(f"detect_every must be an integer ≥ 1, got {self.detect_every!r}")
        if self.dup_hold < 1 or self.pixel_k < 1 or self.dup_neighbours < 1:
            raise GuidanceKitError("dup_hold, pixel_k and dup_neighbours must be ≥ 1")
        if self.spe_full <= 0 or self.dup_full <= 0 or self.pixel_alpha <= 0 or self.sim_tau <= 0:
            raise GuidanceKitError("spe_full, dup_full, pixel_alpha and sim_tau must be > 0")
        if self.sim_max_noise_ratio is not None and not self.sim_max_noise_ratio > 0:
            raise GuidanceKitError(
                f"sim_max_noise_ratio must be > 0 or None, got {self.sim_max_noise_ratio!r}"
            )
        if self.sim_scale is not None and not self.sim_scale >= 0:
            raise GuidanceKitError(f"sim_scale must be ≥ 0 or None, got {self.sim_scale!r}")

    def noised_lambda_at(self, f: float) -> float:
        """The iDDPM threshold on r: λ(f) = top − span·exp(−rate·f), f = t/T (1.5 at 0, 1.9491 at 1)."""
        top, span, rate = self.noised_lambda
        return top - span * math.exp(-rate * f)

    def lambda_t(self, t_prime: float) -> float:
        """λ_t = floor + span·exp(−rate·t′), t′ = 1000·t/T."""
        return self.lambda_floor + self.lambda_span * math.exp(-self.lambda_rate * t_prime)

    def sim_exponent(self, t_prime: float) -> float:
        """exp((1000 − t′)/τ): 18.94 at t′ = 500, 358.7 at t′ = 0."""
        return math.exp((1000.0 - t_prime) / self.sim_tau)

    @property
    def c_sim(self) -> float:
        """The dissimilarity scale: ``sim_scale`` or the backend's profile value."""
        return float(self.sim_scale) if self.sim_scale is not None else SIM_SCALES[self.backend]

    def replace(self, **changes) -> AMGConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["terms"] = sorted(self.terms)
        return out

    @classmethod
    def paper(cls, **changes) -> AMGConfig:
        """The paper's wording: y_N is the nearest neighbour's caption, and G_sim's gradient runs through the
        denoiser."""
        return cls(**({"dup_mode": "nearest", "grad": "through_unet"} | changes))

    @classmethod
    def official_iddpm(cls, **changes) -> AMGConfig:
        """The CIFAR-10 (improved-DDPM) code path: G_sim only, r from x_t to the noised training set, armed at
        r < 1.5, fires while r < λ(f) with the DDPM mean shift Σ_t·8·10⁴·(λ − r)·∇r, pauses 10 steps after 3
        misses."""
        return cls(**({"terms": frozenset({"sim"}), "detection": "noised"} | changes))

    @classmethod
    def official_sd(cls, **changes) -> AMGConfig:
        """The code path behind the paper's SD table: SSCD similarity, official gating, c_sim = 100."""
        return cls(**({"gating": "official", "backend": "sscd", "sim_scale": 100.0} | changes))
