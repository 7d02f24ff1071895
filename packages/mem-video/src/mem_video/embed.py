"""Frame embedders for content memorization: the offline `TinyImageEmbedder` and TorchScript models (SSCD).

Every embedder maps frames [N,3,H,W] in [0,1] to L2-normalised descriptors [N,D], so a dot product is a
cosine similarity. Each has a ``name``, ``dim`` and ``config()`` that is recorded with every result.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab_core.device import resolve_device

from .errors import MemVideoError

__all__ = [
    "SSCD_TAU",
    "SSCD_TAU_STRICT",
    "TINY_TAU",
    "FrameEmbedder",
    "TinyImageEmbedder",
    "TorchScriptEmbedder",
    "check_tau",
    "create_embedder",
    "default_tau_c",
    "embedder_spec",
    "load_sscd",
    "preprocess_dcr",
    "preprocess_sscd",
]

SSCD_TAU = 0.5
"""SSCD replication threshold of the DCR / Wen / AMG lineage (``somepago/DCR``)."""
SSCD_TAU_STRICT = 0.7
"""The strict SSCD threshold, always reported beside ``SSCD_TAU``."""
TINY_TAU = 0.85
"""Threshold of the tiny embedder, set on the sprite testbed (spec section 2.1, measured)."""

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FrameEmbedder(Protocol):
    """Maps frames [N,3,H,W] in [0,1] to L2-normalised embeddings [N,D]."""

    name: str

    @property
    def dim(self) -> int: ...

    def config(self) -> dict[str, Any]: ...

    def embed(self, frames: Tensor) -> Tensor: ...


def _check_frames(frames: Tensor, who: str) -> None:
    if not isinstance(frames, Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise MemVideoError(f"{who}.embed: frames must be [N,3,H,W], got {shape}")
    if not torch.isfinite(frames).all():
        raise MemVideoError(f"{who}.embed: frames contain NaN or infinite values")


class TinyImageEmbedder:
    """Normalised cross-correlation of thumbnails: each frame is area-resized to ``size``×``size``, flattened
    (3·size² values), mean-subtracted and L2-normalised. Offline and deterministic; not a copy detector for
    real data."""

    name = "tiny"

    def __init__(self, size: int = 16) -> None:
        if size < 2:
            raise MemVideoError(f"TinyImageEmbedder: size must be >= 2, got {size}")
        self.size = int(size)

    @property
    def dim(self) -> int:
        return 3 * self.size * self.size

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}

    def embed(self, frames: Tensor) -> Tensor:
        """[N,3,H,W] in [0,1] -> [N, 3·size²] float32, unit norm (a constant frame maps to 0)."""
        _check_frames(frames, "TinyImageEmbedder")
        x = F.interpolate(frames.float(), size=(self.size, self.size), mode="area").flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        return F.normalize(x, dim=1)


def preprocess_dcr(frames: Tensor) -> Tensor:
    """DCR/Wen convention: shorter side 256 (bilinear), centre crop 224, mean/std 0.5 -> [N,3,224,224]."""
    x = _resize_short(frames, 256)
    h, w = x.shape[-2:]
    top, left = round((h - 224) / 2), round((w - 224) / 2)
    x = x[..., top : top + 224, left : left + 224]
    return (x - 0.5) / 0.5


def preprocess_sscd(frames: Tensor) -> Tensor:
    """SSCD repository convention: shorter side 288 (bilinear), ImageNet mean/std, no crop."""
    x = _resize_short(frames, 288)
    mean = torch.tensor(_IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(_IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def _resize_short(frames: Tensor, side: int) -> Tensor:
    h, w = frames.shape[-2:]
    nh, nw = (side, round(side * w / h)) if h <= w else (round(side * h / w), side)
    if (nh, nw) == (h, w):
        return frames.float()
    return F.interpolate(frames.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)


_PREPROCESS: dict[str, Callable[[Tensor], Tensor]] = {"dcr": preprocess_dcr, "sscd": preprocess_sscd}


class TorchScriptEmbedder:
    """Any TorchScript image model (SSCD, an exported DINOv2, ...) as a frame embedder.

    Args:
        path: local ``*.torchscript.pt`` file.
        preprocess: ``"dcr"`` (default; 256 -> crop 224, mean/std 0.5), ``"sscd"`` (short side 288, ImageNet
            statistics) or a callable [N,3,H,W] in [0,1] -> model input.
        device: "auto", "cpu" or "cuda:N".
        batch_size: frames per forward pass (bounds GPU memory).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        preprocess: str | Callable[[Tensor], Tensor] = "dcr",
        device: str | torch.device = "auto",
        batch_size: int = 64,
        *,
        name: str = "torchscript",
    ) -> None:
        from difflab_core.loading import file_sha256

        p = Path(path)
        if not p.is_file():
            raise MemVideoError(
                f"{p}: TorchScript file does not exist; place the model there (for SSCD, "
                "sscd_disc_mixup.torchscript.pt from facebookresearch/sscd-copy-detection)"
            )
        if isinstance(preprocess, str) and preprocess not in _PREPROCESS:
            raise MemVideoError(f"preprocess={preprocess!r}: use 'dcr', 'sscd' or a callable")
        self.path = p
        self.name = name
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.preprocess_name = (
            preprocess if isinstance(preprocess, str) else getattr(preprocess, "__name__", "custom")
        )
        self._preprocess = _PREPROCESS[preprocess] if isinstance(preprocess, str) else preprocess
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(p), map_location=self.device).eval()
        except Exception as exc:
            raise MemVideoError(
                f"{p}: not loadable as TorchScript ({type(exc).__name__}: {exc}); pass a *.torchscript.pt file, "
                "not a state dict"
            ) from exc
        self.sha256 = file_sha256(p)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(torch.full((1, 3, 64, 64), 0.5)).shape[1])
        return self._dim

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "preprocess": self.preprocess_name,
        }

    def model_input(self, frames: Tensor) -> Tensor:
        """The preprocessed model input for [N,3,H,W] frames in [0,1]."""
        return self._preprocess(frames.float())

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        """[N,3,H,W] in [0,1] -> [N,D] float32 on CPU, L2-normalised."""
        _check_frames(frames, self.name)
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            x = self.model_input(frames[start : start + self.batch_size]).to(self.device)
            out.append(F.normalize(self.model(x).float().flatten(1), dim=1).cpu())
        return torch.cat(out)


def load_sscd(
    path: str | os.PathLike[str], preprocess: str = "dcr", device: str | torch.device = "auto"
) -> TorchScriptEmbedder:
    """SSCD (Pizzi et al. 2022) from a local TorchScript release, with the DCR (default) or SSCD preprocessing."""
    return TorchScriptEmbedder(path, preprocess, device, name="sscd")


def create_embedder(spec: str | FrameEmbedder, *, device: str | torch.device = "auto") -> FrameEmbedder:
    """``"tiny"``, ``"tiny:SIZE"``, ``"sscd:PATH"`` (DCR preprocessing), ``"sscd-sscd:PATH"`` (SSCD
    preprocessing) or ``"torchscript:PATH"``; an embedder object is returned unchanged."""
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "tiny":
        return TinyImageEmbedder(int(arg) if arg else 16)
    if kind in ("sscd", "sscd-sscd", "torchscript") and arg:
        if kind == "torchscript":
            return TorchScriptEmbedder(arg, device=device)
        return load_sscd(arg, "sscd" if kind == "sscd-sscd" else "dcr", device)
    raise MemVideoError(f"embedder {spec!r}: use 'tiny', 'sscd:PATH', 'sscd-sscd:PATH' or 'torchscript:PATH'")


def embedder_spec(embedder: FrameEmbedder) -> str:
    """The `create_embedder` string that rebuilds ``embedder`` (recorded in index manifests)."""
    if isinstance(embedder, TinyImageEmbedder):
        return f"tiny:{embedder.size}"
    if isinstance(embedder, TorchScriptEmbedder):
        if embedder.name == "sscd":
            kind = "sscd-sscd" if embedder.preprocess_name == "sscd" else "sscd"
            return f"{kind}:{embedder.path}"
        return f"torchscript:{embedder.path}"
    return embedder.name


def default_tau_c(embedder: FrameEmbedder) -> float:
    """The content threshold that belongs to ``embedder``: 0.85 for tiny, SSCD's 0.5 otherwise."""
    return TINY_TAU if embedder.name == "tiny" else SSCD_TAU


def check_tau(embedder: FrameEmbedder, tau_c: float | None) -> float:
    """``tau_c`` or the embedder's default; warns when SSCD's 0.5 is used with the tiny embedder."""
    if tau_c is None:
        return default_tau_c(embedder)
    if embedder.name == "tiny" and abs(tau_c - SSCD_TAU) < 1e-9:
        warnings.warn(
            f"tau_c=0.5 is SSCD's threshold; the tiny embedder's is {TINY_TAU} (a threshold belongs to an embedder)",
            UserWarning,
            stacklevel=2,
        )
    return float(tau_c)
