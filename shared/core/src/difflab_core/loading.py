"""Offline loading of diffusers pipelines/models and transformers models from local paths.

Nothing here reaches a hub: every call passes ``local_files_only=True`` and checks the path first, so a
missing or wrong folder raises one `DifflabError` naming the path and what is missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .device import resolve_device, resolve_dtype
from .errors import DifflabError

__all__ = ["file_sha256", "load_model", "load_pipeline", "load_transformers_model", "read_json"]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks): ties weights to their cards and reports."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise DifflabError(f"{p}: file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DifflabError(f"{p}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DifflabError(f"{p}: expected a JSON object, found {type(data).__name__}")
    return data


def _check_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DifflabError(f"{p}: {what} not found (give a local folder; nothing is downloaded)")
    return p


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def load_pipeline(
    path: str | Path,
    *,
    pipeline_class: type | None = None,
    unet: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    **kwargs: Any,
):
    """Load a diffusers pipeline from a local folder (``model_index.json``) or a single checkpoint file.

    ``unet`` optionally replaces the pipeline's UNet with a fine-tuned one from its own folder.
    """
    import diffusers

    p = _check_dir(path, "pipeline folder")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if p.is_file():
        if p.suffix not in {".safetensors", ".ckpt"}:
            raise DifflabError(f"{p}: a single-file checkpoint must be .safetensors or .ckpt")
        cls = pipeline_class or diffusers.StableDiffusionPipeline
        try:
            pipe = cls.from_single_file(str(p), torch_dtype=torch_dtype, local_files_only=True, **kwargs)
        except Exception as err:
            raise DifflabError(f"{p}: could not load as a single-file {cls.__name__}: {err}") from err
    else:
        index = p / "model_index.json"
        if not index.is_file():
            raise DifflabError(
                f"{p}: not a diffusers pipeline folder (model_index.json is missing); "
                "save one with pipe.save_pretrained(folder)"
            )
        spec = read_json(index)
        missing = [
            name
            for name, value in spec.items()
            if not name.startswith("_")
            and isinstance(value, list)
            and value[0] is not None
            and not (p / name).is_dir()
        ]
        if missing:
            raise DifflabError(f"{p}: model_index.json names components with no folder: {', '.join(missing)}")
        cls = pipeline_class or diffusers.DiffusionPipeline
        try:
            pipe = cls.from_pretrained(str(p), torch_dtype=torch_dtype, local_files_only=True, **kwargs)
        except Exception as err:
            raise DifflabError(f"{p}: could not load the pipeline: {err}") from err
    if unet is not None:
        pipe.unet = load_model(unet, diffusers.UNet2DConditionModel, dtype=torch_dtype)
    return pipe.to(dev)


def load_model(path: str | Path, model_class: type, *, dtype: str | torch.dtype = "fp32", subfolder=None):
    """Load a diffusers ``ModelMixin`` (e.g. ``UNet2DConditionModel``) from a local folder."""
    p = _check_dir(path, f"{model_class.__name__} folder")
    folder = p / subfolder if subfolder else p
    if not (folder / "config.json").is_file():
        raise DifflabError(f"{folder}: config.json is missing; not a {model_class.__name__} folder")
    if not _has_weights(folder):
        raise DifflabError(f"{folder}: no weights (*.safetensors or *.bin) in the folder")
    try:
        return model_class.from_pretrained(
            str(p), subfolder=subfolder, torch_dtype=resolve_dtype(dtype, "cpu"), local_files_only=True
        )
    except Exception as err:
        raise DifflabError(f"{folder}: could not load {model_class.__name__}: {err}") from err


def load_transformers_model(path: str | Path, model_class: type | None = None, **kwargs: Any):
    """Load a transformers model from a local folder; ``model_class`` defaults to ``AutoModel``."""
    p = _check_dir(path, "transformers model folder")
    if not (p / "config.json").is_file():
        raise DifflabError(f"{p}: config.json is missing; not a transformers model folder")
    if not _has_weights(p):
        raise DifflabError(f"{p}: no weights (*.safetensors or *.bin) in the folder")
    if model_class is None:
        from transformers import AutoModel as model_class
    try:
        return model_class.from_pretrained(str(p), local_files_only=True, **kwargs)
    except Exception as err:
        raise DifflabError(f"{p}: could not load {model_class.__name__}: {err}") from err
