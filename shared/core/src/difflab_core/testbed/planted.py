"""A deterministic "planted attention" fixture: BE code paths checked in seconds, no trained model needed.

`PlantedAttention` wraps the current processors of chosen cross-attention layers and passes them an additive
attention bias: ``strength`` on each image's end-token column at query positions inside a known mask. The
end-token map at those layers is then bright exactly there. Because the bias travels as the processor's
``attention_mask`` argument, an `AttentionCapture` entered *before* it (so it sits inside) records the planted
probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..attention import LayerInfo, select_layers
from ..errors import DifflabError

__all__ = ["PlantedAttention"]


class _PlantedProcessor:
    def __init__(self, inner, owner: PlantedAttention) -> None:
        self.inner = inner
        self.owner = owner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if temb is not None:
            kw["temb"] = temb
        tokens = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else None
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states[0, 0].numel()
        bias = self.owner.bias(
            hidden_states.shape[0], queries, tokens, hidden_states.device, hidden_states.dtype
        )
        if attention_mask is not None:
            bias = bias + attention_mask.to(bias.dtype)
        return self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=bias, **kw
        )


class PlantedAttention:
    """Context manager planting a bright end-token region in chosen layers.

    Args:
        unet: a diffusers UNet.
        mask: [h, w] or [B, h, w] in {0, 1} at any resolution (resized to each layer's square query grid,
            nearest neighbour).
        columns: LongTensor[B], the end-token index of each image (prompt-major), e.g. `eos_indices`.
        layers: a layer spec for `select_layers` (default: Bright Ending's "down-highest").
        strength: logit added inside the mask (e^strength times more attention before renormalisation).

    In a CFG batch [uncond | cond] only the conditional half is planted.
    """

    def __init__(
        self,
        unet,
        mask: torch.Tensor,
        columns: torch.Tensor,
        *,
        layers: str | Sequence[str] = "down-highest",
        strength: float = 4.0,
    ) -> None:
        self.unet = unet
        self.layers: list[LayerInfo] = select_layers(unet, layers)
        self.mask = mask.float() if mask.ndim == 3 else mask.float()[None]
        self.columns = torch.as_tensor(columns, dtype=torch.long).reshape(-1)
        if self.mask.shape[0] not in (1, len(self.columns)):
            raise DifflabError(
                f"PlantedAttention: mask has {self.mask.shape[0]} images, columns {len(self.columns)}"
            )
        self.strength = float(strength)
        self._saved = None

    def bias(self, batch: int, queries: int, tokens: int | None, device, dtype) -> torch.Tensor:
        """The additive attention bias [batch, Q, K] for one layer call."""
        n = len(self.columns)
        if tokens is None:
            raise DifflabError("PlantedAttention: the layer has no encoder states (not cross-attention)")
        if batch not in (n, 2 * n):
            raise DifflabError(
                f"PlantedAttention: batch {batch} does not match {n} columns (or a CFG-doubled 2×)"
            )
        side = round(queries**0.5)
        if side * side != queries:
            raise DifflabError(f"PlantedAttention supports square query grids; got {queries} queries")
        grid = (
            F.interpolate(self.mask[:, None], size=(side, side), mode="nearest").flatten(1).expand(n, queries)
        )
        bias = torch.zeros(batch, queries, tokens, device=device, dtype=dtype)
        rows = torch.arange(batch - n, batch, device=device)
        bias[
            rows[:, None], torch.arange(queries, device=device)[None, :], self.columns.to(device)[:, None]
        ] = self.strength * grid.to(device, dtype)
        return bias

    def __enter__(self) -> PlantedAttention:
        self._saved = dict(self.unet.attn_processors)
        wanted = {f"{info.name}.processor" for info in self.layers}
        self.unet.set_attn_processor(
            {k: _PlantedProcessor(v, self) if k in wanted else v for k, v in self._saved.items()}
        )
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._saved = None
