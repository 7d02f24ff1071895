"""The oracle detection testbed (spec section 5): an ideal empirical denoiser over per-prompt sets of sprite
videos, called like a diffusers video UNet so `MemorizationDetector` runs its real code path unchanged.

eps(x_t, t, set) = (x_t - sqrt(ab_t)·mu) / sqrt(1 - ab_t), mu = the set's videos weighted by
softmax(-|x_t - sqrt(ab_t)·x0|² / (2(1 - ab_t))); the null prompt uses the whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .testbed import SpriteMemTestbed, _Scene

__all__ = ["OraclePipeline", "OracleVideoDenoiser", "oracle_prompts"]


@dataclass
class _DenoiserOutput:
    sample: Tensor


class OracleVideoDenoiser(nn.Module):
    """Ideal denoiser over ``corpus`` [N,3,F,H,W] in [-1,1]; ``sets[p]`` lists the corpus rows of prompt p.

    ``forward(sample [B,3,F,H,W], timestep, encoder_hidden_states [B,1,1])``: the embedding holds the prompt
    index (-1 = null prompt). Returns an object with ``.sample`` like a diffusers UNet.
    """

    def __init__(self, corpus: Tensor, sets: list[list[int]], alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.register_buffer("corpus", corpus.float())
        flat = corpus.flatten(1).double()
        self.register_buffer("_flat", flat)
        self.register_buffer("_sq", flat.pow(2).sum(dim=1))
        self.sets = sets
        self.register_buffer("alphas_cumprod", alphas_cumprod.double())

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, **_: Any) -> _DenoiserOutput:
        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        ab = float(self.alphas_cumprod[t])
        x = sample.double().flatten(1)  # [B,P]
        # |x - sqrt(ab)·x0|² = |x|² - 2 sqrt(ab) <x, x0> + ab |x0|², for every corpus video at once
        d2 = x.pow(2).sum(dim=1, keepdim=True) - 2 * ab**0.5 * (x @ self._flat.T) + ab * self._sq[None]
        logits = -d2 / (2 * (1 - ab))
        prompts = encoder_hidden_states.reshape(sample.shape[0], -1)[:, 0].round().long().tolist()
        mus = []
        for row, p in zip(logits, prompts, strict=True):
            rows = slice(None) if p < 0 else self.sets[p]
            w = torch.softmax(row[rows], dim=0)
            mus.append(w @ self._flat[rows])
        mu = torch.stack(mus)
        eps = (x - ab**0.5 * mu) / (1 - ab) ** 0.5
        return _DenoiserOutput(eps.reshape(sample.shape).float())


class OraclePipeline:
    """A minimal CFG video pipeline over `OracleVideoDenoiser` (pixel space, DDIM), with the diffusers call
    signature the detector uses: ``pipe(prompt=[...], num_frames, num_inference_steps, guidance_scale,
    generator, output_type)``."""

    def __init__(self, denoiser: OracleVideoDenoiser, scheduler, prompts: list[str]) -> None:
        self.unet = denoiser
        self.scheduler = scheduler
        self.prompt_index = {p: n for n, p in enumerate(prompts)}
        self.device = torch.device("cpu")

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        num_frames: int = 8,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        generator=None,
        output_type: str = "np",
        **_: Any,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        b = len(prompts)
        shape = tuple(self.unet.corpus.shape[1:])
        gens = generator if isinstance(generator, list) else [generator] * b
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens])
        cond = torch.tensor([float(self.prompt_index[p]) for p in prompts]).reshape(b, 1, 1)
        emb = torch.cat([torch.full_like(cond, -1.0), cond])
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            eps = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=emb).sample
            uncond, c = eps.chunk(2)
            latents = self.scheduler.step(uncond + guidance_scale * (c - uncond), t, latents).prev_sample
        video = ((latents + 1) / 2).clamp(0, 1)
        if output_type == "np":
            video = video.permute(0, 2, 3, 4, 1).numpy()
        return _Frames(video)


@dataclass
class _Frames:
    frames: Any


def oracle_prompts(
    seed: int = 0, per_class: int = 10, generic: int = 40, size: int = 32, frames: int = 8
) -> tuple[OraclePipeline, list[dict[str, Any]]]:
    """The oracle testbed: a pipeline and its prompt records (``prompt_id``, ``prompt``, ``label`` in
    none/content/motion/both). Generic prompts use 24 random pool videos each; content prompts 6 videos
    sharing background and sprite; motion prompts 6 videos sharing a trajectory; full-copy prompts 1 video."""
    from diffusers import DDIMScheduler

    from difflab_core.tiny import sd_scheduler_config

    tb = SpriteMemTestbed(seed=seed, size=size, frames=frames, sprites=1)
    rng = np.random.default_rng(seed + 7)
    videos: list[Tensor] = []

    def add(scene: _Scene) -> int:
        videos.append(tb.render(scene))
        return len(videos) - 1

    pool = [add(tb._moving_scene(rng, novel=bool(rng.integers(0, 2)))[0]) for _ in range(60)]
    records: list[dict[str, Any]] = []
    sets: list[list[int]] = []

    def prompt(label: str, rows: list[int]) -> None:
        n = len(records)
        records.append(
            {"prompt_id": f"{label}_{n:03d}", "prompt": f"oracle prompt {n} ({label})", "label": label}
        )
        sets.append(rows)

    for _ in range(generic):
        prompt("none", [pool[i] for i in rng.choice(len(pool), size=24, replace=False)])
    for _ in range(per_class):
        base, _family = tb._moving_scene(rng, novel=False)
        rows = [add(_Scene(base.bg, base.sprites, [tb._trajectory(rng)], base.view)) for _ in range(6)]
        prompt("content", rows)
    for _ in range(per_class):
        path = tb._trajectory(rng)
        rows = []
        for _ in range(6):
            scene, _ = tb._moving_scene(rng, novel=False)
            scene.paths = [path.clone()]
            rows.append(add(scene))
        prompt("motion", rows)
    for _ in range(per_class):
        prompt("both", [add(tb._moving_scene(rng, novel=False)[0])])
    corpus = torch.stack(videos).permute(0, 2, 1, 3, 4) * 2 - 1  # [N,3,F,H,W]
    scheduler = DDIMScheduler(**sd_scheduler_config())
    denoiser = OracleVideoDenoiser(corpus, sets, scheduler.alphas_cumprod)
    return OraclePipeline(denoiser, scheduler, [r["prompt"] for r in records]), records
