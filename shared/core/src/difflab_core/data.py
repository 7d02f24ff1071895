"""Deterministic datasets built from data bundled inside installed packages (no downloads).

* :func:`sample_photo` — scikit-image's bundled photos as ``Tensor[3, H, W]`` in ``[0, 1]``.
* :func:`digits` — scikit-learn's 1797 handwritten 8×8 digits, optionally resized.
* :func:`compose_digit` — paste a digit onto a coloured background with a coloured stroke.
* :class:`ImageCaptionDataset`, :func:`weighted_sampler` — image/caption pairs for training loops.
* :class:`EpochSampler` — a shuffling sampler whose order depends only on ``(seed, epoch)``,
  which is what makes an interrupted-and-resumed training run see the same batches.
* :func:`segment_labels`, :func:`class_features` — synthetic frame-label sequences and per-frame
  features (class prototype + noise) for temporal action segmentation tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from difflab_core.errors import DifflabError

__all__ = [
    "PHOTO_NAMES",
    "EpochSampler",
    "ImageCaptionDataset",
    "class_features",
    "compose_digit",
    "digits",
    "epoch_seed",
    "resize_square",
    "sample_photo",
    "segment_labels",
    "weighted_sampler",
]


def _skimage_loader(attr: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data as skdata

        return getattr(skdata, attr)()

    return load


_PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage_loader("astronaut"),
    "coffee": _skimage_loader("coffee"),
    "chelsea": _skimage_loader("chelsea"),
    "rocket": _skimage_loader("rocket"),
    "immunohistochemistry": _skimage_loader("immunohistochemistry"),
    "logo": _skimage_loader("logo"),
    "colorwheel": _skimage_loader("colorwheel"),
    "retina": _skimage_loader("retina"),
    "horse": _skimage_loader("horse"),
    "camera": _skimage_loader("camera"),
    "hubble": _skimage_loader("hubble_deep_field"),
}

PHOTO_NAMES: tuple[str, ...] = tuple(_PHOTO_LOADERS)
"""Names accepted by :func:`sample_photo`."""


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed derived from ``(seed, epoch)``; stable across runs and platforms."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(epoch)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _check_size(size: int, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DifflabError(f"{name} must be a positive int, got {size!r}")
    return size


@functools.cache
def _raw_photo(name: str) -> np.ndarray:
    image = _PHOTO_LOADERS[name]()
    image.setflags(write=False)
    return image


def _to_float_rgb(image: np.ndarray) -> Tensor:
    """uint8/bool/float ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` array → ``Tensor[3, H, W]`` in [0, 1]."""
    if image.dtype == np.bool_:
        x = torch.from_numpy(image.astype(np.float32))
    elif np.issubdtype(image.dtype, np.integer):
        x = torch.from_numpy(image.astype(np.float32) / float(np.iinfo(image.dtype).max))
    else:
        x = torch.from_numpy(image.astype(np.float32))
    if x.ndim == 2:
        x = x[None].expand(3, -1, -1)
    else:
        x = x.permute(2, 0, 1)
        if x.shape[0] == 4:  # composite RGBA over white
            rgb, alpha = x[:3], x[3:]
            x = rgb * alpha + (1.0 - alpha)
        elif x.shape[0] != 3:
            raise DifflabError(f"expected 1, 3 or 4 channels, got {x.shape[0]}")
    return x.contiguous().clamp_(0.0, 1.0)


def resize_square(image: Tensor, size: int) -> Tensor:
    """Centre-crop ``image`` ``[C, H, W]`` to a square, then resize to ``[C, size, size]``.

    Resizing is bilinear with antialiasing (an area-like filter when shrinking), values clamped
    to the input's range [0, 1].
    """
    _check_size(size)
    if image.ndim != 3:
        raise DifflabError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[:, top : top + side, left : left + side]
    if side == size:
        return square.contiguous()
    resized = F.interpolate(
        square[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    return resized.clamp_(0.0, 1.0)


def sample_photo(name: str, size: int | None = None) -> Tensor:
    """A bundled scikit-image photo as ``Tensor[3, H, W]`` float32 in [0, 1].

    Args:
        name: one of :data:`PHOTO_NAMES`. Greyscale and binary images ("camera", "horse") are
            repeated to three channels; RGBA ("logo") is composited over white.
        size: if given, centre-crop to a square and resize to ``size × size``.
    """
    if name not in _PHOTO_LOADERS:
        raise DifflabError(f"unknown photo name {name!r}; valid names: {', '.join(PHOTO_NAMES)}")
    image = _to_float_rgb(_raw_photo(name))
    if size is not None:
        image = resize_square(image, size)
    return image


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits(size: int = 8, *, classes: Iterable[int] | None = None) -> tuple[Tensor, Tensor]:
    """scikit-learn's handwritten digits (1797 images, bundled with the package).

    Args:
        size: output side in pixels; the native 8×8 images are resized bilinearly when ``size != 8``.
        classes: keep only these digit labels (0–9), in the dataset's original order.

    Returns:
        ``(images, labels)``: ``Tensor[N, 1, size, size]`` float32 in [0, 1] (raw 0..16 divided by
        16) and ``LongTensor[N]``.
    """
    _check_size(size)
    raw_images, raw_labels = _raw_digits()
    images = torch.from_numpy(raw_images / 16.0).unsqueeze(1)
    labels = torch.from_numpy(raw_labels.copy())
    if classes is not None:
        wanted = sorted({int(c) for c in classes})
        if not wanted or any(c < 0 or c > 9 for c in wanted):
            raise DifflabError(f"classes must be a non-empty subset of 0..9, got {wanted}")
        keep = torch.isin(labels, torch.tensor(wanted))
        images, labels = images[keep], labels[keep]
    if size != 8:
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        images = images.clamp_(0.0, 1.0)
    return images.float().contiguous(), labels


def _check_rgb(rgb: Sequence[float], name: str) -> Tensor:
    values = torch.as_tensor(rgb, dtype=torch.float32)
    if values.shape != (3,) or not bool(((values >= 0) & (values <= 1)).all()):
        raise DifflabError(f"{name} must be three floats in [0, 1], got {rgb!r}")
    return values


def compose_digit(
    digit: Tensor,
    *,
    size: int,
    fg_rgb: Sequence[float],
    bg_rgb: Sequence[float],
    top_left: tuple[int, int],
) -> Tensor:
    """Paint a digit stroke in ``fg_rgb`` onto a ``bg_rgb`` canvas.

    The digit's intensity (``[1, h, w]`` in [0, 1]) is the blend weight:
    ``pixel = (1 - m) * bg + m * fg``, where ``m`` is the digit placed with its top-left corner at
    ``top_left = (row, col)`` and zero elsewhere.

    Returns:
        ``Tensor[3, size, size]`` float32 in [0, 1].
    """
    _check_size(size)
    if digit.ndim != 3 or digit.shape[0] != 1:
        raise DifflabError(f"digit must be [1, h, w], got shape {tuple(digit.shape)}")
    fg, bg = _check_rgb(fg_rgb, "fg_rgb"), _check_rgb(bg_rgb, "bg_rgb")
    _, h, w = digit.shape
    row, col = (int(v) for v in top_left)
    if row < 0 or col < 0 or row + h > size or col + w > size:
        raise DifflabError(
            f"a {h}x{w} digit at top_left={(row, col)} does not fit a {size}x{size} canvas; "
            f"row must be in [0, {size - h}] and col in [0, {size - w}]"
        )
    mask = torch.zeros(1, size, size)
    mask[:, row : row + h, col : col + w] = digit.detach().float().cpu().clamp(0.0, 1.0)
    return (1.0 - mask) * bg[:, None, None] + mask * fg[:, None, None]


class ImageCaptionDataset(Dataset):
    """Images paired with captions; items are ``{"pixel_values", "caption", "index"}``.

    Args:
        images: ``Tensor[N, C, H, W]`` (or a sequence of ``[C, H, W]`` tensors).
        captions: ``N`` strings.
        weights: optional non-negative sampling weights ``[N]`` (see :meth:`sampler`).
    """

    def __init__(
        self,
        images: Tensor | Sequence[Tensor],
        captions: Sequence[str],
        weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        if len(images) != len(captions):
            raise DifflabError(f"got {len(images)} images but {len(captions)} captions; they must match")
        self.images = images
        self.captions = list(captions)
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (len(self.captions),) or bool((w < 0).any()) or not bool(w.isfinite().all()):
                raise DifflabError(
                    f"weights must be {len(self.captions)} finite non-negative numbers, got shape {tuple(w.shape)}"
                )
            self.weights = w

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.images[index], "caption": self.captions[index], "index": index}

    def sampler(self, num_samples: int | None = None, seed: int = 0) -> WeightedRandomSampler:
        """A seeded weighted sampler over this dataset (needs ``weights``); ``num_samples`` defaults to ``N``."""
        if self.weights is None:
            raise DifflabError("ImageCaptionDataset.sampler needs weights=...; pass them to the constructor")
        return weighted_sampler(self.weights, len(self) if num_samples is None else num_samples, seed)


class _EpochWeightedSampler(WeightedRandomSampler):
    """``WeightedRandomSampler`` whose draws depend only on ``(seed, epoch)``; see :func:`weighted_sampler`."""

    def __init__(self, weights: Tensor, num_samples: int, seed: int, replacement: bool) -> None:
        super().__init__(weights, num_samples, replacement=replacement, generator=torch.Generator())
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        yield from super().__iter__()
        self.epoch += 1


def weighted_sampler(
    weights: Tensor | Sequence[float], num_samples: int, seed: int, *, replacement: bool = True
) -> WeightedRandomSampler:
    """A ``torch.utils.data.WeightedRandomSampler`` drawing with a generator seeded from ``seed``.

    Each pass re-seeds from ``(seed, epoch)``, so two samplers with the same seed yield the same
    indices, and ``set_epoch(e)`` (called by :class:`difflab_core.train.Trainer`) reproduces pass ``e``.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or len(w) == 0 or bool((w < 0).any()) or not bool(w.sum() > 0):
        raise DifflabError(
            "weights must be a non-empty 1-D sequence of non-negative numbers with a positive sum"
        )
    if num_samples < 1:
        raise DifflabError(f"num_samples must be >= 1, got {num_samples}")
    return _EpochWeightedSampler(w, int(num_samples), seed, replacement)


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled (or not) with a permutation that depends only on ``(seed, epoch)``.

    The epoch advances by one after each complete pass; :meth:`set_epoch` sets it explicitly, which
    is how a resumed training run reproduces the order of an uninterrupted one.
    """

    def __init__(self, num_items: int, seed: int = 0, *, shuffle: bool = True) -> None:
        if num_items < 1:
            raise DifflabError(f"EpochSampler needs at least one item, got num_items={num_items}")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """The index order of pass ``epoch``."""
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        yield from self.order(self.epoch)
        self.epoch += 1

    def __len__(self) -> int:
        return self.num_items


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def segment_labels(
    num_frames: int,
    num_classes: int,
    seed: int | np.random.Generator = 0,
    *,
    min_len: int = 8,
    max_len: int = 25,
) -> np.ndarray:
    """A synthetic frame-label sequence ``(num_frames,)`` int64 of class ids in ``0..num_classes-1``.

    Segments have lengths drawn uniformly in ``[min_len, max_len]`` (the last one is cut at
    ``num_frames``) and neighbouring segments always differ in class.
    """
    _check_size(num_frames, "num_frames")
    if num_classes < 2:
        raise DifflabError(
            f"num_classes must be >= 2 so that neighbouring segments differ, got {num_classes}"
        )
    if not 1 <= min_len <= max_len:
        raise DifflabError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    rng = _rng(seed)
    labels = np.empty(num_frames, dtype=np.int64)
    start, previous = 0, -1
    while start < num_frames:
        length = int(rng.integers(min_len, max_len + 1))
        label = int(rng.integers(num_classes - 1)) if previous >= 0 else int(rng.integers(num_classes))
        if previous >= 0 and label >= previous:
            label += 1
        labels[start : start + length] = label
        start, previous = start + length, label
    return labels


def class_features(
    labels: np.ndarray,
    prototypes: np.ndarray,
    seed: int | np.random.Generator = 0,
    *,
    noise_std: float = 0.8,
) -> np.ndarray:
    """Frame features ``(F, T)`` float32: column ``t`` is ``prototypes[labels[t]] + N(0, noise_std²)``.

    ``prototypes`` is ``(num_classes, F)``; labels index its rows.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise DifflabError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(prototypes):
        raise DifflabError(f"labels must lie in 0..{len(prototypes) - 1}, got {labels.min()}..{labels.max()}")
    rng = _rng(seed)
    noise = rng.normal(0.0, noise_std, size=(prototypes.shape[1], labels.size))
    return (np.asarray(prototypes, dtype=np.float64)[labels].T + noise).astype(np.float32)
