"""Sampler comparison: a plain sampling loop (`sample`) and a resumable quality harness (`compare_samplers`).

`sample` is `DDPMPipeline.__call__` without the PIL conversion: x_T ~ N(0, I), then ``scheduler.step`` over
``scheduler.timesteps``, in batches so memory stays bounded.

`compare_samplers` samples every (sampler, NFE, seed) cell, embeds the samples with a feature function and
scores them by the Fréchet distance to reference statistics (μ, Σ). With ``out_dir`` each finished cell is
appended to ``{out_dir}/cells.jsonl`` (`difflab_core.store.ResultStore`) and a rerun skips it, so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import AdamSamplerError

__all__ = [
    "DEFAULT_SAMPLERS",
    "SchedulerSpec",
    "compare_samplers",
    "feature_stats",
    "frechet_from_stats",
    "sample",
]

SHORT_KINDS = ("ams", "ddim", "ddpm", "dpmsolver++")


@dataclass(frozen=True)
class SchedulerSpec:
    """One sampler of a comparison, built with ``from_config`` over the model's scheduler config.

    ``kind``: ``"ams"`` (`AdaptiveMomentumScheduler`), ``"ddim"``, ``"ddpm"``, ``"dpmsolver++"``
    (`DPMSolverMultistepScheduler`, 2nd-order DPM-Solver++), or any diffusers scheduler class name.
    ``options`` override config keys; ``eta`` is passed to ``step`` (None: not passed, i.e. the scheduler's own).
    """

    kind: str = "ams"
    options: Mapping = field(default_factory=dict)
    eta: float | None = None

    def build(self, base_config: Mapping):
        """A fresh scheduler for ``base_config`` (a scheduler config dict)."""
        import diffusers

        from .scheduling_ams import AdaptiveMomentumScheduler

        config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
        if self.kind == "ams":
            return AdaptiveMomentumScheduler.from_config(config, **self.options)
        if self.kind == "dpmsolver++":
            preset = {"algorithm_type": "dpmsolver++", "solver_order": 2}
            return diffusers.DPMSolverMultistepScheduler.from_config(config, **{**preset, **self.options})
        names = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}
        cls = getattr(diffusers, names.get(self.kind, self.kind), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise AdamSamplerError(
                f"SchedulerSpec: kind={self.kind!r} is neither one of {SHORT_KINDS} nor a diffusers scheduler class"
            )
        return cls.from_config(config, **self.options)

    def describe(self) -> dict:
        """A JSON-able description (used to key stored cells)."""
        return {"kind": self.kind, "options": dict(self.options), "eta": self.eta}


DEFAULT_SAMPLERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("ddim", eta=0.0),
    "ams": SchedulerSpec("ams", eta=0.0),
    "ams_adam": SchedulerSpec("ams", {"method": "adam", "second_moment_norm": "image"}, eta=0.0),
    "dpmsolverpp": SchedulerSpec("dpmsolver++"),
}
"""What ``adam-sampler compare`` runs by default: DDIM, AMS momentum, AMS Adam (image norm), DPM-Solver++."""


@torch.no_grad()
def sample(
    unet,
    scheduler,
    n: int,
    num_inference_steps: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    class_labels: torch.Tensor | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """``n`` samples ``[n, C, H, W]`` in the model's space ([−1, 1] for pixel models), float32 on the CPU.

    ``scheduler`` is reset with ``set_timesteps`` before every batch; the initial noise is drawn on the CPU
    from ``generator`` (so results do not depend on the device). ``eta`` is passed to ``step`` when given.
    """
    if n < 1 or num_inference_steps < 1 or batch_size < 1:
        raise AdamSamplerError(
            f"sample: n={n}, num_inference_steps={num_inference_steps}, batch_size={batch_size} must be >= 1"
        )
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    hw = (size, size) if isinstance(size, int) else size
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    noise = torch.randn(n, cfg.in_channels, *hw, generator=generator)
    step_kwargs = {} if eta is None else {"eta": eta}
    outs = []
    for start in range(0, n, batch_size):
        x = noise[start : start + batch_size].to(device, dtype)
        labels = None if class_labels is None else class_labels[start : start + batch_size].to(device)
        scheduler.set_timesteps(num_inference_steps)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            eps = unet(model_input, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        outs.append(x.float().cpu())
    return torch.cat(outs)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ [D], Σ [D, D]) of features ``[N, D]`` in float64, with the unbiased covariance (as FID)."""
    feats = np.asarray(features.double().cpu().numpy() if isinstance(features, torch.Tensor) else features)
    if feats.ndim != 2 or len(feats) < 2:
        raise AdamSamplerError(f"features must be [N, D] with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½): the Fréchet distance of two Gaussians (FID's formula)."""
    from scipy import linalg

    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise AdamSamplerError(
            f"reference statistics have dimension {mu_b.shape[0]}, the features {mu_a.shape[0]}; "
            "use statistics computed with the same feature extractor"
        )
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = 1e-6 * np.eye(len(sigma_a))
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.real(np.trace(covmean)))


def _mean_std(values: Sequence[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "values": list(values),
    }


def compare_samplers(
    unet,
    base_config: Mapping,
    samplers: Mapping[str, SchedulerSpec],
    nfes: Sequence[int] = (10, 20, 50),
    *,
    n: int = 899,
    seeds: Sequence[int] = (0, 1, 2),
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    real_stats: tuple[np.ndarray, np.ndarray],
    reference: str | None = "ddim",
    batch_size: int = 256,
    out_dir: str | Path | None = None,
    rank: int | None = None,
    run_tag: str = "",
    on_cell: Callable[[dict], None] | None = None,
) -> dict:
    """Fréchet distance of every (sampler, NFE, seed) cell to ``real_stats``; ratios against ``reference``.

    ``unet``: an unconditional `UNet2DModel`; ``base_config``: its scheduler config, from which each
    `SchedulerSpec` is built. Cell (name, nfe, seed) samples ``n`` images from x_T drawn with
    ``torch.Generator().manual_seed(seed)``; ``feature_fn`` maps images ``[N, C, H, W]`` in [0, 1] to ``[N, D]``;
    ``real_stats`` = (μ [D], Σ [D, D]) of the reference set. ``out_dir`` makes it resumable (cells in
    ``cells.jsonl``; ``config.json`` refuses a resume with another n, batch size, base config or ``run_tag``,
    which should name the model and the features); ``rank`` makes this process write its own shard, so several
    processes can share one ``out_dir`` (each taking some samplers; a run with ``rank=None`` reads every shard).
    ``on_cell(record)`` is called after each computed cell.

    Returns ``{"fid": {name: {str(nfe): {mean, std, values}}}, "ratios": {name: {str(nfe): mean/ref mean}},
    "cells": [records], "resumed": number of cells read from the store}``.
    """
    if not samplers:
        raise AdamSamplerError("compare_samplers: samplers is empty; pass at least one SchedulerSpec")
    if reference is not None and reference not in samplers:
        raise AdamSamplerError(f"compare_samplers: reference={reference!r} is not among {sorted(samplers)}")
    if not nfes or any(int(v) < 1 for v in nfes) or not seeds:
        raise AdamSamplerError(
            f"compare_samplers: nfes={list(nfes)} and seeds={list(seeds)} must be non-empty, >= 1"
        )
    mu_ref, sigma_ref = (np.asarray(real_stats[0], np.float64), np.asarray(real_stats[1], np.float64))
    store = None
    if out_dir is not None:
        from difflab_core.store import ResultStore, fingerprint, write_run_config

        config = {"n": n, "batch_size": batch_size, "base_config": dict(base_config), "run_tag": run_tag}
        write_run_config(out_dir, {k: v for k, v in config.items() if not str(k).startswith("_")})
        store = ResultStore(out_dir, name="cells", rank=rank)
    records, resumed = [], 0
    for name, spec in samplers.items():
        spec_id = fingerprint(spec.describe()) if store is not None else ""
        for nfe in nfes:
            for seed in seeds:
                key = f"{name}|{spec_id}|{int(nfe)}|{int(seed)}"
                if store is not None and store.done(key):
                    records.append(next(r for r in store.records() if r["key"] == key))
                    resumed += 1
                    continue
                start = time.perf_counter()
                generator = torch.Generator().manual_seed(int(seed))
                images = sample(
                    unet,
                    spec.build(base_config),
                    n,
                    int(nfe),
                    generator=generator,
                    batch_size=batch_size,
                    eta=spec.eta,
                )
                feats = feature_fn(((images + 1) / 2).clamp(0, 1))
                fd = frechet_from_stats(*feature_stats(feats), mu_ref, sigma_ref)
                record = {
                    "key": key,
                    "sampler": name,
                    "spec": spec.describe(),
                    "nfe": int(nfe),
                    "seed": int(seed),
                    "fd": fd,
                    "seconds": time.perf_counter() - start,
                }
                if store is not None:
                    store.append(record)
                records.append(record)
                if on_cell is not None:
                    on_cell(record)
    fid = {
        name: {
            str(int(nfe)): _mean_std(
                [r["fd"] for r in records if r["sampler"] == name and r["nfe"] == int(nfe)]
            )
            for nfe in nfes
        }
        for name in samplers
    }
    ratios = {}
    if reference is not None:
        ratios = {
            name: {k: cell["mean"] / fid[reference][k]["mean"] for k, cell in cells.items()}
            for name, cells in fid.items()
        }
    return {"fid": fid, "ratios": ratios, "cells": records, "resumed": resumed}
