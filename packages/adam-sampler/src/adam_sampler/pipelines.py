"""Pipelines with AMS: `make_pipeline`, and `save_pipeline`/`load_pipeline` (diffusers cannot reload a pipeline
saved with a non-diffusers scheduler class, so the folder names `DDIMScheduler` and keeps the AMS config)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import AdamSamplerError
from .scheduling_ams import AdaptiveMomentumScheduler

__all__ = ["check_model_dir", "load_pipeline", "load_unconditional", "make_pipeline", "save_pipeline"]


def check_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as a local diffusers folder (with ``model_index.json``), or a clear error."""
    path = Path(model_dir)
    if path.suffix == ".ckpt" or (path.is_file() and path.suffix in (".pt", ".pth", ".ckpt")):
        raise AdamSamplerError(
            f"model={path}: a bare checkpoint, not a diffusers folder; convert it first with diffusers' "
            "scripts/convert_ddpm_original_checkpoint_to_diffusers.py"
        )
    if not (path / "model_index.json").is_file():
        raise AdamSamplerError(f"model={path}: no model_index.json; pass a local diffusers pipeline folder")
    return path


def make_pipeline(model_dir: str | Path, **ams_kwargs):
    """Load a local diffusers pipeline folder and swap its scheduler for AMS (``ams_kwargs`` override the config).

    `DDIMPipeline` is refused: it silently replaces any scheduler by a `DDIMScheduler`.
    """
    from diffusers import DiffusionPipeline

    path = check_model_dir(model_dir)
    index = json.loads((path / "model_index.json").read_text())
    if index.get("_class_name") == "DDIMPipeline":
        raise AdamSamplerError(
            f"model={path}: DDIMPipeline replaces any scheduler with DDIMScheduler, so AMS would be ignored; "
            "re-save it as a DDPMPipeline (same unet) or use adam_sampler.compare.sample"
        )
    pipe = DiffusionPipeline.from_pretrained(path)
    config = dict(pipe.scheduler.config)
    if (path / "scheduler" / "scheduler_config.json").is_file():
        saved = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        config.update({k: v for k, v in saved.items() if not k.startswith("_")})
    pipe.scheduler = AdaptiveMomentumScheduler.from_config({**config, **ams_kwargs})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, directory: str | Path) -> Path:
    """Save ``pipe`` (with an AMS scheduler) so that plain diffusers loads it as DDIM and `load_pipeline` as AMS."""
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, AdaptiveMomentumScheduler):
        raise AdamSamplerError(f"save_pipeline: pipe.scheduler is {type(pipe.scheduler).__name__}, not AMS")
    directory = Path(directory)
    ams = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(ams.config)
    try:
        pipe.save_pretrained(directory)
    finally:
        pipe.scheduler = ams
    ams.save_pretrained(directory / "scheduler")
    return directory


def load_pipeline(directory: str | Path, **overrides):
    """Load a folder written by `save_pipeline` with its AMS scheduler (``overrides`` change its config)."""
    return make_pipeline(directory, **overrides)


def load_unconditional(model_dir: str | Path, device: str = "auto"):
    """(``UNet2DModel``, scheduler config dict) of a local unconditional pipeline folder (e.g. `DDPMPipeline`).

    Text-conditioned folders (with a ``text_encoder``) are refused: `compare_samplers` samples unconditionally.
    """
    from diffusers import UNet2DModel

    from difflab_core.device import resolve_device
    from difflab_core.loading import read_json

    path = check_model_dir(model_dir)
    index = read_json(path / "model_index.json")
    if "text_encoder" in index or "unet" not in index or "scheduler" not in index:
        raise AdamSamplerError(
            f"model={path}: compare needs an unconditional pipeline folder with unet/ and scheduler/ "
            f"(e.g. a DDPMPipeline); this one is a {index.get('_class_name', 'unknown pipeline')}"
        )
    config = read_json(path / "scheduler" / "scheduler_config.json")
    unet = UNet2DModel.from_pretrained(path / "unet").to(resolve_device(device)).eval().requires_grad_(False)
    return unet, {k: v for k, v in config.items() if not k.startswith("_")}
