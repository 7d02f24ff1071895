"""Labelled image sets: offline ones built from installed packages, image folders and CSV files."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from collage_prompt.errors import CollagePromptError
from collage_prompt.prompt import ClassList, load_classes

__all__ = ["CSVDataset", "ImageDataset", "ImageFolderDataset", "offline_dataset"]

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageDataset:
    """Images with class indices: ``images[i]`` (RGB PIL) has class ``labels[i]`` named ``classes.names[...]``."""

    images: list[Image.Image]
    labels: np.ndarray
    classes: ClassList
    ids: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> ImageDataset:
        """The images at ``index`` (array of positions)."""
        index = [int(i) for i in index]
        return ImageDataset(
            [self.images[i] for i in index], self.labels[index], self.classes, [self.ids[i] for i in index]
        )


def _digits(size: int) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [
        Image.fromarray((255 - x * 255 / 16).astype(np.uint8))
        .resize((size, size), Image.BILINEAR)
        .convert("RGB")
        for x in d.images
    ]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ImageDataset(
        images,
        d.target.astype(np.int64),
        ClassList.from_names(names),
        [f"digits/{i}" for i in range(len(images))],
    )


SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring"]
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "orange": (240, 150, 20)}


def _shape(kind: str, colour, size: int, rng: np.random.Generator) -> Image.Image:
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif kind == "cross":
        w = r / 3
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    else:
        d.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    return im


def _shapes(size: int, per_class: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images, labels, ids = [], [], []
    for k, kind in enumerate(SHAPES):
        for n in range(per_class):
            colour = list(COLOURS.values())[n % len(COLOURS)]
            images.append(_shape(kind, colour, size, rng))
            labels.append(k)
            ids.append(f"shapes/{kind}/{n}")
    return ImageDataset(images, np.array(labels), ClassList.from_names(SHAPES), ids)


TEXTURE_PHOTOS = ["camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel"]


def _textures(size: int, per_class: int, seed: int) -> ImageDataset:
    import skimage.data

    rng = np.random.default_rng(seed)
    images, labels, ids = [], [], []
    for k, name in enumerate(TEXTURE_PHOTOS):
        photo = np.asarray(getattr(skimage.data, name)())
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        h, w = photo.shape[:2]
        side = min(h, w) // 4
        for n in range(per_class):
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            images.append(
                Image.fromarray(photo[y : y + side, x : x + side].astype(np.uint8)).resize(
                    (size, size), Image.BILINEAR
                )
            )
            labels.append(k)
            ids.append(f"textures/{name}/{n}")
    return ImageDataset(images, np.array(labels), ClassList.from_names(TEXTURE_PHOTOS), ids)


def offline_dataset(name: str, size: int = 64, per_class: int = 100, seed: int = 0) -> ImageDataset:
    """``digits`` (scikit-learn, 1,797 images, 10 classes), ``shapes`` (6 procedural shapes in 4 colours) or
    ``textures`` (patches of 8 bundled scikit-image photos, one class per photo); ``size`` px squares."""
    if name == "digits":
        return _digits(size)
    if name == "shapes":
        return _shapes(size, per_class, seed)
    if name == "textures":
        return _textures(size, per_class, seed)
    raise CollagePromptError(f"unknown offline dataset {name!r}; use 'digits', 'shapes' or 'textures'")


def _open_all(paths: list[Path], skip_bad: bool) -> tuple[list[Image.Image], list[int]]:
    images, keep, bad = [], [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
            keep.append(i)
        except (OSError, UnidentifiedImageError) as exc:
            bad.append(f"{p} ({type(exc).__name__})")
    if bad:
        if not skip_bad:
            raise CollagePromptError(
                f"{len(bad)} unreadable image(s): "
                + "; ".join(bad[:10])
                + " (use skip_bad=True / --skip-bad)"
            )
        logger.warning("skipped %d unreadable image(s): %s", len(bad), "; ".join(bad[:10]))
    return images, keep


def ImageFolderDataset(
    root: str | Path, classes_file: str | Path | None = None, skip_bad: bool = False
) -> ImageDataset:
    """Images under ``root/<class>/*``; class names from the folder names, or ``classes_file`` for synonyms."""
    root = Path(root)
    if not root.is_dir():
        raise CollagePromptError(f"{root}: image folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise CollagePromptError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    classes = load_classes(classes_file) if classes_file else ClassList.from_names([f.name for f in folders])
    index = {n: i for i, n in enumerate(classes.names)}
    paths, labels = [], []
    for f in folders:
        if f.name not in index:
            raise CollagePromptError(f"{f}: folder is not a class in {classes_file}")
        files = sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index[f.name]] * len(files)
    if not paths:
        raise CollagePromptError(f"{root}: no images found")
    images, keep = _open_all(paths, skip_bad)
    return ImageDataset(images, np.array(labels)[keep], classes, [str(paths[i]) for i in keep])


def CSVDataset(
    path: str | Path, classes_file: str | Path | None = None, skip_bad: bool = False
) -> ImageDataset:
    """Images listed in a CSV with columns ``path,label`` (paths relative to the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise CollagePromptError(f"{path}: CSV file not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise CollagePromptError(f"{path}: expected a header 'path,label' and at least one row")
    names = sorted({r["label"] for r in rows})
    classes = load_classes(classes_file) if classes_file else ClassList.from_names(names)
    index = {n: i for i, n in enumerate(classes.names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise CollagePromptError(f"{path}: labels {unknown[:5]} are not in {classes_file}")
    paths = [(path.parent / r["path"]) for r in rows]
    images, keep = _open_all(paths, skip_bad)
    labels = np.array([index[r["label"]] for r in rows])
    return ImageDataset(images, labels[keep], classes, [str(paths[i]) for i in keep])
