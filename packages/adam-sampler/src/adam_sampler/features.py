"""Feature extractors and reference statistics for `compare_samplers`.

A feature function maps images ``[N, C, H, W]`` in [0, 1] to features ``[N, D]``.

- ``digits``: the 128-d penultimate features of ``difflab_core.testbed.digits_classifier()`` (a proxy, not
  FID); images are converted to grey (channel mean) and resized to 16×16 first. Its default reference is the
  1797 real digits.
- ``torchscript:PATH``: a local TorchScript module with the same contract.
- ``inception:PATH``: torch-fidelity's Inception-2015-12-05 2048-d pool features from a local weight file
  (real FID; needs the optional ``torch-fidelity`` package, imported lazily).

Reference statistics are (μ [D], Σ [D, D]); ``.npz`` files with arrays ``mu`` and ``sigma`` (the pytorch-fid /
torch-fidelity layout) are read by `load_reference_stats`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AdamSamplerError

__all__ = [
    "FeatureFn",
    "digits_features",
    "digits_reference_stats",
    "inception_features",
    "load_reference_stats",
    "resolve_features",
    "torchscript_features",
]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def digits_features(device: str | torch.device = "cpu") -> FeatureFn:
    """The digits-classifier proxy features ``[N, 128]`` of images ``[N, C, H, W]`` in [0, 1]."""
    from difflab_core.testbed import digits_classifier

    proxy = digits_classifier(device=device)

    def features(images: torch.Tensor) -> torch.Tensor:
        grey = images.float().mean(dim=1, keepdim=True)
        if grey.shape[-2:] != (16, 16):
            grey = F.interpolate(grey, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        return proxy.features(grey.clamp(0, 1))

    return features


def digits_reference_stats(feature_fn: FeatureFn, images: torch.Tensor | None = None):
    """(μ, Σ) of ``feature_fn`` on ``images`` (default: all 1797 real digits, [N, 1, 16, 16] in [0, 1])."""
    from difflab_core.testbed import real_digits

    from .compare import feature_stats

    return feature_stats(feature_fn(real_digits()[0] if images is None else images))


def torchscript_features(path: str | Path, device: str | torch.device = "cpu") -> FeatureFn:
    """A local TorchScript feature extractor (images [N, C, H, W] in [0, 1] -> [N, D])."""
    path = Path(path)
    if not path.is_file():
        raise AdamSamplerError(f"--features torchscript:{path}: no such file")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        raise AdamSamplerError(f"--features torchscript:{path}: not a TorchScript module ({err})") from err

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(chunk.to(device)).float().cpu() for chunk in images.split(256)])

    return features


def inception_features(path: str | Path, device: str | torch.device = "cpu") -> FeatureFn:
    """torch-fidelity's Inception-v3 (2015-12-05) pool features ``[N, 2048]`` from a local weight file."""
    path = Path(path)
    if not path.is_file():
        raise AdamSamplerError(
            f"--features inception:{path}: no such file (torch-fidelity's Inception weights)"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise AdamSamplerError(
            "--features inception:PATH needs the optional package torch-fidelity (pip install torch-fidelity); "
            "use --features digits or torchscript:PATH without it"
        ) from err
    model = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    ).to(device)
    model.eval()

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(128):
            rgb = chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk
            out.append(model((rgb * 255).round().to(torch.uint8).to(device))[0].float().cpu())
        return torch.cat(out)

    return features


def resolve_features(spec: str, device: str | torch.device = "cpu") -> FeatureFn:
    """``"digits"``, ``"torchscript:PATH"`` or ``"inception:PATH"`` -> a feature function."""
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return digits_features(device)
    if kind == "torchscript" and path:
        return torchscript_features(path, device)
    if kind == "inception" and path:
        return inception_features(path, device)
    raise AdamSamplerError(f"--features {spec!r}: use digits, torchscript:PATH or inception:PATH")


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(μ [D], Σ [D, D]) from an ``.npz`` file with arrays ``mu`` and ``sigma``."""
    path = Path(path)
    if not path.is_file():
        raise AdamSamplerError(f"--ref-stats {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (KeyError, ValueError, OSError, IndexError) as err:
        raise AdamSamplerError(
            f"--ref-stats {path}: not an .npz with arrays 'mu' and 'sigma' ({err})"
        ) from err
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise AdamSamplerError(
            f"--ref-stats {path}: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}"
        )
    return mu, sigma
