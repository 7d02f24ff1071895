"""Import official DiffAct ``release.model`` state dicts (§4.3) into a safetensors model folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import DiffActConfig
from .errors import DiffActError
from .model import DiffActModel

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
"""The 12 diffusion-schedule buffers the official model registers; we recompute them in float64."""


def convert_state_dict(
    state: dict[str, torch.Tensor], cfg: DiffActConfig, source: str = "state dict"
) -> DiffActModel:
    """Build a model from ``cfg`` and load ``state`` strictly, after dropping the schedule buffers."""
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in SCHEDULE_BUFFERS}
    model = DiffActModel.from_diffact_config(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DiffActError(f"{source} does not match the {cfg.data.dataset} configuration: {err}") from err
    return model


def load_official_checkpoint(path: str | os.PathLike[str], cfg: DiffActConfig) -> DiffActModel:
    """Read an official checkpoint with ``torch.load(weights_only=True)`` and load it strictly."""
    path = Path(path)
    if not path.is_file():
        raise DiffActError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DiffActError(f"{path} is not a loadable weights-only PyTorch checkpoint: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffActError(f"{path} does not hold a state dict of tensors")
    return convert_state_dict(state, cfg, str(path))
