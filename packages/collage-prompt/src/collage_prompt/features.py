"""Image feature extractors: offline handcrafted features (default), and timm and open_clip backbones with
local weights only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from skimage.feature import hog
from sklearn.decomposition import PCA

from collage_prompt.errors import CollagePromptError

__all__ = ["FeatureExtractor", "HandcraftedFeatures", "OpenClipFeatures", "TimmFeatures", "cosine_matrix"]

logger = logging.getLogger(__name__)


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


def _load_state(path: Path) -> dict:
    """A state dict from ``.safetensors`` or a torch checkpoint (``weights_only=True``), unwrapped from
    ``{"state_dict": ...}`` and DataParallel's ``module.`` prefix."""
    import torch

    if not path.is_file():
        raise CollagePromptError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors alike: the file is unreadable
        raise CollagePromptError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CollagePromptError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _open_clip_config(arch) -> dict:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) from a built-in architecture
    name, a model-config JSON file or a dict. Hub (``hf-hub:``) and ``local-dir:`` names are refused."""
    import copy

    import open_clip

    if isinstance(arch, dict):
        cfg, where = copy.deepcopy(arch), "model config dict"
    elif str(arch).endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise CollagePromptError(f"{path}: open_clip model config not found")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CollagePromptError(f"{path}: not valid JSON ({exc})") from None
        where = str(path)
    else:
        if ":" in str(arch) or str(arch) not in open_clip.list_models():
            raise CollagePromptError(
                f"OpenClipFeatures: unknown open_clip architecture {arch!r}; give a built-in name "
                "(open_clip.list_models()) or a model-config .json file"
            )
        cfg, where = open_clip.get_model_config(str(arch)), str(arch)
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise CollagePromptError(
            f"{where}: an open_clip model config needs embed_dim, vision_cfg and text_cfg"
        )
    if "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    return cfg


class OpenClipFeatures:
    """Unit-norm open_clip image embeddings ``(N, embed_dim)`` float32, built offline.

    ``arch`` is a built-in open_clip architecture name (e.g. ``"ViT-B-32"``), a model-config JSON file or a
    config dict; ``checkpoint_path`` a local ``.safetensors`` file or torch checkpoint (read with
    ``weights_only=True``) of the whole CLIP model. Nothing is downloaded. Images are preprocessed with
    open_clip's eval transform (resize, centre crop, the config's ``preprocess_cfg`` mean/std, else OpenAI's).
    """

    def __init__(self, arch, checkpoint_path: str | Path, device: str = "auto", batch_size: int = 64) -> None:
        import open_clip

        from difflab_core.device import resolve_device

        if batch_size < 1:
            raise CollagePromptError(f"OpenClipFeatures: batch_size={batch_size} must be >= 1")
        cfg = _open_clip_config(arch)
        pre = {
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
            **cfg.pop("preprocess_cfg", {}),
        }
        custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
        model_class = (
            (open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP)
            if custom_text
            else open_clip.CLIP
        )
        try:
            model = model_class(**cfg)
        except (TypeError, ValueError, KeyError, OSError) as exc:
            raise CollagePromptError(f"OpenClipFeatures: cannot build {arch!r} ({exc})") from None
        path = Path(checkpoint_path)
        state = _load_state(path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CollagePromptError(f"{path}: weights do not fit the architecture ({exc})"[:500]) from None
        for kind, keys in (("missing", missing), ("unexpected", unexpected)):
            visual = [k for k in keys if k.startswith("visual.")]
            if visual:
                raise CollagePromptError(
                    f"{path}: weights do not fit the architecture's image tower ({kind} {visual[:3]}...)"
                )
        if missing or unexpected:
            logger.info("%s: text-tower keys %d missing, %d unexpected", path, len(missing), len(unexpected))
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.embed_dim = int(cfg["embed_dim"])
        self.transform = open_clip.image_transform(
            cfg["vision_cfg"].get("image_size", 224),
            is_train=False,
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            resize_mode=pre.get("resize_mode"),
            interpolation=pre.get("interpolation"),
        )

    def __call__(self, images) -> np.ndarray:
        import torch

        images = list(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(_rgb(im)) for im in images[start : start + self.batch_size]])
            with torch.no_grad():
                out.append(
                    self.model.encode_image(batch.to(self.device), normalize=True).float().cpu().numpy()
                )
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def cosine_matrix(feats: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity (N, N) of feature rows."""
    f = np.asarray(feats, dtype=np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    return (f @ f.T).astype(np.float32)
