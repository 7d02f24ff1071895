"""Condition masks for training (§2.5): which frames of the encoder's condition the decoder may see."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import DiffActError


def condition_mask(kind: str, labels: Tensor, boundary: Tensor, generator: torch.Generator) -> Tensor:
    """A ``(L,)`` float mask for one of ``full``, ``zero``, ``boundary03-``, ``boundary05-``,
    ``segment=1``, ``segment=2``.

    ``segment=k`` draws a present class ``k`` times (independently, possibly the same) and zeroes all
    of its frames; ``boundaryXX-`` zeroes the frames where the boundary target is ``>= 0.XX``.
    ``labels`` and ``boundary`` are ``(L,)`` on any device; draws use the CPU ``generator``.
    """
    mask = torch.ones(labels.shape[0], device=labels.device)
    if kind == "full":
        return mask
    if kind == "zero":
        return mask.zero_()
    if kind in ("boundary03-", "boundary05-"):
        threshold = 0.3 if kind == "boundary03-" else 0.5
        return (boundary < threshold).float()
    if kind in ("segment=1", "segment=2"):
        present = torch.unique(labels[labels >= 0]).cpu()
        for _ in range(int(kind[-1])):
            if present.numel():
                cls = present[int(torch.randint(present.numel(), (1,), generator=generator))]
                mask[labels == cls.to(labels.device)] = 0.0
        return mask
    raise DiffActError(f"unknown condition mask {kind!r}")


def apply_condition_mask(
    cond: Tensor, kind: str, labels: Tensor, boundary: Tensor, generator: torch.Generator
) -> Tensor:
    """``cond (B, D_c, L)`` times the :func:`condition_mask` broadcast over channels."""
    return cond * condition_mask(kind, labels, boundary, generator).to(cond.dtype)
