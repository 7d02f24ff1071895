"""Tiny randomly initialised diffusers/transformers components for tests and demos.

Everything is built from configs in this file and the CLIP BPE vocabulary bundled inside open-clip-torch,
so nothing is downloaded. Each factory takes a ``seed`` and builds the same weights on every call, without
touching the global RNG.

Text-to-image layouts (`tiny_sd_pipeline`), all with 32×32 images, a 2× VAE and 16×16×4 latents:

| layout             | cross-attention                                    | what it exercises                          |
|--------------------|----------------------------------------------------|--------------------------------------------|
| ``diffusers-test`` | none in down block 0; down block 1 at latent/2     | BE layers below latent resolution          |
| ``sd1``            | down blocks 0 and 1, two layers each, 2/4 heads    | two BE layers at latent resolution         |
| ``sd2``            | linear projection, per-block heads, v-prediction   | SD2 conventions, tokenizer pad ``"!"``     |
"""

from __future__ import annotations

import gzip
import importlib.util
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .errors import DifflabError

__all__ = [
    "LAYOUTS",
    "TinyNoisyClassifier",
    "bpe_path",
    "clip_tokenizer",
    "sd_scheduler_config",
    "seeded",
    "tiny_ddpm_pipeline",
    "tiny_noisy_classifier",
    "tiny_sd_pipeline",
    "tiny_text_encoder",
    "tiny_unet_2d",
    "tiny_unet_2d_condition",
    "tiny_vae",
    "tiny_video_pipeline",
]

LAYOUTS = ("diffusers-test", "sd1", "sd2")
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407


@contextmanager
def seeded(seed: int):
    """Run a block under ``torch.manual_seed(seed)`` and restore the global CPU RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside open-clip-torch, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise DifflabError("open-clip-torch is not installed; it ships the CLIP BPE vocabulary")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise DifflabError(f"{path}: the CLIP BPE vocabulary is missing from open-clip-torch")
    return path


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable-unicode table, in the order of its first 256 vocabulary ids."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = [], 0
    mapping = {}
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    chars = [mapping[b] for b in printable] + [mapping[b] for b in range(256) if b not in printable]
    return chars


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(bpe_path(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    base = _bytes_to_unicode()
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise DifflabError(f"{bpe_path()}: expected a {VOCAB_SIZE}-token vocabulary, built {len(tokens)}")
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad: str = "eos", model_max_length: int = 77):
    """The real CLIP BPE tokenizer (Stable Diffusion's ids: BOS 49406, EOS 49407), offline.

    ``pad="eos"`` pads with the EOS token (SD1); ``pad="!"`` pads with "!" (id 0, SD2).
    """
    from transformers import CLIPTokenizer

    if pad not in ("eos", "!"):
        raise DifflabError(f"pad={pad!r}: use 'eos' (SD1) or '!' (SD2)")
    vocab, merges = _clip_vocab_and_merges()
    pad_token = "<|endoftext|>" if pad == "eos" else "!"
    tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token)
    tok.model_max_length = model_max_length
    return tok


def tiny_text_encoder(
    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, *, max_length: int = 77, seed: int = 0
):
    """A random `CLIPTextModel` over the full CLIP vocabulary (49408), hidden ``hidden_size``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=1,
        hidden_act="quick_gelu",
    )
    with seeded(seed):
        return CLIPTextModel(config).eval()


def tiny_vae(in_channels: int = 3, latent_channels: int = 4, *, seed: int = 0):
    """A random 2×-downsampling `AutoencoderKL` (two blocks, 32/64 channels)."""
    from diffusers import AutoencoderKL

    with seeded(seed):
        return AutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=latent_channels,
            norm_num_groups=32,
            sample_size=32,
        ).eval()


def _unet_config(layout: str, cross_attention_dim: int) -> dict:
    common = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "cross_attention_dim": cross_attention_dim,
        "norm_num_groups": 8,
    }
    if layout == "diffusers-test":
        return common | {
            "block_out_channels": (16, 32),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 2,
        }
    if layout == "sd1":
        return common | {
            "block_out_channels": (16, 32, 32),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 2,
        }
    if layout == "sd2":
        return common | {
            "block_out_channels": (16, 32, 32),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": (2, 4, 4),
            "use_linear_projection": True,
        }
    raise DifflabError(f"layout={layout!r} is unknown; use one of {LAYOUTS}")


def tiny_unet_2d_condition(layout: str = "sd1", *, cross_attention_dim: int = 32, seed: int = 0):
    """A random `UNet2DConditionModel` in one of `LAYOUTS` (16×16×4 latents)."""
    from diffusers import UNet2DConditionModel

    config = _unet_config(layout, cross_attention_dim)
    with seeded(seed):
        return UNet2DConditionModel(**config).eval()


def sd_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """Stable Diffusion's noise schedule (scaled-linear 0.00085–0.012, 1000 steps) as a DDIM config."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }


def tiny_sd_pipeline(layout: str = "sd1", *, seed: int = 0):
    """A random `StableDiffusionPipeline` (32×32 images) with the real CLIP tokenizer; see module doc."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if layout not in LAYOUTS:
        raise DifflabError(f"layout={layout!r} is unknown; use one of {LAYOUTS}")
    sd2 = layout == "sd2"
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_text_encoder(seed=seed + 1),
        tokenizer=clip_tokenizer(pad="!" if sd2 else "eos"),
        unet=tiny_unet_2d_condition(layout, seed=seed + 2),
        scheduler=DDIMScheduler(**sd_scheduler_config("v_prediction" if sd2 else "epsilon")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet_2d(sample_size: int = 16, in_channels: int = 3, *, num_class_embeds: int | None = None, seed=0):
    """A random unconditional (or class-conditional) `UNet2DModel` for DDPM tests."""
    from diffusers import UNet2DModel

    with seeded(seed):
        return UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=num_class_embeds,
        ).eval()


def tiny_ddpm_pipeline(sample_size: int = 16, in_channels: int = 3, *, seed: int = 0):
    """A random `DDPMPipeline` over `tiny_unet_2d`."""
    from diffusers import DDPMPipeline, DDPMScheduler

    pipe = DDPMPipeline(unet=tiny_unet_2d(sample_size, in_channels, seed=seed), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_video_pipeline(*, seed: int = 0):
    """A random `TextToVideoSDPipeline` over a tiny `UNet3DConditionModel` (16×16×4 latents per frame)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    with seeded(seed + 2):
        unet = UNet3DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        ).eval()
    pipe = TextToVideoSDPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_text_encoder(seed=seed + 1),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**sd_scheduler_config()),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TinyNoisyClassifier(nn.Module):
    """A small time-conditioned classifier p(y | x_t, t) for classifier guidance on noisy images.

    ``forward(x [B, C, H, W], t [B] or scalar) -> logits [B, num_classes]``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 16, width: int = 32):
        super().__init__()
        self.size = size
        self.time_embed = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(8, width)
        self.norm2 = nn.GroupNorm(8, width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        temb = self.time_embed((t / 1000.0)[:, None])
        h = nn.functional.silu(self.norm1(self.conv1(x)) + temb[:, :, None, None])
        h = nn.functional.silu(self.norm2(self.conv2(h)))
        h = nn.functional.silu(self.conv3(h))
        return self.head(h.mean(dim=(2, 3)))


def tiny_noisy_classifier(in_channels: int = 1, num_classes: int = 10, size: int = 16, *, seed: int = 0):
    """A random `TinyNoisyClassifier`."""
    with seeded(seed):
        return TinyNoisyClassifier(in_channels, num_classes, size).eval()
