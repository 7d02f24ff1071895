"""Devices, dtypes, seeds and per-call generators.

`resolve_device("auto")` picks CUDA when present, else CPU; `resolve_dtype("auto", device)` gives fp16 on
CUDA and fp32 on CPU (diffusers' philosophy: float32 on CPU by default). GPU facts come from torch, and
from cuda-python when the optional ``cuda`` extra is installed (imported lazily).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DifflabError

__all__ = [
    "GpuInfo",
    "generator",
    "generators",
    "gpu_info",
    "process_state",
    "resolve_device",
    "resolve_dtype",
    "seed_everything",
]

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a `torch.device`, checking it exists."""
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = "auto" if device is None else str(device).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as err:
        raise DifflabError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda:N'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DifflabError(f"device={device!r}: CUDA is not available here; use 'auto' or 'cpu'")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DifflabError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DifflabError(f"device={device!r}: MPS is not available here")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype | None = "auto", device: torch.device | str = "auto"
) -> torch.dtype:
    """ "auto" gives fp16 on CUDA and fp32 elsewhere; names like "fp16"/"bf16" map to torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    spec = "auto" if dtype is None else str(dtype).lower()
    if spec == "auto":
        return torch.float16 if resolve_device(device).type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise DifflabError(f"dtype={dtype!r} is unknown; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[spec]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Prefer per-call generators for sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh `torch.Generator` on ``device`` seeded with ``seed``."""
    dev = resolve_device(device)
    return torch.Generator(device=dev).manual_seed(int(seed))


def generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per seed: per-image randomness that does not depend on batching."""
    return [generator(s, device) for s in seeds]


@dataclass(frozen=True)
class GpuInfo:
    """Facts about one CUDA device. Memory in bytes; ``driver_version`` only via cuda-python."""

    index: int
    name: str
    total_memory: int
    capability: tuple[int, int]
    driver_version: int | None = None


def _cuda_driver_version() -> int | None:
    """The CUDA driver version via cuda-python, or None when it is missing or has no driver."""
    try:
        from cuda.bindings import driver  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cuda as driver  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    try:
        err, version = driver.cuDriverGetVersion()
    except RuntimeError:
        return None
    return int(version) if int(err) == 0 else None


def gpu_info() -> list[GpuInfo]:
    """One `GpuInfo` per visible CUDA device; empty on a machine without CUDA."""
    if not torch.cuda.is_available():
        return []
    driver = _cuda_driver_version()
    infos = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        infos.append(GpuInfo(i, props.name, int(props.total_memory), (props.major, props.minor), driver))
    return infos


def process_state():
    """Accelerate's ``PartialState`` for sharded jobs (index builds, audits, generation), CPU ranks included.

    On CPU (no CUDA, or ``ACCELERATE_USE_CPU=1``) it asks for CPU mode, which joins a gloo process group; a bare
    ``PartialState()`` leaves CPU ranks un-joined, so each would do all the work as if alone. Launch CPU ranks
    with ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`` (``--cpu`` alone starts
    several processes only through MPI)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
