"""Image feature extractors: offline handcrafted features (default) and local-weight timm backbones."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from skimage.feature import hog
from sklearn.decomposition import PCA

from collage_prompt.errors import CollagePromptError

__all__ = ["FeatureExtractor", "HandcraftedFeatures", "TimmFeatures", "cosine_matrix"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images) -> (N, D) float32``."""

    def __call__(self, images) -> np.ndarray: ...


def _rgb(image) -> Image.Image:
    return (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB")


class HandcraftedFeatures:
    """HOG (scikit-image) + HSV histogram + 8x8 grey thumbnail of a ``size``-px resize, PCA to ``dim``.

    Call :meth:`fit` on training images first; features are then (N, dim) float32.
    """

    def __init__(self, dim: int = 64, size: int = 32, hist_bins: int = 8, seed: int = 0) -> None:
        self.dim, self.size, self.hist_bins, self.seed = dim, size, hist_bins, seed
        self._pca: PCA | None = None
        self._mean: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    def raw(self, images) -> np.ndarray:
        """Unreduced features (N, D_raw) float32."""
        rows = []
        for image in images:
            im = _rgb(image).resize((self.size, self.size), Image.BILINEAR)
            grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            h = hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
            hsv = np.asarray(im.convert("HSV"), dtype=np.float32) / 255.0
            bins = np.minimum((hsv * self.hist_bins).astype(np.int64), self.hist_bins - 1)
            hist = [np.bincount(bins[..., c].ravel(), minlength=self.hist_bins) / grey.size for c in range(3)]
            thumb = (
                np.asarray(im.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255.0
            )
            rows.append(np.concatenate([h, *hist, thumb]).astype(np.float32))
        return np.stack(rows)

    def fit(self, images) -> HandcraftedFeatures:
        """Fit standardisation and PCA on ``images``."""
        x = self.raw(images)
        self._mean, self._scale = x.mean(0), x.std(0) + 1e-6
        n = min(self.dim, x.shape[0], x.shape[1])
        self._pca = PCA(n_components=n, random_state=self.seed).fit((x - self._mean) / self._scale)
        return self

    def __call__(self, images) -> np.ndarray:
        if self._pca is None:
            raise CollagePromptError("HandcraftedFeatures: call fit(train_images) before extracting features")
        x = (self.raw(images) - self._mean) / self._scale
        return self._pca.transform(x).astype(np.float32)


class TimmFeatures:
    """Pooled features of a timm backbone (``timm.create_model(name, num_classes=0)``) with local weights.

    ``weights_path`` is a ``.safetensors`` file or a torch checkpoint (loaded with ``weights_only=True``).
    """

    def __init__(
        self, name: str, weights_path: str | Path | None, device: str = "auto", image_size: int = 224
    ) -> None:
        import timm
        import torch

        from difflab_core.device import resolve_device

        self.device = resolve_device(device)
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as exc:
            raise CollagePromptError(f"TimmFeatures: unknown timm model {name!r}") from exc
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise CollagePromptError(f"{path}: weights file not found")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
            missing, _ = self.model.load_state_dict(state, strict=False)
            if missing:
                raise CollagePromptError(f"{path}: weights do not fit {name} (missing {missing[:3]}...)")
        self.model.eval().to(self.device)
        cfg = self.model.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self.image_size = image_size

    def __call__(self, images) -> np.ndarray:
        import torch

        batch = np.stack(
            [
                np.asarray(_rgb(im).resize((self.image_size,) * 2, Image.BICUBIC), dtype=np.float32) / 255.0
                for im in images
            ]
        )
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2) - self.mean) / self.std
        with torch.no_grad():
            return self.model(x.to(self.device)).float().cpu().numpy()


def cosine_matrix(feats: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity (N, N) of feature rows."""
    f = np.asarray(feats, dtype=np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    return (f @ f.T).astype(np.float32)
