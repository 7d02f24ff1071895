"""Training-set sources: iterables of `SourceItem` (a video or image with an id and caption) over WebVid,
video2dataset, UCF-101, generic video/frame/image folders, or clips held in memory."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import MemVideoError
from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoClip, read_image, read_video

__all__ = [
    "ClipSource",
    "FolderSource",
    "FrameFolderSource",
    "ImageFolderSource",
    "SourceItem",
    "UCF101Source",
    "Video2DatasetSource",
    "WebVidSource",
    "training_folder_sources",
]


@dataclass
class SourceItem:
    """One training item: ``kind`` "video" or "image"; ``path`` on disk or an in-memory ``clip``."""

    id: str
    kind: str = "video"
    path: str | None = None
    caption: str = ""
    clip: VideoClip | None = None

    def load(self) -> VideoClip:
        """The item as a clip at its native frame rate (an image is a one-frame clip)."""
        if self.clip is not None:
            return self.clip
        if self.path is None:
            raise MemVideoError(f"source item {self.id!r} has neither a path nor a clip")
        clip = read_image(self.path) if self.kind == "image" else read_video(self.path)
        clip.id = self.id
        return clip


def _check_root(root: str | os.PathLike[str], who: str) -> Path:
    p = Path(root)
    if not p.is_dir():
        raise MemVideoError(f"{who}: folder {p} does not exist")
    return p


class ClipSource:
    """Clips already in memory (the testbed); clips with one frame or ``meta['kind'] == 'image'`` are images."""

    def __init__(self, clips: Iterable[VideoClip]) -> None:
        self.clips = list(clips)

    def __iter__(self) -> Iterator[SourceItem]:
        for c in self.clips:
            kind = "image" if c.meta.get("kind") == "image" or c.num_frames == 1 else "video"
            yield SourceItem(c.id, kind, c.source or None, c.meta.get("caption", ""), c)

    def fingerprint(self) -> str:
        return f"clips:{len(self.clips)}:{','.join(c.id for c in self.clips)[:2000]}"


class FolderSource:
    """Every video file under ``root`` (recursive), ids = paths relative to root without suffix; optional
    ``captions_csv`` with columns ``path,caption``."""

    def __init__(
        self, root: str | os.PathLike[str], captions_csv: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = _check_root(root, "FolderSource")
        self.captions: dict[str, str] = {}
        if captions_csv is not None:
            rows = _read_csv(captions_csv, ("path", "caption"))
            missing = [r["path"] for r in rows if not (self.root / r["path"]).exists()]
            if missing:
                raise MemVideoError(
                    f"{captions_csv}: {len(missing)} caption paths do not exist under {self.root}, e.g. {missing[:5]}"
                )
            self.captions = {str(Path(r["path"])): r["caption"] for r in rows}

    def files(self) -> list[Path]:
        return sorted(
            p
            for p in self.root.rglob("*")
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and ".tmp" not in p.name
        )

    def __iter__(self) -> Iterator[SourceItem]:
        for p in self.files():
            rel = p.relative_to(self.root)
            yield SourceItem(str(rel.with_suffix("")), "video", str(p), self.captions.get(str(rel), ""))

    def fingerprint(self) -> str:
        return f"folder:{self.root.resolve()}:{len(self.files())}"


class ImageFolderSource:
    """Every image under ``root`` (recursive): co-training images, matched for content only."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root, "ImageFolderSource")

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def __iter__(self) -> Iterator[SourceItem]:
        for p in self.files():
            yield SourceItem(str(p.relative_to(self.root).with_suffix("")), "image", str(p))

    def fingerprint(self) -> str:
        return f"images:{self.root.resolve()}:{len(self.files())}"


class FrameFolderSource:
    """Frame folders ``root/<video_id>/*.png``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root, "FrameFolderSource")

    def __iter__(self) -> Iterator[SourceItem]:
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            yield SourceItem(d.name, "video", str(d))

    def fingerprint(self) -> str:
        return f"frames:{self.root.resolve()}"


class WebVidSource:
    """WebVid-style CSV (``videoid, contentUrl, duration, page_dir, name``; name = caption) with videos at
    ``root/{page_dir}/{videoid}.mp4`` or ``root/{videoid}.mp4`` (auto-detected per row)."""

    COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")

    def __init__(self, csv_path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root, "WebVidSource")
        self.csv_path = Path(csv_path)
        self.rows = _read_csv(csv_path, self.COLUMNS)

    def __iter__(self) -> Iterator[SourceItem]:
        for r in self.rows:
            nested = self.root / r["page_dir"] / f"{r['videoid']}.mp4"
            flat = self.root / f"{r['videoid']}.mp4"
            path = nested if nested.exists() else flat
            if path.exists():
                yield SourceItem(str(r["videoid"]), "video", str(path), r["name"])

    def fingerprint(self) -> str:
        return f"webvid:{self.csv_path.resolve()}:{len(self.rows)}"


class Video2DatasetSource:
    """video2dataset "files" output: ``root/{shard}/{key}.mp4`` with ``.txt`` or ``.json`` caption sidecars."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root, "Video2DatasetSource")

    def __iter__(self) -> Iterator[SourceItem]:
        for p in sorted(self.root.glob("*/*.mp4")):
            caption = ""
            if p.with_suffix(".txt").exists():
                caption = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
            elif p.with_suffix(".json").exists():
                caption = str(
                    json.loads(p.with_suffix(".json").read_text(encoding="utf-8")).get("caption", "")
                )
            yield SourceItem(f"{p.parent.name}/{p.stem}", "video", str(p), caption)

    def fingerprint(self) -> str:
        return f"v2d:{self.root.resolve()}"


class UCF101Source:
    """UCF-101: ``root/<Class>/v_<Class>_gXX_cYY.avi``; the class is the caption. ``split_file`` (e.g.
    ``trainlist01.txt``) restricts to the listed videos."""

    def __init__(
        self, root: str | os.PathLike[str], split_file: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = _check_root(root, "UCF101Source")
        self.keep: set[str] | None = None
        if split_file is not None:
            sp = Path(split_file)
            if not sp.is_file():
                raise MemVideoError(f"UCF101Source: split file {sp} does not exist")
            self.keep = {line.split()[0] for line in sp.read_text().splitlines() if line.strip()}

    def __iter__(self) -> Iterator[SourceItem]:
        for p in sorted(self.root.glob("*/*.avi")):
            rel = f"{p.parent.name}/{p.name}"
            if self.keep is None or rel in self.keep:
                yield SourceItem(p.stem, "video", str(p), p.parent.name)

    def fingerprint(self) -> str:
        return f"ucf101:{self.root.resolve()}"


def _read_csv(path: str | os.PathLike[str], columns: tuple[str, ...]) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise MemVideoError(f"{p}: CSV file does not exist")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise MemVideoError(f"{p}: missing columns {missing}; expected columns {list(columns)}")
        return list(reader)


def training_folder_sources(root: str | os.PathLike[str]) -> list[FolderSource | ImageFolderSource]:
    """A training folder as sources: its videos (recursive) and, when present, its images."""
    p = _check_root(root, "training folder")
    sources: list[FolderSource | ImageFolderSource] = [FolderSource(p)]
    if any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.rglob("*") if q.is_file()):
        sources.append(ImageFolderSource(p))
    if not any(True for s in sources for _ in s):
        raise MemVideoError(f"{p}: no videos ({', '.join(VIDEO_SUFFIXES)}) or images found")
    return sources
