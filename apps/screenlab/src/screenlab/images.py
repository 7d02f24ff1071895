"""The images a screening job reads: a folder scanned recursively, with the truth its layout gives.

An image's category is known when its parent folder (relative to the root) is named like a category
(``root/<category>/<image>``); images elsewhere (a flat folder, other sub-folders) are labelled but not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from collage_prompt.data import IMAGE_SUFFIXES
from collage_prompt.prompt import ClassList

from .errors import ScreenlabError

__all__ = ["ScreenItem", "categories_from_folders", "load_image", "scan_folder"]


@dataclass
class ScreenItem:
    """One image to screen: ``id`` (its path relative to the root, POSIX), the file, the index of its true
    category (None: unknown), its ``(width, height)`` and whether it is a known forgery (1), known real (0) or unknown (None)."""

    id: str
    path: Path
    size: tuple[int, int]
    truth: int | None = None
    forged: int | None = None


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_root(root: Path) -> list[Path]:
    if not root.exists():
        raise ScreenlabError(f"{root}: folder not found")
    if not root.is_dir():
        raise ScreenlabError(f"{root}: not a folder")
    files = _image_files(root)
    if not files:
        raise ScreenlabError(
            f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files, also in sub-folders)"
        )
    return files


def categories_from_folders(root: str | Path) -> ClassList:
    """The names of ``root``'s sub-folders that hold images, as categories (``root/<category>/<image>``)."""
    root = Path(root)
    rels = [p.relative_to(root) for p in _check_root(root)]
    names = sorted({rel.parts[0] for rel in rels if len(rel.parts) == 2})
    if len(names) < 2:
        raise ScreenlabError(
            f"{root}: give the categories with --labels a,b,c (or sort the images into root/<category>/ "
            "sub-folders, at least two)"
        )
    return ClassList.from_names(names)


def load_image(path: Path) -> Image.Image:
    """``path`` as an RGB image; an unreadable file raises an error naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ScreenlabError(f"{path}: cannot read this image ({type(err).__name__})") from None


def scan_folder(
    root: str | Path, categories: ClassList, forged: dict[str, int] | None = None
) -> list[ScreenItem]:
    """Every image under ``root`` (sorted by path), each opened once so that a corrupt file fails here.

    ``forged`` maps image ids to known forgery truth (the demo's synthetic set); the rest are unknown.
    """
    root = Path(root)
    files = _check_root(root)
    index = {name: i for i, name in enumerate(categories.names)}
    forged = forged or {}
    items = []
    for path in files:
        size = load_image(path).size
        rel = path.relative_to(root)
        folder = rel.parent.as_posix() if rel.parent != Path(".") else None
        item_id = rel.as_posix()
        items.append(ScreenItem(item_id, path, size, index.get(folder), forged.get(item_id)))
    return items
