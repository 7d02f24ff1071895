"""Inference-time detection of content and motion memorization from CFG noise-prediction differences
(spec 2.5): per-frame magnitudes, temporal-difference magnitudes and Wen et al.'s whole-video norm, from the
first denoising step(s), with an early stop so no further step or VAE decode runs.

At step j, D = eps(x_t, c) - eps(x_t, null) [B,C,F,h,w]:
content_per_frame m_f = ||D[:,:,f]||_2; content = max_f m_f (or mean); motion mu = mean_f ||D[:,:,f+1] - D[:,:,f]||;
motion_norm = mu / mean_f m_f; wen = ||D||_2.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab_core.store import ResultStore

from .errors import MemVideoError

__all__ = ["STATISTICS", "DetectionRecord", "MemorizationDetector", "frame_magnitudes", "prompt_scores"]

STATISTICS = ("content", "motion", "motion_norm", "wen")


class _StopSampling(Exception):
    """Raised by the hook after the last tracked denoiser call; caught by the detector."""


@dataclass
class DetectionRecord:
    """One generation: ``steps`` holds per step ``content_per_frame`` [F], ``content``, ``motion``,
    ``motion_norm`` and ``wen``."""

    key: str
    prompt_id: str
    k: int
    seed: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    label: str | None = None


def frame_magnitudes(delta: Tensor, reduce: str = "max") -> dict[str, Tensor]:
    """Statistics of D [B,C,F,h,w]: ``content_per_frame`` [B,F], ``content``, ``motion``, ``motion_norm``,
    ``wen`` [B]. ``reduce`` ("max" | "mean") turns per-frame magnitudes into ``content``."""
    if delta.ndim != 5:
        raise MemVideoError(f"frame_magnitudes: D must be [B,C,F,h,w], got {tuple(delta.shape)}")
    d = delta.double()
    per_frame = d.pow(2).sum(dim=(1, 3, 4)).sqrt()  # [B,F]
    content = per_frame.max(dim=1).values if reduce == "max" else per_frame.mean(dim=1)
    if d.shape[2] > 1:
        diff = d[:, :, 1:] - d[:, :, :-1]
        motion = diff.pow(2).sum(dim=(1, 3, 4)).sqrt().mean(dim=1)
    else:
        motion = torch.zeros(d.shape[0], dtype=d.dtype)
    motion_norm = motion / per_frame.mean(dim=1).clamp_min(1e-12)
    wen = d.flatten(1).norm(dim=1)
    return {
        "content_per_frame": per_frame.float(),
        "content": content.float(),
        "motion": motion.float(),
        "motion_norm": motion_norm.float(),
        "wen": wen.float(),
    }


class MemorizationDetector:
    """Flags memorization-prone prompts from the first ``steps`` denoiser calls of a CFG video pipeline.

    Args:
        pipe: a diffusers video pipeline with CFG (TextToVideoSD, AnimateDiff, ...) whose denoiser
            (``pipe.unet`` or ``pipe.transformer``) returns [2B,C,F,h,w] ordered [uncond; cond], or a
            frame-folded [2B·F,C,h,w] (give ``num_frames``).
        steps: J, the number of denoiser calls recorded before sampling is stopped (default 1).
        num_inference_steps: the schedule (50, as in Wen et al.); only the first J steps run.
        guidance_scale: None uses the pipeline's own default; must be > 1.
        frame_axis: the frame axis of a 5-D denoiser output (2 for diffusers video UNets).
        reduce: "max" (one copied frame suffices) or "mean" over per-frame magnitudes.
        num_frames: frames per video, for frame-folded outputs.
    """

    def __init__(
        self,
        pipe,
        *,
        steps: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        frame_axis: int = 2,
        reduce: str = "max",
        num_frames: int | None = None,
    ) -> None:
        self.denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if not isinstance(self.denoiser, torch.nn.Module):
            raise MemVideoError(f"detect: {type(pipe).__name__} has no unet/transformer module to hook")
        params = inspect.signature(pipe.__call__).parameters
        if "guidance_scale" not in params:
            raise MemVideoError(
                f"detect: {type(pipe).__name__} samples without classifier-free guidance, so there is no "
                "conditional/unconditional difference to measure; use `mem-video audit` for unconditional models"
            )
        if guidance_scale is None:
            default = params["guidance_scale"].default
            guidance_scale = float(default) if isinstance(default, (int, float)) else 7.5
        if guidance_scale <= 1:
            raise MemVideoError(
                f"detect: guidance_scale={guidance_scale} disables CFG; use a value > 1 (e.g. 7.5)"
            )
        if getattr(pipe, "_free_init_num_iters", None):
            raise MemVideoError(
                "detect: FreeInit is enabled on this pipeline; call pipe.disable_free_init() first"
            )
        if steps < 1 or steps > num_inference_steps:
            raise MemVideoError(f"detect: steps must be in 1..{num_inference_steps}, got {steps}")
        if frame_axis not in (1, 2, 3, 4):
            raise MemVideoError(
                f"detect: frame_axis={frame_axis} is out of range for a 5-D [2B,C,F,h,w] output (use 1..4)"
            )
        if reduce not in ("max", "mean"):
            raise MemVideoError(f"detect: reduce must be 'max' or 'mean', got {reduce!r}")
        self.pipe = pipe
        self.steps = int(steps)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.frame_axis = frame_axis
        self.reduce = reduce
        self.num_frames = num_frames
        self.calls = 0

    def config(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "frame_axis": self.frame_axis,
            "reduce": self.reduce,
        }

    def _delta(self, pred: Tensor, batch: int, frames: int, where: str) -> Tensor:
        if pred.ndim == 4:
            f = self.num_frames or frames
            if pred.shape[0] % f:
                raise MemVideoError(
                    f"detect: frame-folded batch {pred.shape[0]} is not a multiple of {f} frames"
                )
            pred = pred.reshape(pred.shape[0] // f, f, *pred.shape[1:]).transpose(1, 2)
        elif pred.ndim == 5:
            pred = pred.movedim(self.frame_axis, 2)
        else:
            raise MemVideoError(f"detect: denoiser output has shape {tuple(pred.shape)}; expected 4-D or 5-D")
        if pred.shape[0] != 2 * batch:
            raise MemVideoError(
                f"detect: the denoiser batch is {pred.shape[0]}, not twice the sample batch {batch}; the pipeline "
                "must run CFG as one [uncond; cond] batch"
            )
        uncond, cond = pred.detach().float().chunk(2)
        delta = cond - uncond
        if not torch.isfinite(delta).all():
            raise MemVideoError(f"detect: NaN/inf noise prediction at {where}")
        return delta

    def _run(
        self, prompt: str, batch: int, frames: int, seeds: list[int], where: str, pipe_kwargs: dict[str, Any]
    ) -> list[dict[str, Tensor]]:
        from difflab_core.device import generator

        stats: list[dict[str, Tensor]] = []

        def hook(module, args, kwargs, output):
            pred = (
                output.sample
                if hasattr(output, "sample")
                else (output[0] if isinstance(output, tuple) else output)
            )
            stats.append(
                frame_magnitudes(self._delta(pred, batch, frames, f"{where}, step {len(stats)}"), self.reduce)
            )
            self.calls += 1
            if len(stats) >= self.steps:
                raise _StopSampling

        device = getattr(self.pipe, "device", torch.device("cpu"))
        gens = [generator(s, device if device.type != "mps" else "cpu") for s in seeds]
        handle = self.denoiser.register_forward_hook(hook, with_kwargs=True)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecated.*")
                self.pipe(
                    prompt=[prompt] * batch,
                    num_frames=frames,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=gens,
                    output_type="latent",
                    **pipe_kwargs,
                )
        except _StopSampling:
            pass
        finally:
            handle.remove()
        if len(stats) < self.steps:
            raise MemVideoError(
                f"detect: the pipeline made {len(stats)} denoiser calls, fewer than steps={self.steps}"
            )
        return stats

    def score(
        self,
        prompts: Sequence[str | dict[str, Any]],
        *,
        num_videos_per_prompt: int = 4,
        seed: int = 0,
        num_frames: int = 16,
        out: str | os.PathLike[str] | None = None,
        pipe_kwargs: dict[str, Any] | None = None,
    ) -> list[DetectionRecord]:
        """Score each prompt over ``num_videos_per_prompt`` generations (seeds ``seed + index·1000 + k``).

        With ``out``, records go to ``out/detect.jsonl`` and a rerun skips finished (prompt_id, k).
        """
        from .audit import _prompt_rows

        rows = _prompt_rows(prompts)
        store = ResultStore(Path(out), name="detect", key="key") if out is not None else None
        records: list[DetectionRecord] = []
        for n, row in enumerate(rows):
            pid = row["prompt_id"]
            keys = [f"{pid}_{k}" for k in range(num_videos_per_prompt)]
            if store is not None and all(store.done(k) for k in keys):
                continue
            seeds = [seed + n * 1000 + k for k in range(num_videos_per_prompt)]
            stats = self._run(
                row["prompt"],
                num_videos_per_prompt,
                num_frames,
                seeds,
                f"prompt {pid!r}",
                dict(pipe_kwargs or {}),
            )
            for k in range(num_videos_per_prompt):
                steps = [
                    {
                        "step": j,
                        **{name: (v[k].tolist() if v.ndim > 1 else float(v[k])) for name, v in st.items()},
                    }
                    for j, st in enumerate(stats)
                ]
                rec = DetectionRecord(keys[k], pid, k, seeds[k], steps, row.get("label"))
                if store is not None and not store.done(rec.key):
                    store.append(asdict(rec))
                records.append(rec)
        if store is not None:
            return [DetectionRecord(**r) for r in store.records()]
        return records


def prompt_scores(
    records: Sequence[DetectionRecord | dict[str, Any]], statistic: str = "content", steps: int = 1
) -> dict[str, float]:
    """Per-prompt score: the mean of ``statistic`` over steps j < ``steps`` and over generations."""
    if statistic not in STATISTICS:
        raise MemVideoError(f"prompt_scores: statistic must be one of {STATISTICS}, got {statistic!r}")
    acc: dict[str, list[float]] = {}
    for r in records:
        r = asdict(r) if isinstance(r, DetectionRecord) else r
        vals = [s[statistic] for s in r["steps"] if s["step"] < steps]
        if not vals:
            raise MemVideoError(f"prompt_scores: record {r['key']!r} has no step below {steps}")
        acc.setdefault(r["prompt_id"], []).extend(vals)
    return {pid: float(sum(v) / len(v)) for pid, v in acc.items()}
