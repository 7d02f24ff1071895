"""Association guidance (§2.4): constrain triplet scores by their components at every DDIM step.

With ``p = σ(decoder logits)`` (131×L), ``g_c = p_ivt[c] · Π_{X ∈ components} p_X[X(c)]`` and
``p_ivt ← (1 - w) p_ivt + w g``; component channels are unchanged. For ``w ∈ [0, 1]`` guidance never
raises a triplet score: a triplet cannot be confident when its instrument is absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import DiffTripletError
from .labels import TripletSpace

__all__ = ["AssociationGuidance"]

GUIDED_LAYOUT = ("ivt", "i", "v", "t")


class AssociationGuidance:
    """Callable ``(p, t) -> p`` for :func:`difflab_core.seqdiff.ddim_sample_x0`'s ``prob_hook``.

    Args:
        space: the label space; its layout must start ``[ivt, i, v, t]`` unless ``scale == 0``.
        scale: ``w`` (1.0 by default).
        components: ``("i",)`` (instrument guidance, default) or ``("i", "v", "t")`` (full guidance).
    """

    def __init__(self, space: TripletSpace, scale: float = 1.0, components: Sequence[str] = ("i",)) -> None:
        components = tuple(components)
        unknown = [c for c in components if c not in ("i", "v", "t")]
        if unknown or not components:
            raise DiffTripletError(f"guidance components {components}: choose a non-empty subset of i, v, t")
        if scale != 0 and space.target_components[:4] != GUIDED_LAYOUT:
            raise DiffTripletError(
                f"association guidance needs the [ivt, i, v, t] layout, got {list(space.target_components)}; "
                "use guidance_scale=0 with other layouts"
            )
        self.space, self.scale, self.components = space, float(scale), components
        self.calls = 0
        self._index = {c: torch.from_numpy(space.index_of(c)) for c in ("i", "v", "t")}

    def guided_triplets(self, p: Tensor) -> Tensor:
        """``g`` of shape ``(..., 100, L)`` from the joint map ``p (..., C, L)``."""
        slices = self.space.slices
        g = p[..., slices["ivt"], :]
        for c in self.components:
            part = p[..., slices[c], :]
            g = g * part.index_select(-2, self._index[c].to(p.device))
        return g

    def __call__(self, p: Tensor, t: Tensor | None = None) -> Tensor:
        self.calls += 1
        if self.scale == 0:
            return p
        ivt = self.space.slices["ivt"]
        mixed = (1.0 - self.scale) * p[..., ivt, :] + self.scale * self.guided_triplets(p)
        return torch.cat([mixed, p[..., ivt.stop :, :]], dim=-2)
