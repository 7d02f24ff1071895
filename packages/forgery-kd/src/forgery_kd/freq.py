"""Frequency representations for the teacher's frequency branch (all differentiable, pure torch).

* :class:`FADTransform` — F3-Net's frequency-aware decomposition: DCT, four band masks over
  ``i + j`` (low / mid / high / all) each with a learnable ``2σ(L) − 1`` offset, inverse DCT;
  ``[B, 3, s, s] → [B, 12, s, s]``.
* :class:`SRMTransform` — three fixed 5×5 SRM high-pass kernels (DeepfakeBench ``srm_conv.py``),
  summed over RGB, Hardtanh(−3, 3); ``[B, 3, H, W] → [B, 3, H, W]``.
* :class:`BlockDCTTransform` — 8×8 block DCT of the luma on the JPEG grid, ``log(|·| + 1)``;
  ``[B, 3, H, W] → [B, 64, H/8, W/8]``.
* :class:`PhaseTransform` — SPSL phase-only reconstruction of the grey image, concatenated with RGB;
  ``[B, 3, H, W] → [B, 4, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ForgeryKDError

__all__ = [
    "FREQ_TRANSFORMS",
    "BlockDCTTransform",
    "FADTransform",
    "PhaseTransform",
    "SRMTransform",
    "dct_matrix",
    "fad_band_masks",
    "make_freq_transform",
]

FREQ_TRANSFORMS = ("fad", "srm", "block_dct", "phase")


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` ``[n, n]``: ``X = D x`` (1-D), ``X = D x Dᵀ`` (2-D)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ForgeryKDError(f"dct_matrix: n must be a positive int, got {n!r}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def fad_band_masks(size: int) -> Tensor:
    """F3-Net's base band masks ``[4, s, s]`` over the index sum ``i + j``: low, mid, high, all.

    A band keeps coefficient ``(i, j)`` when ``start <= i + j <= end``: low ``[0, ⌊s/2.82⌋]``,
    mid ``[⌊s/2.82⌋, ⌊s/2⌋]``, high ``[⌊s/2⌋, 2s]``, all ``[0, 2s]`` (bands share their edges, as in F3-Net).
    """
    idx = torch.arange(size, dtype=torch.float32)
    total = idx[:, None] + idx[None, :]
    low_end = float(size // 2.82)
    half = float(size // 2)
    bands = [(0.0, low_end), (low_end, half), (half, 2.0 * size), (0.0, 2.0 * size)]
    return torch.stack([((total >= a) & (total <= b)).float() for a, b in bands])


class FADTransform(nn.Module):
    """Frequency-aware decomposition, ``[B, 3, s, s] → [B, 12, s, s]`` (4 bands × 3 channels).

    Per band ``y = Dᵀ (D x Dᵀ ⊙ m) D`` with ``m = base + (2σ(L) − 1)``, ``L ~ N(0, 0.1)`` learnable
    (``learnable=False`` uses the base masks only). Output channels are band-major: ``[low RGB, mid RGB, …]``.
    """

    out_channels = 12

    def __init__(self, size: int = 256, learnable: bool = True) -> None:
        super().__init__()
        self.size = size
        self.learnable = learnable
        self.register_buffer("dct", dct_matrix(size), persistent=False)
        self.register_buffer("base", fad_band_masks(size), persistent=False)
        self.logits = nn.Parameter(torch.randn(4, size, size) * 0.1) if learnable else None

    def masks(self) -> Tensor:
        """The four band masks ``[4, s, s]`` in use."""
        if self.logits is None:
            return self.base
        return self.base + (2.0 * torch.sigmoid(self.logits) - 1.0)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ForgeryKDError(
                f"FADTransform(size={self.size}) got input {tuple(x.shape)}; build it with size={x.shape[-1]}"
            )
        d = self.dct.to(x.dtype)
        coeffs = d @ x @ d.T  # [B, 3, s, s]
        bands = coeffs[:, None] * self.masks().to(x.dtype)[None, :, None]  # [B, 4, 3, s, s]
        y = d.T @ bands @ d
        return y.flatten(1, 2)


def _srm_kernels() -> Tensor:
    kb = torch.zeros(5, 5)
    kb[1:4, 1:4] = torch.tensor([[-1.0, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4.0
    kv = (
        torch.tensor(
            [
                [-1.0, 2, -2, 2, -1],
                [2, -6, 8, -6, 2],
                [-2, 8, -12, 8, -2],
                [2, -6, 8, -6, 2],
                [-1, 2, -2, 2, -1],
            ]
        )
        / 12.0
    )
    kh = torch.zeros(5, 5)
    kh[2, 1:4] = torch.tensor([1.0, -2, 1]) / 2.0
    return torch.stack([kb, kv, kh])


class SRMTransform(nn.Module):
    """Fixed SRM residuals, ``[B, 3, H, W] → [B, 3, H, W]`` clipped to [−3, 3].

    Each kernel is applied to all three input channels and summed (one output channel per kernel).
    Borders are replicate-padded (DeepfakeBench zero-pads), so a flat image has no residual anywhere.
    ``scale`` multiplies the input first (1.0 = DeepfakeBench on the normalised input; 127.5 then ÷3
    gives pixel-unit residuals).
    """

    out_channels = 3

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)
        weight = _srm_kernels()[:, None].expand(3, 3, 5, 5).contiguous()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x * self.scale, (2, 2, 2, 2), mode="replicate")
        y = F.conv2d(padded, self.weight.to(x.dtype))
        if self.scale != 1.0:
            y = y / 3.0
        return F.hardtanh(y, -3.0, 3.0)


class BlockDCTTransform(nn.Module):
    """8×8 block DCT of the luma, ``log(|·| + 1)``: ``[B, 3, H, W] → [B, 64, H/8, W/8]`` (H, W multiples of 8)."""

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dct", dct_matrix(8), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if h % 8 or w % 8:
            raise ForgeryKDError(f"BlockDCTTransform needs H and W divisible by 8, got {h}×{w}")
        y = torch.einsum("bchw,c->bhw", x, self.luma.to(x.dtype))
        blocks = y.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # [B, h/8, w/8, 8, 8]
        d = self.dct.to(x.dtype)
        coeffs = d @ blocks @ d.T
        return torch.log(coeffs.abs() + 1.0).flatten(3).permute(0, 3, 1, 2).contiguous()


class PhaseTransform(nn.Module):
    """SPSL phase spectrum: ``real(ifft2(exp(i·angle(fft2(grey)))))`` stacked after RGB, ``[B, 4, H, W]``."""

    out_channels = 4

    def forward(self, x: Tensor) -> Tensor:
        grey = x.mean(dim=1, keepdim=True)
        spectrum = torch.fft.fft2(grey.float())
        phase_only = torch.fft.ifft2(torch.exp(1j * torch.angle(spectrum))).real.to(x.dtype)
        return torch.cat([x, phase_only], dim=1)


def make_freq_transform(name: str, size: int = 256, *, srm_scale: float = 1.0) -> nn.Module:
    """Build a frequency transform by name: ``fad`` (needs ``size``), ``srm``, ``block_dct`` or ``phase``."""
    if name == "fad":
        return FADTransform(size)
    if name == "srm":
        return SRMTransform(srm_scale)
    if name == "block_dct":
        return BlockDCTTransform()
    if name == "phase":
        return PhaseTransform()
    raise ForgeryKDError(f"freq_transform={name!r} is unknown; use one of {', '.join(FREQ_TRANSFORMS)}")
