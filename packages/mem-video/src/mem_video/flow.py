"""Optical flow for motion memorization: OpenCV Farneback (offline default) and torchvision RAFT from a
local state dict, and `video_flows`, the pooled flow descriptor stored in indexes.

Estimators map frame pairs a, b [N,3,H,W] in [0,1] to flow a -> b [N,2,H,W] in pixels (x, y).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from difflab_core.device import resolve_device

from .errors import MemVideoError
from .io import VideoClip, resample_fps, resize_frames

__all__ = [
    "FarnebackFlow",
    "FlowEstimator",
    "RAFTFlow",
    "create_flow",
    "flow_spec",
    "video_flows",
]


@runtime_checkable
class FlowEstimator(Protocol):
    """Optical flow a -> b for batches of frame pairs, in pixels."""

    name: str
    min_size: int
    multiple_of: int

    def config(self) -> dict[str, Any]: ...

    def estimate(self, a: Tensor, b: Tensor) -> Tensor: ...


def _check_pair(a: Tensor, b: Tensor, who: str) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise MemVideoError(
            f"{who}: frames must be two [N,3,H,W] tensors of one shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


class FarnebackFlow:
    """Dense Farneback flow (OpenCV ``calcOpticalFlowFarneback``) on 8-bit greyscale frames; deterministic.

    The defaults are OpenCV's documented example values.
    """

    name = "farneback"
    min_size = 8
    multiple_of = 1

    def __init__(
        self,
        pyr_scale: float = 0.5,
        levels: int = 3,
        winsize: int = 15,
        iterations: int = 3,
        poly_n: int = 5,
        poly_sigma: float = 1.2,
    ) -> None:
        self.params = {
            "pyr_scale": pyr_scale,
            "levels": levels,
            "winsize": winsize,
            "iterations": iterations,
            "poly_n": poly_n,
            "poly_sigma": poly_sigma,
        }

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    @staticmethod
    def _grey(x: Tensor) -> np.ndarray:
        rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip((rgb.astype(np.float32) @ w).round(), 0, 255).astype(np.uint8)

    def estimate(self, a: Tensor, b: Tensor) -> Tensor:
        """[N,3,H,W] pairs -> flow [N,2,H,W] in pixels."""
        import cv2

        _check_pair(a, b, "FarnebackFlow")
        ga, gb = self._grey(a.detach().cpu()), self._grey(b.detach().cpu())
        p = self.params
        out = [
            cv2.calcOpticalFlowFarneback(
                x,
                y,
                None,
                p["pyr_scale"],
                p["levels"],
                p["winsize"],
                p["iterations"],
                p["poly_n"],
                p["poly_sigma"],
                0,
            )
            for x, y in zip(ga, gb, strict=True)
        ]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


class RAFTFlow:
    """torchvision RAFT (``raft_large`` / ``raft_small``, built with ``weights=None``) with a local state dict.

    Args:
        weights_path: ``.pth`` (loaded with ``weights_only=True``) or ``.safetensors`` state dict; None keeps
            random weights (for tests only).
        variant: "large" (5,257,536 parameters) or "small" (990,162).
        num_flow_updates: refinement iterations (torchvision default 12).

    Inputs must be at least 128 px and multiples of 8 (torchvision issues #7338, #8848).
    """

    min_size = 128
    multiple_of = 8

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None,
        variant: str = "large",
        num_flow_updates: int = 12,
        device: str | torch.device = "auto",
        batch_size: int = 8,
    ) -> None:
        from torchvision.models.optical_flow import raft_large, raft_small

        if variant not in ("large", "small"):
            raise MemVideoError(f"RAFTFlow: variant must be 'large' or 'small', got {variant!r}")
        self.name = f"raft-{variant}"
        self.variant = variant
        self.num_flow_updates = int(num_flow_updates)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        model = raft_large(weights=None) if variant == "large" else raft_small(weights=None)
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.sha256 = None
        if self.weights_path is not None:
            self._load(model, self.weights_path)
        self.model = model.eval().to(self.device)

    def _load(self, model: torch.nn.Module, p: Path) -> None:
        from difflab_core.loading import file_sha256

        if not p.is_file():
            raise MemVideoError(
                f"{p}: RAFT weights do not exist; save torchvision's raft_{self.variant} state dict "
                "(e.g. Raft_Large_Weights.C_T_SKHT_V2) there as .pth or .safetensors"
            )
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(p))
            else:
                state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MemVideoError(f"{p}: cannot read a state dict ({type(exc).__name__}: {exc})") from exc
        if not isinstance(state, dict):
            raise MemVideoError(f"{p}: expected a state dict, got {type(state).__name__}")
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise MemVideoError(
                f"{p}: weights do not match raft_{self.variant}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, wrong shapes {wrong[:5]}"
            )
        model.load_state_dict(state)
        self.sha256 = file_sha256(p)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": None if self.weights_path is None else str(self.weights_path),
            "sha256": self.sha256,
            "num_flow_updates": self.num_flow_updates,
        }

    @torch.no_grad()
    def estimate(self, a: Tensor, b: Tensor) -> Tensor:
        """[N,3,H,W] pairs in [0,1] -> flow [N,2,H,W] in pixels (the last refinement)."""
        _check_pair(a, b, self.name)
        h, w = a.shape[-2:]
        if min(h, w) < self.min_size or h % self.multiple_of or w % self.multiple_of:
            raise MemVideoError(
                f"{self.name}: frames are {h}x{w}; RAFT needs sides >= {self.min_size} and multiples of "
                f"{self.multiple_of} (set flow_size, e.g. (256, 256))"
            )
        out = []
        for s in range(0, a.shape[0], self.batch_size):
            x = a[s : s + self.batch_size].to(self.device).float() * 2 - 1
            y = b[s : s + self.batch_size].to(self.device).float() * 2 - 1
            out.append(self.model(x, y, num_flow_updates=self.num_flow_updates)[-1].float().cpu())
        return torch.cat(out)


def video_flows(
    clip: VideoClip,
    estimator: FlowEstimator,
    size: int | tuple[int, int] = (256, 256),
    fps: float | None = None,
    grid: int = 32,
    batch_size: int = 32,
) -> Tensor:
    """The motion descriptor of a clip: flows between consecutive frames, [F-1,2,G,G].

    The clip is resampled to ``fps`` (None keeps its rate), resized to ``size`` (no cropping), flows are
    divided by the flow width (units: fraction of frame width per frame) and average-pooled to G×G.
    """
    frames = resample_fps(clip.frames, clip.fps, fps)
    if frames.shape[0] < 2:
        raise MemVideoError(
            f"{clip.id or clip.source or 'clip'}: motion needs at least 2 frames, got {frames.shape[0]}"
            + (f" at {fps} fps" if fps else "")
        )
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < estimator.min_size or hw[0] % estimator.multiple_of or hw[1] % estimator.multiple_of:
        raise MemVideoError(
            f"flow_size={hw} does not suit {estimator.name}: sides must be >= {estimator.min_size} and "
            f"multiples of {estimator.multiple_of}"
        )
    frames = resize_frames(frames, hw)
    out = []
    for s in range(0, frames.shape[0] - 1, batch_size):
        a = frames[s : min(s + batch_size, frames.shape[0] - 1)]
        b = frames[s + 1 : s + 1 + a.shape[0]]
        flow = estimator.estimate(a, b) / hw[1]
        out.append(F.adaptive_avg_pool2d(flow, grid))
    flows = torch.cat(out)
    if not torch.isfinite(flows).all():
        raise MemVideoError(f"{clip.id or clip.source}: {estimator.name} returned NaN or infinite flow")
    return flows


def create_flow(spec: str | FlowEstimator, *, device: str | torch.device = "auto") -> FlowEstimator:
    """``"farneback"``, ``"raft-large:PATH"`` or ``"raft-small:PATH"``; an estimator is returned unchanged."""
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "farneback" and not arg:
        return FarnebackFlow()
    if kind in ("raft-large", "raft-small") and arg:
        return RAFTFlow(arg, kind.split("-")[1], device=device)
    raise MemVideoError(f"flow {spec!r}: use 'farneback', 'raft-large:PATH' or 'raft-small:PATH'")


def flow_spec(estimator: FlowEstimator) -> str:
    """The `create_flow` string that rebuilds ``estimator`` (recorded in index manifests)."""
    if isinstance(estimator, RAFTFlow) and estimator.weights_path is not None:
        return f"{estimator.name}:{estimator.weights_path}"
    return estimator.name
