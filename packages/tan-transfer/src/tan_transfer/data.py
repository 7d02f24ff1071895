"""Target / source images: a local image folder, and two offline tasks (digits 0–4 → 9, photo patches → grass)."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab_core.data import resize_square

from .errors import TanTransferError

__all__ = [
    "IMAGE_SUFFIXES",
    "PHOTO_SOURCES",
    "FewShotTask",
    "digits_task",
    "load_captioned_folder",
    "load_image_folder",
    "photo_image",
    "photo_patch_task",
    "read_captions",
    "save_image_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PHOTO_SOURCES = ("camera", "coins", "moon", "page", "text", "horse", "clock")
PHOTO_TARGET = "grass"


def load_image_folder(
    path: str | Path, size: int, channels: int, *, skip_bad: bool = False, resize: bool = True
) -> Tensor:
    """The images of a flat folder (.png/.jpg/.jpeg/.webp, sorted by name) as ``[N, channels, size, size]`` in
    [−1, 1]: RGB (L when ``channels == 1``), shorter side resized, centre-cropped.

    Raises `TanTransferError` if the folder is missing, holds no readable image, holds corrupt files (unless
    ``skip_bad``; they are then skipped with a warning), or (``resize=False``) an image is not ``size × size``.
    Warns for fewer than 2 images, duplicates (same pixels), and (a note) images that were resized.
    """
    return _read_image_folder(path, size, channels, skip_bad=skip_bad, resize=resize)[0]


def load_captioned_folder(
    path: str | Path,
    size: int,
    channels: int,
    *,
    default: str = "",
    skip_bad: bool = False,
    resize: bool = True,
) -> tuple[Tensor, list[str]]:
    """`load_image_folder` plus one text per image: its line in the folder's ``captions.jsonl`` (`read_captions`),
    ``default`` for images without one. A caption naming no image of the folder raises (a typo would otherwise
    leave that image on ``default`` unnoticed); captions of files skipped as unreadable are dropped with them."""
    images, names, skipped = _read_image_folder(path, size, channels, skip_bad=skip_bad, resize=resize)
    captions = read_captions(path)
    unknown = sorted(set(captions) - set(names) - set(skipped))
    if unknown:
        raise TanTransferError(
            Path(path) / "captions.jsonl", f"captions for files that are not images here: {unknown[:10]}"
        )
    return images, [captions.get(name, default) for name in names]


def _read_image_folder(
    path: str | Path, size: int, channels: int, *, skip_bad: bool, resize: bool
) -> tuple[Tensor, list[str], list[str]]:
    """(images, their file names, unreadable file names skipped) — see `load_image_folder`."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TanTransferError(folder, "image folder not found")
    if channels not in (1, 3):
        raise TanTransferError("channels", f"must be 1 or 3, got {channels}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, names, bad, digests, converted = [], [], [], {}, []
    for file in files:
        try:
            with Image.open(file) as im:
                im.load()
                im = im.convert("L" if channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(file.name)
            continue
        if not resize and im.size != (size, size):
            raise TanTransferError(
                file, f"is {im.size[0]}×{im.size[1]}, the model needs {size}×{size} (--no-resize)"
            )
        if im.size != (size, size):
            converted.append(file.name)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        x = resize_square(x.contiguous(), size)
        digest = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()
        if digest in digests:
            warnings.warn(f"{folder}: {file.name} duplicates {digests[digest]}", stacklevel=3)
        digests.setdefault(digest, file.name)
        images.append(x * 2 - 1)
        names.append(file.name)
    if bad and not skip_bad:
        raise TanTransferError(
            folder, f"unreadable image files {bad[:10]}; fix or remove them, or pass --skip-bad"
        )
    if bad:
        warnings.warn(f"{folder}: skipped unreadable files {bad[:10]}", stacklevel=3)
    if converted:
        warnings.warn(
            f"{folder}: note: {len(converted)} images resized/cropped to {size}×{size} (e.g. {converted[:3]}); "
            "pass --no-resize to fail instead",
            stacklevel=3,
        )
    if not images:
        raise TanTransferError(folder, f"no readable images (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(images) < 2:
        warnings.warn(f"{folder}: only {len(images)} image; few-shot transfer expects about 10", stacklevel=3)
    return torch.stack(images).float(), names, bad


def read_captions(path: str | Path) -> dict[str, str]:
    """``captions.jsonl`` of an image folder (``{"file", "text"}`` per line) → ``{file: text}`` ({} if absent)."""
    file = Path(path) / "captions.jsonl"
    if not file.is_file():
        return {}
    out = {}
    for i, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["file"])] = str(rec["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TanTransferError(
                f"{file}:{i}", f"expected a JSON object with 'file' and 'text' ({err})"
            ) from err
    return out


def save_image_folder(images: Tensor, path: str | Path, prefix: str = "img") -> list[Path]:
    """Write images ``[N, C, H, W]`` in [−1, 1] as PNGs ``{prefix}_{i:04d}.png`` (L for 1 channel, else RGB)."""
    from PIL import Image

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(images.detach().cpu()):
        img = ((x.float() + 1) / 2).clamp(0, 1)
        arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        p = folder / f"{prefix}_{i:04d}.png"
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(p)
        paths.append(p)
    return paths


@dataclass
class FewShotTask:
    """A few-shot transfer task; all images ``[N, C, H, W]`` in [−1, 1].

    ``shots`` are the K target images used for training, ``target_all`` every target image (FID reference),
    ``source`` source-domain images (classifier training). ``target_class`` is set for digits tasks.
    """

    name: str
    source: Tensor
    shots: Tensor
    target_all: Tensor
    target_class: int | None = None
    source_classes: tuple[int, ...] = ()


def digits_task(
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4), target_class: int = 9, shots: int = 10, seed: int = 0
) -> FewShotTask:
    """Source: the 16×16 digits of ``source_classes``; target: ``shots`` random digits ``target_class`` (seeded)."""
    from difflab_core.testbed.digits import real_digits

    if target_class in source_classes:
        raise TanTransferError("target_class", f"{target_class} is also a source class {source_classes}")
    source, _ = real_digits(source_classes)
    target, _ = real_digits((target_class,))
    if not 1 <= shots <= len(target):
        raise TanTransferError("shots", f"must be in 1..{len(target)}, got {shots}")
    pick = torch.randperm(len(target), generator=torch.Generator().manual_seed(seed))[:shots]
    return FewShotTask(
        name=f"digits{''.join(map(str, source_classes))}->{target_class}",
        source=source * 2 - 1,
        shots=target[pick] * 2 - 1,
        target_all=target * 2 - 1,
        target_class=target_class,
        source_classes=tuple(source_classes),
    )


def _photo(name: str) -> Tensor:
    from skimage import color
    from skimage import data as skdata

    arr = getattr(skdata, name)()
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.iinfo(arr.dtype).max
    if arr.ndim == 3:
        arr = color.rgb2gray(arr[..., :3])
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]


def photo_image(name: str, scale: int = 4) -> Tensor:
    """scikit-image photo ``name`` in greyscale, ``[1, H, W]`` in [0, 1], average-pooled ``scale``× (as the
    photo-patch task cuts it)."""
    import torch.nn.functional as F

    if name not in (*PHOTO_SOURCES, PHOTO_TARGET):
        raise TanTransferError("photo", f"{name!r}: use one of {(*PHOTO_SOURCES, PHOTO_TARGET)}")
    if scale < 1:
        raise TanTransferError("scale", f"must be >= 1, got {scale}")
    img = _photo(name)
    return F.avg_pool2d(img[None], scale)[0] if scale > 1 else img


def _patches(image: Tensor, size: int, stride: int) -> Tensor:
    tiles = image.unfold(1, size, stride).unfold(2, size, stride)  # [1, nh, nw, size, size]
    return tiles.reshape(-1, 1, size, size)


def photo_patch_task(size: int = 16, shots: int = 10, seed: int = 0, *, scale: int = 4) -> FewShotTask:
    """Greyscale patches (1 channel, ``size``²) of scikit-image photos downscaled ``scale``×.

    Source: camera, coins, moon, page, text, horse, clock; target: ``shots`` random patches of ``grass``.
    """

    def load(name: str) -> Tensor:
        return _patches(photo_image(name, scale), size, size // 2)

    source = torch.cat([load(n) for n in PHOTO_SOURCES])
    target = load(PHOTO_TARGET)
    if not 1 <= shots <= len(target):
        raise TanTransferError("shots", f"must be in 1..{len(target)}, got {shots}")
    pick = torch.randperm(len(target), generator=torch.Generator().manual_seed(seed))[:shots]
    return FewShotTask(
        name=f"photo-patches->{PHOTO_TARGET}",
        source=source * 2 - 1,
        shots=target[pick] * 2 - 1,
        target_all=target * 2 - 1,
    )
