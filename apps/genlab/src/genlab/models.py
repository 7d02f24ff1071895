"""Loading a user's local diffusers model, optionally with tan-transfer adapters attached."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model(
    model_dir: str | Path, adapter_dir: str | Path | None = None, *, device: str = "auto"
) -> tuple[Any, Any]:
    """``(bundle, adapted)``: tan-transfer's `DPMBundle` for ``model_dir`` and, with ``adapter_dir``, the
    `AdaptedUNet` (strictly loaded, base-model hash checked; else ``None``).

    Adapters attach to ``bundle.unet`` in place, so pipelines and samplers that call ``bundle.unet`` run the adapted
    model.
    """
    from tan_transfer import load_adapters, load_dpm

    bundle = load_dpm(model_dir, device=device)
    adapted = load_adapters(bundle.unet, adapter_dir) if adapter_dir is not None else None
    return bundle, adapted
