"""Turn raw FaceForensics++ or Celeb-DF v2 video trees into DeepfakeBench frame folders + JSON.

Frames are sampled evenly (``frames`` per video), face-cropped with :class:`FaceCropper` and written
as ``<out>/<dataset>/<video path>/<i>.png``; the JSON goes to ``<out>/json/<Name>.json``. The fraction
of frames with a detected face is reported per dataset.

* FaceForensics++: ``original_sequences/youtube/<c>/videos/*.mp4`` and
  ``manipulated_sequences/<Deepfakes|Face2Face|FaceSwap|NeuralTextures>/<c>/videos/<a>_<b>.mp4`` with
  the official ``train.json`` / ``val.json`` / ``test.json`` (lists of ``[a, b]`` id pairs).
* Celeb-DF v2: ``Celeb-real/``, ``YouTube-real/``, ``Celeb-synthesis/`` and
  ``List_of_testing_videos.txt`` (``<label> <path>`` lines, label 1 = real, 0 = synthesized; the
  file's labels are checked against the folders). Videos not listed form the train split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ForgeryKDError
from .faces import FaceCropper, extract_frames

__all__ = ["FF_MANIPULATIONS", "prepare_celebdf", "prepare_faceforensics"]

FF_MANIPULATIONS = {
    "Deepfakes": "FF-DF",
    "Face2Face": "FF-F2F",
    "FaceSwap": "FF-FS",
    "NeuralTextures": "FF-NT",
}
CELEBDF_FOLDERS = {
    "Celeb-real": "CelebDFv2_real",
    "YouTube-real": "CelebDFv2_real",
    "Celeb-synthesis": "CelebDFv2_fake",
}


def _extract(
    video: Path, target: Path, rel_root: Path, frames: int, cropper: FaceCropper
) -> tuple[list[str], int]:
    """Write the cropped frames of ``video``; returns their paths relative to ``rel_root`` and the faces found."""
    target.mkdir(parents=True, exist_ok=True)
    paths, faces = [], 0
    for i, frame in enumerate(extract_frames(video, frames)):
        crop = cropper(frame)
        crop.image.save(target / f"{i}.png")
        faces += crop.face_found
        paths.append((target / f"{i}.png").relative_to(rel_root).as_posix())
    return paths, faces


def _write_json(out: Path, name: str, tree: dict[str, Any]) -> Path:
    path = out / "json" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: tree}, indent=1) + "\n")
    return path


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ForgeryKDError(f"{path} does not exist; FaceForensics++ needs the official split files")
    try:
        pairs = json.loads(path.read_text())
        return [(str(a), str(b)) for a, b in pairs]
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ForgeryKDError(f"{path}: expected a JSON list of [id, id] pairs ({err})") from err


def prepare_faceforensics(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    compression: str = "c23",
    frames: int = 32,
    cropper: FaceCropper | None = None,
    splits_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Prepare FaceForensics++ at one compression level; returns ``{"json", "videos", "face_fraction"}``."""
    root, out = Path(root), Path(out)
    cropper = cropper or FaceCropper()
    splits = {s: _read_pairs(Path(splits_dir or root) / f"{s}.json") for s in ("train", "val", "test")}
    tree: dict[str, Any] = {
        label: {s: {compression: {}} for s in splits} for label in ["FF-real", *FF_MANIPULATIONS.values()]
    }
    sources = [("original_sequences/youtube", "FF-real")] + [
        (f"manipulated_sequences/{folder}", label) for folder, label in FF_MANIPULATIONS.items()
    ]
    videos = frames_total = faces_total = 0
    for rel, label in sources:
        folder = root / rel / compression / "videos"
        if not folder.is_dir():
            raise ForgeryKDError(
                f"{folder} does not exist; is {root} a FaceForensics++ download with {compression}?"
            )
        for split, pairs in splits.items():
            if label == "FF-real":
                wanted = sorted({v for pair in pairs for v in pair})
            else:
                wanted = sorted({f"{a}_{b}" for a, b in pairs} | {f"{b}_{a}" for a, b in pairs})
            for vid in wanted:
                video = folder / f"{vid}.mp4"
                if not video.is_file():
                    continue
                target = out / "FaceForensics++" / rel / compression / "frames" / vid
                paths, faces = _extract(video, target, out, frames, cropper)
                tree[label][split][compression][vid] = {"label": label, "frames": paths}
                videos += 1
                frames_total += len(paths)
                faces_total += faces
    if videos == 0:
        raise ForgeryKDError(f"{root}: no videos named in the split files were found")
    path = _write_json(out, "FaceForensics++", tree)
    return {"json": path, "videos": videos, "face_fraction": faces_total / max(1, frames_total)}


def prepare_celebdf(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frames: int = 32,
    cropper: FaceCropper | None = None,
) -> dict[str, Any]:
    """Prepare Celeb-DF v2 (test split from ``List_of_testing_videos.txt``, the rest as train)."""
    root, out = Path(root), Path(out)
    cropper = cropper or FaceCropper()
    listing = root / "List_of_testing_videos.txt"
    if not listing.is_file():
        raise ForgeryKDError(f"{listing} does not exist; is {root} a Celeb-DF v2 download?")
    test: set[str] = set()
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            flag, rel = line.split()
        except ValueError as err:
            raise ForgeryKDError(f"{listing}:{n}: expected '<label> <path>', got {line!r}") from err
        folder = rel.split("/")[0]
        if folder not in CELEBDF_FOLDERS:
            raise ForgeryKDError(f"{listing}:{n}: unknown folder {folder!r}")
        if (flag == "1") != CELEBDF_FOLDERS[folder].endswith("_real"):
            raise ForgeryKDError(
                f"{listing}:{n}: label {flag} contradicts folder {folder} (1 = real, 0 = fake)"
            )
        test.add(rel)
    tree: dict[str, Any] = {
        "CelebDFv2_real": {"train": {}, "test": {}},
        "CelebDFv2_fake": {"train": {}, "test": {}},
    }
    frames_total = faces_total = 0
    for folder, label in CELEBDF_FOLDERS.items():
        for video in sorted((root / folder).glob("*.mp4")):
            rel = f"{folder}/{video.name}"
            split = "test" if rel in test else "train"
            paths, faces = _extract(video, out / "Celeb-DF-v2" / folder / video.stem, out, frames, cropper)
            tree[label][split][f"{folder}/{video.stem}"] = {"label": label, "frames": paths}
            frames_total += len(paths)
            faces_total += faces
    for label in tree:
        if not tree[label]["test"]:
            raise ForgeryKDError(f"{listing}: the test split has no {label} videos; both classes are needed")
    path = _write_json(out, "Celeb-DF-v2", tree)
    videos = sum(len(v) for splits in tree.values() for v in splits.values())
    return {"json": path, "videos": videos, "face_fraction": faces_total / max(1, frames_total)}
