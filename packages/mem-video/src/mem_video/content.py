"""Content memorization at frame level (GSSCD-style, spec 2.1) and the Rahman-style video-level baseline.

Inputs are L2-normalised frame embeddings: generated [F,D], reference [M,D] (M = 1 for a training image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import MemVideoError

__all__ = ["ContentMatch", "VideoLevelMatch", "content_match", "frame_similarity", "video_level_match"]


@dataclass(frozen=True)
class ContentMatch:
    """``score`` C = max_ij S_ij at generated frame ``i`` and reference frame ``j``; ``coverage`` rho = the
    share of generated frames whose best match reaches tau."""

    score: float
    i: int
    j: int
    coverage: float


@dataclass(frozen=True)
class VideoLevelMatch:
    """``score`` Cv = max over offsets of the mean aligned similarity; S_{i,i+offset} pairs frames."""

    score: float
    offset: int


def frame_similarity(gen_emb: Tensor, ref_emb: Tensor) -> Tensor:
    """S_ij = <e_i, f_j>, [F,M]."""
    if gen_emb.ndim != 2 or ref_emb.ndim != 2 or gen_emb.shape[1] != ref_emb.shape[1]:
        raise MemVideoError(
            f"frame embeddings must be [F,D] and [M,D] with one D, got {tuple(gen_emb.shape)} and "
            f"{tuple(ref_emb.shape)} (were they made with the same embedder?)"
        )
    return gen_emb.float() @ ref_emb.float().T


def content_match(gen_emb: Tensor, ref_emb: Tensor, tau: float) -> ContentMatch:
    """Frame-level content score of a generated video against one reference (spec 2.1)."""
    s = frame_similarity(gen_emb, ref_emb)
    flat = int(torch.argmax(s))
    i, j = divmod(flat, s.shape[1])
    best_per_frame = s.max(dim=1).values
    coverage = float((best_per_frame >= tau).float().mean())
    return ContentMatch(float(s[i, j]), i, j, coverage)


def video_level_match(gen_emb: Tensor, ref_emb: Tensor) -> VideoLevelMatch:
    """Cv = max_o mean_i S_{i,i+o} over offsets with at least min(F,M)/2 overlapping frames (comparison only)."""
    s = frame_similarity(gen_emb, ref_emb)
    f, m = s.shape
    need = max(1.0, min(f, m) / 2)
    best, best_o = -float("inf"), 0
    for o in range(-(f - 1), m):
        d = torch.diagonal(s, offset=o)
        if d.numel() >= need and float(d.mean()) > best:
            best, best_o = float(d.mean()), o
    return VideoLevelMatch(best, best_o)
