"""Evaluation: diversity (intra-cluster distance, CDC protocol), copying, offline digits proxies, and real FID /
LPIPS when the user supplies local weights (optional extra ``tan-transfer[eval]``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import TanTransferError

__all__ = [
    "copy_mask",
    "copy_rate",
    "evaluate_run",
    "fid",
    "intra_cluster_distance",
    "lpips_distance",
    "pairwise_l2",
    "proxy_metrics",
]

Distance = Callable[[Tensor, Tensor], Tensor]


def pairwise_l2(a: Tensor, b: Tensor) -> Tensor:
    """Root-mean-square pixel distance ``[N, M]`` between images ``a`` [N, ...] and ``b`` [M, ...]."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    return (torch.cdist(fa, fb) / fa.shape[1] ** 0.5).float()


def _distance(distance: str | Distance) -> Distance:
    if callable(distance):
        return distance
    if distance == "l2":
        return pairwise_l2
    raise TanTransferError("distance", f"{distance!r}: use 'l2' or a callable (a, b) -> [N, M]")


def intra_cluster_distance(samples: Tensor, shots: Tensor, distance: str | Distance = "l2") -> float:
    """CDC protocol: assign each sample to its nearest shot; mean pairwise distance within each cluster of ≥ 2
    members; averaged over those clusters (NaN if none has 2 members). Higher = more diverse."""
    if len(samples) < 2 or len(shots) < 1:
        raise TanTransferError("intra_cluster_distance", "need >= 2 samples and >= 1 shot")
    dist = _distance(distance)
    nearest = dist(samples, shots).argmin(dim=1)
    means = []
    for k in range(len(shots)):
        members = samples[nearest == k]
        if len(members) < 2:
            continue
        d = dist(members, members)
        iu = torch.triu_indices(len(members), len(members), offset=1)
        means.append(d[iu[0], iu[1]].double().mean().item())
    return float(sum(means) / len(means)) if means else float("nan")


def copy_mask(samples: Tensor, shots: Tensor, factor: float = 0.5) -> Tensor:
    """``[N]`` bool: the sample's nearest shot is closer than ``factor`` × the median shot-to-shot distance (pixel)."""
    if len(shots) < 2:
        raise TanTransferError("copy_rate", "need >= 2 shots")
    d_ss = pairwise_l2(shots, shots)
    iu = torch.triu_indices(len(shots), len(shots), offset=1)
    threshold = factor * d_ss[iu[0], iu[1]].median()
    return pairwise_l2(samples, shots).min(dim=1).values < threshold


def copy_rate(samples: Tensor, shots: Tensor, factor: float = 0.5) -> float:
    """Share of samples whose nearest shot is closer than ``factor`` × the median shot-to-shot distance (pixel)."""
    return float(copy_mask(samples, shots, factor).float().mean())


def proxy_metrics(
    samples01: Tensor, shots: Tensor, *, target_class: int | None = None, patch_features: Any = None
) -> dict[str, float]:
    """Offline proxies for samples ``[N, C, H, W]`` in [0, 1] against ``shots`` in [−1, 1].

    Always: ``intra_dist`` (pixel, CDC) and ``copy_rate``. For 1×16×16 digits with ``target_class``: ``proxy_fid``
    (Fréchet distance in the shipped digits classifier's features to all real digits of that class) and
    ``target_class_rate`` (share classified as ``target_class``). For photo patches with ``patch_features`` (a
    `tan_transfer.PatchFeatures`): ``proxy_fid`` (Fréchet distance in the patch CNN's features to all ``grass``
    patches) and ``target_class_rate`` (share the patch CNN calls ``grass``).
    """
    from difflab_core.testbed import digits_classifier

    if target_class is not None and patch_features is not None:
        raise TanTransferError(
            "proxy_metrics", "give target_class (digits) or patch_features (photos), not both"
        )
    shots01 = (shots.float().cpu() + 1) / 2
    out = {
        "intra_dist": intra_cluster_distance(samples01, shots01),
        "copy_rate": copy_rate(samples01, shots01),
    }
    if target_class is not None:
        if tuple(samples01.shape[1:]) != (1, 16, 16):
            raise TanTransferError("target_class", "digits proxies need 1×16×16 samples")
        proxy = digits_classifier()
        out["proxy_fid"] = proxy.frechet(samples01, classes=(target_class,))
        out["target_class_rate"] = proxy.accuracy(samples01, target_class)
    if patch_features is not None:
        out["proxy_fid"] = patch_features.frechet(samples01)
        out["target_class_rate"] = patch_features.target_class_rate(samples01)
    return out


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TanTransferError(
            package, f"is not installed; install the optional extra: pip install 'tan-transfer[eval]' ({err})"
        ) from err


def fid(samples01: Tensor, reference_dir: str | Path, inception_weights: str | Path) -> float:
    """FID with torchmetrics' `FrechetInceptionDistance` and a local Inception-2015-12-05 weight file."""
    from .data import load_image_folder

    weights = Path(inception_weights)
    if not weights.is_file():
        raise TanTransferError(
            weights, "Inception weight file not found (torch-fidelity's pt_inception-2015-12-05)"
        )
    if not Path(reference_dir).is_dir():
        raise TanTransferError(reference_dir, "FID reference folder not found")
    _require("torch_fidelity", "torch-fidelity")
    fid_mod = _require("torchmetrics.image.fid", "torchmetrics")
    metric = fid_mod.FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(weights), normalize=True
    )
    reference = (load_image_folder(reference_dir, 299, 3) + 1) / 2
    rgb = samples01.expand(-1, 3, -1, -1) if samples01.shape[1] == 1 else samples01
    metric.update(reference, real=True)
    metric.update(torch.nn.functional.interpolate(rgb.float(), size=299, mode="bilinear"), real=False)
    return float(metric.compute())


def lpips_distance(backbone_weights: str | Path, net: str = "alex") -> Distance:
    """LPIPS as a distance ``(a, b) -> [N, M]`` (images in [0, 1]); the backbone from a local torchvision state
    dict (AlexNet/VGG ``features.*``), lpips' own linear heads."""
    weights = Path(backbone_weights)
    if not weights.is_file():
        raise TanTransferError(weights, f"{net} backbone weight file not found (a torchvision state dict)")
    if net not in ("alex", "vgg"):
        raise TanTransferError("net", f"{net!r}: use 'alex' or 'vgg'")
    lpips = _require("lpips", "lpips")
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    features = {k.split("features.", 1)[1]: v for k, v in state.items() if "features." in k}
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        part = getattr(model.net, slice_name, None)
        if part is None:
            continue
        sub = {f"{k}": v for k, v in features.items() if k.split(".")[0] in dict(part.named_children())}
        part.load_state_dict(sub, strict=True)

    @torch.no_grad()
    def distance(a: Tensor, b: Tensor) -> Tensor:
        out = torch.empty(len(a), len(b))
        for i in range(len(a)):
            out[i] = model(a[i : i + 1].expand(len(b), -1, -1, -1) * 2 - 1, b * 2 - 1).flatten()
        return out

    return distance


def evaluate_run(run_dir: str | Path, *, samples_dir: str | Path | None = None) -> dict[str, Any]:
    """Proxy metrics of a run: its ``samples/`` PNGs against the shots recorded in ``run_dir/shots/``;
    digits proxies too when ``run_dir/task.json`` names a ``target_class``. Writes ``run_dir/eval.json``."""
    from difflab_core.report import write_json

    from .data import load_image_folder

    run = Path(run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise TanTransferError(config_path, "missing; not a tan-transfer run folder")
    shots_dir, samples = run / "shots", Path(samples_dir) if samples_dir else run / "samples"
    if not shots_dir.is_dir():
        raise TanTransferError(shots_dir, "missing; the run did not record its target shots")
    if not samples.is_dir():
        raise TanTransferError(samples, "missing; run `tan-transfer sample` first")
    first = next(iter(sorted(shots_dir.glob("*.png"))), None)
    if first is None:
        raise TanTransferError(shots_dir, "holds no PNG shots")
    from PIL import Image

    with Image.open(first) as im:
        size, channels = im.size[0], 1 if im.mode == "L" else 3
    shots = load_image_folder(shots_dir, size, channels)
    images01 = (load_image_folder(samples, size, channels) + 1) / 2
    task = run / "task.json"
    target_class = json.loads(task.read_text()).get("target_class") if task.is_file() else None
    result = {"n_samples": len(images01), "n_shots": len(shots)}
    result |= proxy_metrics(images01, shots, target_class=target_class)
    write_json(run / "eval.json", result)
    return result
