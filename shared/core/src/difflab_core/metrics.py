"""Evaluation metrics: ROC statistics, SSIM, image-similarity embedders, k-NN, RMSE and Fréchet distance.

Detection scores follow the convention "higher score = more likely positive (label 1)".
Images are ``[B,C,H,W]`` float tensors in [0,1] unless stated otherwise.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab_core.errors import DifflabError
from difflab_core.loading import file_sha256

__all__ = [
    "ImageSimilarity",
    "PixelEmbedder",
    "SSCDEmbedder",
    "frechet_distance",
    "gaussian_window",
    "knn",
    "masked_rmse",
    "rmse",
    "roc_auc",
    "roc_curve",
    "ssim",
    "ssim_map",
    "tpr_at_fpr",
]


# --------------------------------------------------------------------------------------------------- ROC


def _as_numpy_1d(x: Any, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise DifflabError(f"{what} must be one-dimensional, got shape {a.shape}")
    return a


def _check_binary(scores: Any, labels: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (float64 scores, bool labels)."""
    s = _as_numpy_1d(scores, f"{fn}: scores").astype(np.float64)
    y = _as_numpy_1d(labels, f"{fn}: labels")
    if s.shape != y.shape:
        raise DifflabError(
            f"{fn}: scores has {s.size} entries but labels has {y.size}; pass one label per score"
        )
    if not np.isfinite(s).all():
        raise DifflabError(f"{fn}: scores contain NaN or infinite values")
    uniq = np.unique(y)
    if not np.isin(uniq, [0, 1]).all():
        raise DifflabError(
            f"{fn}: labels must be 0/1 or bool (1 = positive), got values {uniq[:10].tolist()}"
        )
    yb = y.astype(bool)
    n_pos = int(yb.sum())
    if n_pos == 0 or n_pos == yb.size:
        raise DifflabError(
            f"{fn}: labels hold only one class ({n_pos} positives of {yb.size}); ROC statistics need both"
        )
    return s, yb


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ascending; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = x.size
    # boundaries of runs of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks_sorted = np.repeat(mean_rank, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve via the Mann–Whitney rank statistic (ties count one half).

    Args:
        scores: ``[N]`` detection scores, higher = more positive.
        labels: ``[N]`` 0/1 or bool ground truth.
    """
    s, y = _check_binary(scores, labels, "roc_auc")
    ranks = _average_ranks(s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score (like ``sklearn.metrics.roc_curve(drop_intermediate=False)``).

    Returns:
        ``(fpr, tpr, thresholds)``, each ``[K+1]`` for K distinct scores: thresholds descending with
        ``thresholds[0] = +inf`` (the point (0, 0)); point i counts ``score >= thresholds[i]`` as positive.
    """
    s, y = _check_binary(scores, labels, "roc_curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fps / fps[-1], tps / tps[-1], thresholds


def tpr_at_fpr(
    scores: Any,
    labels: Any,
    fpr: float = 0.01,
    rule: Literal["last_below", "closest"] = "last_below",
) -> float:
    """TPR read off the ROC curve (``roc_curve``) at a target FPR.

    Papers differ in how they read it, so the rule is explicit:

    * ``"last_below"``: TPR at the last ROC point whose FPR is strictly below ``fpr`` (Wen et al.,
      Tree-Ring); needs ``0 < fpr <= 1``.
    * ``"closest"``: TPR at the ROC point whose FPR is closest to ``fpr``, the first such point on ties
      (Ren et al.); needs ``0 <= fpr <= 1``.
    """
    if rule not in ("last_below", "closest"):
        raise DifflabError(f"tpr_at_fpr: rule must be 'last_below' or 'closest', got {rule!r}")
    lo_ok = fpr > 0 if rule == "last_below" else fpr >= 0
    if not (lo_ok and fpr <= 1):
        bound = "(0, 1]" if rule == "last_below" else "[0, 1]"
        raise DifflabError(f"tpr_at_fpr: fpr must be in {bound} for rule {rule!r}, got {fpr}")
    f, t, _ = roc_curve(scores, labels)
    idx = int(np.flatnonzero(f < fpr)[-1]) if rule == "last_below" else int(np.argmin(np.abs(f - fpr)))
    return float(t[idx])


# --------------------------------------------------------------------------------------------------- SSIM


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian ``[size]`` centred on the middle tap; the 2-D window is its outer product."""
    if size < 1 or size % 2 == 0:
        raise DifflabError(f"gaussian_window: size must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise DifflabError(f"gaussian_window: sigma must be > 0, got {sigma}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def _symmetric_pad(x: Tensor, pad: int) -> Tensor:
    """Pad the last two dims by ``pad`` with edge-repeating mirror padding (scipy ``mode='reflect'``)."""
    if pad == 0:
        return x

    def idx(n: int) -> Tensor:
        i = torch.arange(-pad, n + pad, device=x.device) % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)

    h, w = x.shape[-2:]
    return x.index_select(-2, idx(h)).index_select(-1, idx(w))


def ssim_map(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-pixel SSIM ``[B,H,W]`` of ``x`` and ``y`` ``[B,C,H,W]``, averaged over channels; differentiable.

    Local statistics use a ``window``×``window`` Gaussian (std ``sigma``) applied as a separable depthwise
    convolution with population (not sample) covariances. The output keeps the input size: borders are
    padded by mirroring with the edge pixel repeated (scipy ``mode='reflect'``), which makes the map equal
    to ``skimage.metrics.structural_similarity(..., gaussian_weights=True, use_sample_covariance=False,
    full=True)`` everywhere (skimage's scalar, unlike ``ssim``, also crops ``window // 2`` border pixels).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise DifflabError(
            f"ssim_map: x and y must both be [B,C,H,W] of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if data_range <= 0:
        raise DifflabError(f"ssim_map: data_range must be > 0, got {data_range}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype)
    y = y.to(dtype)
    c = x.shape[1]
    g = gaussian_window(window, sigma, dtype=dtype).to(x.device)
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    n = stats.shape[1]
    stats = _symmetric_pad(stats, window // 2)
    stats = F.conv2d(stats, g.view(1, 1, 1, window).expand(n, 1, 1, window), groups=n)
    stats = F.conv2d(stats, g.view(1, 1, window, 1).expand(n, 1, window, 1), groups=n)
    mx, my, mxx, myy, mxy = stats.split(c, dim=1)
    vx = mxx - mx * mx
    vy = myy - my * my
    cxy = mxy - mx * my
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=1)


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """SSIM per image ``[B]``: the mean of ``ssim_map`` over all pixels (borders included)."""
    return ssim_map(x, y, data_range=data_range, window=window, sigma=sigma, k1=k1, k2=k2).mean(dim=(1, 2))


# --------------------------------------------------------------------------------------------------- embedders


def _check_images(images: Tensor, who: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DifflabError(f"{who}: images must be a [B,3,H,W] float tensor in [0,1], got {shape}")


class ImageSimilarity(nn.Module):
    """Base class of image embedders for copy / near-duplicate detection.

    Subclasses implement ``features`` (raw ``[B,D]``); ``embed`` L2-normalises them, so
    ``similarity`` is a cosine similarity. Everything is differentiable w.r.t. the images.
    """

    def features(self, images: Tensor) -> Tensor:
        """Unnormalised features ``[B,D]`` of ``images`` ``[B,3,H,W]`` in [0,1]."""
        raise NotImplementedError

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embeddings ``[B,D]`` of ``images`` ``[B,3,H,W]`` in [0,1]."""
        _check_images(images, f"{type(self).__name__}.embed")
        return F.normalize(self.features(images), dim=-1)

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity matrix ``[Na,Nb]`` between image batches ``a`` and ``b``."""
        return self.embed(a) @ self.embed(b).T


class PixelEmbedder(ImageSimilarity):
    """Raw pixels as the embedding: a cheap baseline and test double.

    Images are optionally resized to ``size`` (bilinear, antialiased), flattened to ``[B, 3*H*W]``,
    centred by subtracting each image's own mean, then L2-normalised. The cosine similarity of two
    embeddings is therefore the Pearson correlation of their pixels (a constant image embeds to zeros).
    Without ``size``, only images of equal size can be compared.
    """

    def __init__(self, size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)

    def features(self, images: Tensor) -> Tensor:
        x = images
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        flat = x.flatten(1)
        return flat - flat.mean(dim=1, keepdim=True)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        if self.size is None and a.shape[-2:] != b.shape[-2:]:
            raise DifflabError(
                f"PixelEmbedder.similarity: image sizes differ ({tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}); "
                "construct PixelEmbedder(size=...) to resize them"
            )
        return super().similarity(a, b)


class SSCDEmbedder(ImageSimilarity):
    """SSCD copy-detection descriptor (Pizzi et al., 2022) from its TorchScript release.

    Preprocessing: resize the shorter side to ``resize`` (bilinear, antialiased), centre-crop
    ``crop``×``crop``, normalise with mean 0.5 / std 0.5, run the model, then L2-normalise explicitly.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sha256: str | None = None,
        resize: int = 256,
        crop: int = 224,
    ) -> None:
        super().__init__()
        if crop > resize:
            raise DifflabError(f"SSCDEmbedder: crop ({crop}) must not exceed resize ({resize})")
        self.model = model.eval()
        self.sha256 = sha256
        self.resize = resize
        self.crop = crop

    @classmethod
    def from_torchscript(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> SSCDEmbedder:
        """Load a TorchScript SSCD file (e.g. ``sscd_disc_mixup.torchscript.pt``) onto ``device``.

        The file's SHA-256 is kept in ``.sha256`` for provenance.
        """
        path = Path(path)
        if not path.is_file():
            raise DifflabError(
                f"SSCDEmbedder: TorchScript file {path} does not exist; download an SSCD TorchScript release "
                "(e.g. sscd_disc_mixup.torchscript.pt) and pass its path"
            )
        try:
            with warnings.catch_warnings():
                # SSCD ships only as TorchScript; the deprecation notice is not actionable here
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
                model = torch.jit.load(str(path), map_location=device)
        except Exception as exc:
            raise DifflabError(
                f"SSCDEmbedder: {path} could not be loaded as TorchScript ({type(exc).__name__}: {exc}); "
                "pass an SSCD *.torchscript.pt file, not a state dict or checkpoint"
            ) from exc
        return cls(model, sha256=file_sha256(path))

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B,3,H,W]`` in [0,1] to the model input ``[B,3,crop,crop]`` (resized, cropped, normalised)."""
        h, w = images.shape[-2:]
        if h <= w:
            nh, nw = self.resize, int(self.resize * w / h)
        else:
            nh, nw = int(self.resize * h / w), self.resize
        x = images
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top = round((nh - self.crop) / 2.0)
        left = round((nw - self.crop) / 2.0)
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - 0.5) / 0.5

    def features(self, images: Tensor) -> Tensor:
        return self.model(self.preprocess(images))


# --------------------------------------------------------------------------------------------------- k-NN


def knn(
    queries: Tensor,
    keys: Tensor,
    k: int = 1,
    *,
    metric: Literal["cosine", "l2"] = "cosine",
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest keys of each query, computed over chunks of ``chunk`` keys.

    Args:
        queries: ``[Nq,D]``; keys: ``[Nk,D]`` (need not be normalised).
        metric: ``"cosine"`` returns cosine similarities, descending; ``"l2"`` Euclidean distances, ascending.

    Returns:
        ``(values [Nq,k], indices [Nq,k])``, indices into ``keys``.
    """
    queries = torch.as_tensor(queries)
    keys = torch.as_tensor(keys).to(queries.device)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise DifflabError(
            f"knn: queries and keys must be [Nq,D] and [Nk,D] with equal D, got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}"
        )
    if not 1 <= k <= keys.shape[0]:
        raise DifflabError(f"knn: k must be in 1..{keys.shape[0]} (the number of keys), got {k}")
    if metric not in ("cosine", "l2"):
        raise DifflabError(f"knn: metric must be 'cosine' or 'l2', got {metric!r}")
    if chunk < 1:
        raise DifflabError(f"knn: chunk must be >= 1, got {chunk}")
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    q = queries.to(dtype)
    kk = keys.to(dtype)
    largest = metric == "cosine"
    if largest:
        q = F.normalize(q, dim=1)
        kk = F.normalize(kk, dim=1)
    best_v: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, kk.shape[0], chunk):
        part = kk[start : start + chunk]
        scores = q @ part.T if largest else torch.cdist(q, part)
        kc = min(k, part.shape[0])
        v, i = scores.topk(kc, dim=1, largest=largest)
        i = i + start
        if best_v is None or best_i is None:
            best_v, best_i = v, i
        else:
            v = torch.cat([best_v, v], dim=1)
            i = torch.cat([best_i, i], dim=1)
            v, sel = v.topk(min(k, v.shape[1]), dim=1, largest=largest)
            best_v, best_i = v, i.gather(1, sel)
    assert best_v is not None and best_i is not None
    return best_v, best_i


# --------------------------------------------------------------------------------------------------- errors


def rmse(a: Tensor, b: Tensor) -> Tensor:
    """Root mean square error per item ``[B]`` over all non-batch dims of ``a``, ``b`` ``[B,...]``."""
    if a.shape != b.shape or a.ndim < 1:
        raise DifflabError(
            f"rmse: a and b must have equal shape [B,...], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    d = a.to(torch.promote_types(a.dtype, torch.float32)) - b.to(torch.promote_types(b.dtype, torch.float32))
    return d.pow(2).flatten(1).mean(dim=1).sqrt()


def masked_rmse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """RMSE per image ``[B]`` over the pixels where ``mask > 0.5``, all channels.

    Args:
        a, b: ``[B,C,H,W]``.
        mask: ``[B,1,H,W]``, ``[B,H,W]`` or ``[H,W]`` (shared by the batch).

    An image with an empty mask gets NaN.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise DifflabError(
            f"masked_rmse: a and b must be [B,C,H,W] of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    bsz, c, h, w = a.shape
    m = mask
    if m.ndim == 2:
        m = m[None, None].expand(bsz, 1, h, w)
    elif m.ndim == 3:
        m = m[:, None]
    if m.shape != (bsz, 1, h, w):
        raise DifflabError(
            f"masked_rmse: mask must be [B,1,H,W], [B,H,W] or [H,W] matching images {tuple(a.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    sel = (m > 0.5).to(torch.promote_types(a.dtype, torch.float32))
    d2 = (a.to(sel.dtype) - b.to(sel.dtype)).pow(2) * sel
    return (d2.sum(dim=(1, 2, 3)) / (sel.sum(dim=(1, 2, 3)) * c)).sqrt()


# --------------------------------------------------------------------------------------------------- FID


def _as_features(x: Any, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise DifflabError(f"frechet_distance: {what} must be [N,D] with N >= 2, got shape {a.shape}")
    return a


def _trace_sqrt_product(sa: np.ndarray, sb: np.ndarray) -> float:
    """``tr(sqrtm(sa @ sb))``: scipy's ``sqrtm`` (real part) if available, else a symmetric eigen route."""
    try:
        from scipy import linalg
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        linalg = None
    if linalg is not None:
        covmean = linalg.sqrtm(sa @ sb)
        if not np.isfinite(covmean).all():
            eps = 1e-6 * np.eye(sa.shape[0])
            covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
        return float(np.real(np.trace(covmean)))
    # sa, sb are PSD: tr sqrt(sa sb) = tr sqrt(sa^1/2 sb sa^1/2), a symmetric PSD matrix
    ev, vec = np.linalg.eigh(sa)
    root = (vec * np.sqrt(np.clip(ev, 0, None))) @ vec.T
    inner = np.linalg.eigvalsh(root @ sb @ root)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` ``[N,D]`` and ``feats_b`` ``[M,D]``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with unbiased covariances (as in FID),
    computed in float64; the matrix square root's imaginary round-off is discarded.
    """
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise DifflabError(f"frechet_distance: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * _trace_sqrt_product(sa, sb))
