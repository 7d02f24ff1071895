"""Cross-attention capture for diffusers UNets: EOS indices, layer discovery, and `AttentionCapture`.

`AttentionCapture` wraps the *current* processor of each selected layer (SDPA, xformers, LoRA, …) and always
returns that processor's output unchanged. On armed steps it also recomputes the conditional rows' attention
probabilities P = softmax(q kᵀ · scale) in fp32 with the module's own pre-processing, and stores

- ``columns``: the head-mean of chosen token columns, [B, c, h, w] (e.g. the EOS column for Bright Ending);
- ``token_mass``: the head- and query-mean, a distribution over the K tokens, [B, K] (Ren et al.).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DifflabError
from .steps import StepCounter

__all__ = [
    "AttentionCapture",
    "CaptureRecord",
    "LayerInfo",
    "cross_attention_layers",
    "eos_index",
    "eos_indices",
    "select_layers",
]


# ---------------------------------------------------------------------------------------------- EOS index
def eos_index(tokenizer, prompt: str) -> int:
    """Position of the first end-of-text token: min(len(encode(prompt)), model_max_length) − 1.

    Checks that the padded ids hold ``eos_token_id`` there (true for SD1 and SD2 tokenizers, truncated or not).
    """
    if not isinstance(prompt, str):
        raise DifflabError(f"eos_index: prompt must be a string, got {type(prompt).__name__}")
    max_len = int(tokenizer.model_max_length)
    ids = tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True).input_ids
    n = len(tokenizer(prompt, truncation=False).input_ids)
    e = min(n, max_len) - 1
    if ids[e] != tokenizer.eos_token_id:
        raise DifflabError(
            f"eos_index: expected the EOS id {tokenizer.eos_token_id} at position {e} of {prompt!r}, "
            f"found {ids[e]}; is this a CLIP tokenizer?"
        )
    return e


def eos_indices(tokenizer, prompts: Sequence[str], n_per_prompt: int = 1) -> torch.LongTensor:
    """EOS positions for a prompt-major batch (all images of prompt 0, then prompt 1, …): LongTensor[B]."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if n_per_prompt < 1:
        raise DifflabError(f"n_per_prompt must be ≥ 1, got {n_per_prompt}")
    return torch.tensor([eos_index(tokenizer, p) for p in prompts for _ in range(n_per_prompt)])


# ---------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerInfo:
    """One cross-attention module of a UNet.

    ``path`` is "down", "mid" or "up"; ``downsample`` is the factor between latent and query resolution
    (2**i for down block i); ``call_order`` is its position in the forward pass among cross layers.
    """

    name: str
    path: str
    block: int | None
    downsample: int
    heads: int
    call_order: int


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def cross_attention_layers(unet: nn.Module) -> list[LayerInfo]:
    """Every cross-attention `Attention` module of ``unet`` in forward-call order."""
    from diffusers.models.attention_processor import Attention

    if not hasattr(unet, "down_blocks"):
        raise DifflabError(f"{type(unet).__name__} is not a diffusers UNet (no down_blocks)")
    n_down = len(unet.down_blocks)
    n_up = len(getattr(unet, "up_blocks", []))
    found = []
    for order, (name, module) in enumerate(unet.named_modules()):
        if not isinstance(module, Attention) or not module.is_cross_attention:
            continue
        m = _BLOCK.match(name)
        if m is None:
            continue
        if m.group(3):
            path, block, down = "mid", None, 2 ** (n_down - 1)
        elif m.group(1) == "down_blocks":
            path, block = "down", int(m.group(2))
            down = 2**block
        else:
            path, block = "up", int(m.group(2))
            down = 2 ** (n_up - 1 - block)
        rank = {"down": 0, "mid": 1, "up": 2}[path]
        found.append((rank, block or 0, order, name, path, block, down, int(module.heads)))
    found.sort()
    return [
        LayerInfo(name, path, block, down, heads, i)
        for i, (_, _, _, name, path, block, down, heads) in enumerate(found)
    ]


LayerSpec = str | Sequence[str] | Callable[[LayerInfo], bool]


def select_layers(unet: nn.Module, spec: LayerSpec = "down-highest") -> list[LayerInfo]:
    """Pick cross-attention layers.

    ``spec``: "down-highest" (the ``attn2`` modules of the down path at the highest resolution that has any
    down-path cross-attention; Bright Ending's set), "highest" (same resolution, down and up path), "all",
    a list of names, a regular expression, or a callable on `LayerInfo`. Raises if nothing matches.
    """
    layers = cross_attention_layers(unet)
    if not layers:
        raise DifflabError(f"{type(unet).__name__} has no cross-attention layers")
    names = {info.name for info in layers}
    if callable(spec) and not isinstance(spec, str):
        chosen = [info for info in layers if spec(info)]
    elif spec in ("down-highest", "highest"):
        attn2 = [info for info in layers if info.name.endswith("attn2")]
        down = [info for info in attn2 if info.path == "down"]
        if not down:
            raise DifflabError(f"layers={spec!r}: the UNet has no down-path cross-attention")
        finest = min(info.downsample for info in down)
        pool = down if spec == "down-highest" else attn2
        chosen = [info for info in pool if info.downsample == finest]
    elif spec == "all":
        chosen = layers
    elif isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as err:
            raise DifflabError(f"layers={spec!r} is not a valid regular expression: {err}") from err
        chosen = [info for info in layers if pattern.search(info.name)]
    else:
        unknown = [name for name in spec if name not in names]
        if unknown:
            raise DifflabError(f"layers: no cross-attention layer named {unknown[0]!r}")
        wanted = set(spec)
        chosen = [info for info in layers if info.name in wanted]
    if not chosen:
        raise DifflabError(f"layers={spec!r} matches no cross-attention layer of the UNet")
    return chosen


# ---------------------------------------------------------------------------------------------- capture
@dataclass
class CaptureRecord:
    """What one layer recorded at one step (fp32, on CPU).

    ``columns`` [B, c, h, w]: head-mean probabilities of the selected token columns over query positions;
    ``token_mass`` [B, K]: head- and query-mean probabilities over tokens.
    """

    columns: torch.Tensor | None
    token_mass: torch.Tensor | None


def attention_probs(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
    """softmax(q kᵀ · scale) in fp32 for ``attn`` with its own pre-processing: [B, heads, Q, K].

    Mirrors diffusers' `AttnProcessor`: spatial norm, 4-D → 3-D reshape, mask preparation, group norm,
    ``norm_cross`` on the encoder states, and ``norm_q``/``norm_k``.
    """
    h = hidden_states
    if attn.spatial_norm is not None:
        h = attn.spatial_norm(h, temb)
    if h.ndim == 4:
        b, c, hh, ww = h.shape
        h = h.view(b, c, hh * ww).transpose(1, 2)
    b = h.shape[0]
    context = encoder_hidden_states
    if attn.group_norm is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    if context is None:
        context = h
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    q = attn.to_q(h)
    k = attn.to_k(context)
    heads = attn.heads
    q = q.view(b, -1, heads, q.shape[-1] // heads).transpose(1, 2)
    k = k.view(b, -1, heads, k.shape[-1] // heads).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], b)
        scores = scores + mask.view(b, heads, -1, mask.shape[-1]).float()
    return scores.softmax(dim=-1)


class _CaptureProcessor:
    """Calls the wrapped processor and returns its output unchanged; records probabilities when armed."""

    def __init__(self, inner, capture: AttentionCapture, name: str) -> None:
        self.inner = inner
        self.capture = capture
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if temb is not None:
            kw["temb"] = temb
        out = self.inner(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kw,
        )
        step = self.capture.armed_step()
        if step is not None:
            with torch.no_grad():
                self.capture._record(
                    self.name, step, attn, hidden_states, encoder_hidden_states, attention_mask, temb
                )
        return out


class AttentionCapture:
    """Context manager recording cross-attention probabilities of chosen layers at chosen steps.

    Args:
        unet: a diffusers UNet (2-D or 3-D condition model).
        layers: a layer spec for `select_layers` or a list of `LayerInfo`.
        scheduler: the scheduler whose ``timesteps`` define step indices.
        steps: "last" (index len(timesteps) − 1), "all", or a list of step indices.
        branch: "cond" (second half of a CFG batch [uncond | cond]), "uncond", or "all" (no CFG split).
        columns: LongTensor[B] (one token per image, e.g. `eos_indices`) or [B, c]; None stores no columns.
        query_mean: also store the head- and query-mean distribution over tokens, [B, K].

    Records are fp32 CPU tensors in ``records[(layer_name, step)]``. Processors are restored on exit.
    """

    def __init__(
        self,
        unet: nn.Module,
        layers: LayerSpec | Sequence[LayerInfo] = "down-highest",
        *,
        scheduler,
        steps: str | Sequence[int] = "last",
        branch: str = "cond",
        columns: torch.Tensor | None = None,
        query_mean: bool = False,
    ) -> None:
        if branch not in ("cond", "uncond", "all"):
            raise DifflabError(f"branch={branch!r}: use 'cond', 'uncond' or 'all'")
        if isinstance(steps, str) and steps not in ("last", "all"):
            raise DifflabError(f"steps={steps!r}: use 'last', 'all' or a list of step indices")
        if columns is None and not query_mean:
            raise DifflabError("AttentionCapture records nothing: give columns=… and/or query_mean=True")
        if isinstance(layers, (list, tuple)) and layers and isinstance(layers[0], LayerInfo):
            self.layers = list(layers)
        else:
            self.layers = select_layers(unet, layers)
        self.unet = unet
        self.steps = steps if isinstance(steps, str) else sorted({int(s) for s in steps})
        self.branch = branch
        self.columns = None if columns is None else torch.as_tensor(columns, dtype=torch.long)
        if self.columns is not None and self.columns.ndim == 1:
            self.columns = self.columns[:, None]
        self.query_mean = query_mean
        self.counter = StepCounter(unet, scheduler)
        self.records: dict[tuple[str, int], CaptureRecord] = {}
        self._saved: dict[str, object] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> AttentionCapture:
        self._saved = dict(self.unet.attn_processors)
        wanted = {f"{info.name}.processor" for info in self.layers}
        procs = {
            key: _CaptureProcessor(proc, self, key.removesuffix(".processor")) if key in wanted else proc
            for key, proc in self._saved.items()
        }
        self.unet.set_attn_processor(procs)
        self.counter.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.counter.detach()
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._saved = None

    def reset(self) -> None:
        """Drop all records and reset the step counter (before a new run)."""
        self.records.clear()
        self.counter.reset()

    def paused(self):
        """Record nothing inside the block (e.g. a gradient loop)."""
        return self.counter.paused()

    def armed_step(self) -> int | None:
        index = self.counter.index
        if index is None:
            return None
        if self.steps == "all":
            return index
        if self.steps == "last":
            return index if index == self.counter.num_steps - 1 else None
        return index if index in self.steps else None

    # ------------------------------------------------------------------ recording
    def _rows(self, batch: int) -> slice:
        if self.branch == "all":
            return slice(0, batch)
        if batch % 2:
            raise DifflabError(
                f"AttentionCapture(branch={self.branch!r}) needs a CFG-doubled batch [uncond | cond]; got "
                f"batch {batch}. Use guidance_scale > 1 or branch='all'."
            )
        half = batch // 2
        return slice(half, batch) if self.branch == "cond" else slice(0, half)

    def _record(self, name, step, attn, hidden_states, encoder_hidden_states, attention_mask, temb) -> None:
        rows = self._rows(hidden_states.shape[0])
        sel = lambda x: None if x is None else x[rows]  # noqa: E731
        mask = attention_mask
        if mask is not None and mask.shape[0] == hidden_states.shape[0]:
            mask = mask[rows]
        probs = attention_probs(attn, sel(hidden_states), sel(encoder_hidden_states), mask, sel(temb))
        b, _, q, k = probs.shape
        head_mean = probs.mean(dim=1)  # [B, Q, K]
        columns = token_mass = None
        if self.columns is not None:
            cols = self.columns.to(head_mean.device)
            if cols.shape[0] != b:
                raise DifflabError(
                    f"AttentionCapture: columns has {cols.shape[0]} rows but the {self.branch} branch has {b} "
                    "images; give one column index per image, prompt-major"
                )
            if int(cols.max()) >= k:
                raise DifflabError(f"AttentionCapture: column {int(cols.max())} ≥ {k} tokens in layer {name}")
            picked = torch.gather(head_mean, 2, cols[:, None, :].expand(b, q, cols.shape[1]))  # [B, Q, c]
            hh, ww = self._query_hw(hidden_states, q, name)
            columns = picked.transpose(1, 2).reshape(b, cols.shape[1], hh, ww).cpu()
        if self.query_mean:
            token_mass = head_mean.mean(dim=1).cpu()
        self.records[(name, step)] = CaptureRecord(columns, token_mass)

    def _query_hw(self, hidden_states: torch.Tensor, q: int, name: str) -> tuple[int, int]:
        if hidden_states.ndim == 4:
            return int(hidden_states.shape[-2]), int(hidden_states.shape[-1])
        lh, lw = self.counter.latent_hw or (0, 0)
        factor = math.sqrt(lh * lw / q) if q else 0
        f = round(factor)
        if f < 1 or (lh // f) * (lw // f) != q:
            raise DifflabError(
                f"AttentionCapture: layer {name} has {q} queries, which is not the latent {lh}×{lw} "
                "downsampled by a power of two"
            )
        return lh // f, lw // f

    # ------------------------------------------------------------------ results
    @property
    def captured_steps(self) -> list[int]:
        return sorted({step for _, step in self.records})

    def column_map(self, step: int | None = None, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Mean over layers of the recorded columns at ``step`` (default: the last recorded): [B, c, h, w].

        Layers of mixed resolution are bilinearly resized to the largest before averaging.
        """
        maps = self._gather(step, layers, "columns")
        size = max((m.shape[-2], m.shape[-1]) for m in maps)
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps
        ]
        return torch.stack(maps).mean(dim=0)

    def token_distribution(
        self, step: int | None = None, layers: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Mean over layers of the head- and query-mean token distribution at ``step``: [B, K]."""
        return torch.stack(self._gather(step, layers, "token_mass")).mean(dim=0)

    def _gather(self, step, layers, field) -> list[torch.Tensor]:
        if not self.records:
            raise DifflabError("AttentionCapture recorded nothing: was the pipeline run inside the context?")
        step = self.captured_steps[-1] if step is None else step
        names = [info.name for info in self.layers] if layers is None else list(layers)
        out = [getattr(self.records[(n, step)], field) for n in names if (n, step) in self.records]
        if not out or any(t is None for t in out):
            raise DifflabError(f"AttentionCapture: no {field} recorded at step {step} for layers {names}")
        return out
