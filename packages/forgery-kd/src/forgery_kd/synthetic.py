"""An offline face-forgery dataset generated from images bundled with scikit-image.

Real "videos" are one source image (a crop of a bundled photo or an upsampled, colourised LFW face)
rendered as N jittered frames; fake videos carry one manipulation with a ground-truth mask:

* ``blend`` — an elliptical region from another source, Gaussian-feathered, mean/std colour transfer;
* ``splice`` — a hard-edged rectangle from another source;
* ``resample`` — a region down- then up-sampled ×2–4, up to ×6 when easy (nearest or bilinear);
* ``freq`` — a low-amplitude periodic grid or chirp inside the region (mostly visible in the DCT);
* ``double_jpeg`` — a region JPEG-recompressed at another quality off the 8×8 grid.

As in real face swaps, the new content of every fake region first passes a stand-in synthesis
decoder (:func:`_synthesis_trace`): rendered at half resolution, so the source's camera noise is gone,
and upsampled with a 2×2-periodic up-convolution checkerboard. That trace is shared by all kinds and
transfers to unseen sources; every real source has the same camera-noise level (``CAMERA_NOISE``), so
the trace is not confounded with the identity of the source.

Every frame is finally JPEG-compressed at quality 90 and written as PNG, in the DeepfakeBench layout
(``frames/<video>/<i>.png`` plus ``json/Synthetic.json``), masks under ``masks/<video>/<i>.png``.
``difficulty`` in [0, 1] shrinks amplitudes and regions (0 = obvious, 1 = subtle).
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import ForgeryKDError

__all__ = ["MANIPULATIONS", "SYNTHETIC_NAME", "SyntheticDataset", "make_synthetic_forgeries", "manipulate"]

MANIPULATIONS = ("blend", "splice", "resample", "freq", "double_jpeg")
SYNTHETIC_NAME = "Synthetic"
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")
JITTER = 6
CAMERA_NOISE = 0.02
"""Std of the sensor-like noise of every real source (a per-source level would make the noise-free
synthesised region an identity-dependent cue)."""


@dataclass
class SyntheticDataset:
    """Where :func:`make_synthetic_forgeries` wrote its data."""

    root: Path
    json_dir: Path
    name: str
    videos: dict[str, int]
    """Videos per split."""


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data

    out = []
    for name in PHOTOS:
        image = getattr(data, name)().astype(np.float32) / 255.0
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        out.append(image[..., :3])
    return tuple(out)


@functools.cache
def _lfw_faces() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()[:100].astype(np.float32)  # the first 100 are faces, [100, 25, 25]


def _resize(image: np.ndarray, size: int, resample: int = Image.BICUBIC) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(pil.resize((size, size), resample), dtype=np.float32) / 255.0


def _source(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random real image ``[side, side, 3]`` in [0, 1]: photo crop or colourised LFW face, with its own
    sensor-like Gaussian noise (which resampling and re-compression then remove locally)."""
    if rng.random() < 0.5:
        photo = _photos()[rng.integers(len(PHOTOS))]
        h, w, _ = photo.shape
        crop = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        image = _resize(photo[top : top + crop, left : left + crop], side)
    else:
        face = _lfw_faces()[rng.integers(100)]
        tint = np.array([1.0, 0.82, 0.68]) * rng.uniform(0.85, 1.15, size=3)
        image = np.clip(_resize(np.repeat(face[..., None], 3, axis=2), side) * tint, 0, 1).astype(np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    noise = rng.normal(0.0, CAMERA_NOISE, size=image.shape)  # one camera pipeline for every source
    return np.clip(image + noise, 0, 1).astype(np.float32)


def _region(rng: np.random.Generator, side: int, difficulty: float) -> tuple[int, int, int, int]:
    """A random box ``(top, left, height, width)`` covering 20–45 % of the side (smaller when harder)."""
    frac = rng.uniform(0.3, 0.55) * (1.0 - 0.4 * difficulty)
    hh, ww = max(4, int(side * frac)), max(4, int(side * frac * rng.uniform(0.8, 1.25)))
    ww = min(ww, side - 2)
    top, left = rng.integers(1, side - hh), rng.integers(1, side - ww)
    return int(top), int(left), hh, ww


def _colour_transfer(donor: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = mask > 0
    d_mean, d_std = donor[sel].mean(0), donor[sel].std(0) + 1e-6
    t_mean, t_std = target[sel].mean(0), target[sel].std(0) + 1e-6
    return np.clip((donor - d_mean) / d_std * t_std + t_mean, 0, 1)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(
        buffer, "JPEG", quality=quality
    )
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0


def _synthesis_trace(image: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """``image`` ``[S, S, 3]`` as a face-synthesis decoder would output it: rendered at half resolution
    (the camera noise is gone), upsampled ×2 by nearest neighbour and modulated by a random 2×2-periodic
    offset, the checkerboard that transposed convolutions leave (amplitude shrinks with ``difficulty``)."""
    side = image.shape[0]
    even = side // 2 * 2
    half = image[:even, :even].reshape(even // 2, 2, even // 2, 2, 3).mean(axis=(1, 3))
    up = image.copy()
    up[:even, :even] = np.repeat(np.repeat(half, 2, axis=0), 2, axis=1)
    gains = rng.normal(size=(2, 2))
    gains = (gains - gains.mean()) / (np.abs(gains - gains.mean()).max() + 1e-6)
    pattern = np.tile(gains, (side // 2 + 1, side // 2 + 1))[:side, :side]
    amplitude = 0.02 + 0.06 * (1.0 - difficulty)
    return np.clip(up + amplitude * pattern[..., None], 0, 1).astype(np.float32)


def manipulate(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    difficulty: float = 0.5,
    donor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one manipulation to ``image`` ``[S, S, 3]`` float in [0, 1].

    Returns ``(fake, mask)`` with ``mask`` ``[S, S]`` float in [0, 1] (> 0 where pixels may change;
    pixels where ``mask == 0`` are left exactly as they were). ``donor`` is the other source for
    ``blend`` and ``splice``.
    """
    if kind not in MANIPULATIONS:
        raise ForgeryKDError(f"manipulation {kind!r} is unknown; use one of {', '.join(MANIPULATIONS)}")
    if not 0.0 <= difficulty <= 1.0:
        raise ForgeryKDError(f"difficulty={difficulty}: must be in [0, 1]")
    side = image.shape[0]
    top, left, hh, ww = _region(rng, side, difficulty)
    box = np.zeros((side, side), dtype=np.float32)
    box[top : top + hh, left : left + ww] = 1.0
    fake = image.copy()
    strength = 1.0 - 0.6 * difficulty
    if kind in ("blend", "splice") and donor is None:
        raise ForgeryKDError(f"manipulation {kind!r} needs a donor image")
    # the new content of every fake region comes out of a synthesis decoder, as a swapped face does
    # (resample and double_jpeg get it after their own step, which would otherwise erase it)
    if kind in ("blend", "splice", "freq"):
        rendered = _synthesis_trace(image if kind == "freq" else donor, rng, difficulty)
    if kind in ("blend", "splice"):
        donor = rendered
        if kind == "blend":
            yy, xx = np.mgrid[:side, :side]
            cy, cx = top + hh / 2, left + ww / 2
            ellipse = (((yy - cy) / (hh / 2)) ** 2 + ((xx - cx) / (ww / 2)) ** 2 <= 1).astype(np.float32)
            alpha = ndimage.gaussian_filter(ellipse, sigma=max(1.0, hh / 8))
            alpha = alpha / alpha.max() * (0.6 + 0.4 * strength)
            alpha[alpha < 1e-3] = 0.0
            patch = difficulty * _colour_transfer(donor, image, ellipse) + (1 - difficulty) * donor
            fake = alpha[..., None] * patch + (1 - alpha[..., None]) * image
            mask = alpha
        else:
            fake[box > 0] = donor[box > 0]
            mask = box
    elif kind == "resample":
        factor = int(rng.integers(2, 5)) + round(2 * (1 - difficulty))
        mode = Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR
        small = max(1, side // factor)
        pil = Image.fromarray((image * 255).round().astype(np.uint8))
        coarse = pil.resize((small, small), Image.BILINEAR).resize((side, side), mode)
        resampled = np.asarray(coarse, dtype=np.float32) / 255.0
        fake[box > 0] = _synthesis_trace(resampled, rng, difficulty)[box > 0]
        mask = box
    elif kind == "freq":
        yy, xx = np.mgrid[:side, :side].astype(np.float32)
        amplitude = 0.03 + 0.12 * (1 - difficulty)
        if rng.random() < 0.5:
            period = float(rng.integers(2, 5))
            pattern = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        else:
            pattern = np.sin(np.pi * (xx**2 + yy**2) / (1.5 * side))
        fake[box > 0] = np.clip(rendered + (amplitude * pattern)[..., None], 0, 1)[box > 0]
        mask = box
    else:  # double_jpeg
        dy, dx = (int(v) for v in rng.integers(1, 8, size=2))
        quality = int(rng.integers(10, 25) + 50 * difficulty)
        shifted = np.roll(image, (dy, dx), axis=(0, 1))
        recompressed = np.roll(_jpeg(shifted, quality), (-dy, -dx), axis=(0, 1))
        fake[box > 0] = _synthesis_trace(recompressed, rng, difficulty)[box > 0]
        mask = box
    return fake.astype(np.float32), mask.astype(np.float32)


def _split_sizes(n_videos: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(n_videos, Mapping):
        sizes = {k: int(v) for k, v in n_videos.items()}
    else:
        n = int(n_videos)
        sizes = {"train": n, "val": max(2, n // 4), "test": max(2, n // 2)}
    bad = [k for k in sizes if k not in ("train", "val", "test")]
    if bad or any(v < 2 for v in sizes.values()):
        raise ForgeryKDError(f"n_videos={n_videos!r}: splits train/val/test with at least 2 videos each")
    return sizes


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def make_synthetic_forgeries(
    out_dir: str | os.PathLike[str],
    n_videos: int | Mapping[str, int] = 48,
    frames: int = 4,
    size: int = 64,
    seed: int = 0,
    difficulty: float = 0.5,
) -> SyntheticDataset:
    """Write a mini-DeepfakeBench dataset of real and manipulated "videos".

    Args:
        out_dir: output folder (``frames/``, ``masks/``, ``json/Synthetic.json``).
        n_videos: training videos (val gets a quarter, test a half), or ``{"train": n, "val": n, "test": n}``.
            Half of each split is real; fakes cycle through :data:`MANIPULATIONS`, and each fake is
            made from the source of the real video before it (FaceForensics++ pairs every
            manipulated video with its original), so content cannot tell the classes apart.
        frames: frames per video.
        size: frame side in pixels.
        seed: everything is a deterministic function of the seed.
        difficulty: 0 (obvious) … 1 (subtle).
    """
    if frames < 1 or size < 16:
        raise ForgeryKDError(f"frames={frames}, size={size}: need frames >= 1 and size >= 16")
    sizes = _split_sizes(n_videos)
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    canvas = size + JITTER
    # every label lists every split (possibly empty), as DeepfakeBench's files do
    tree = {f"Synth_{kind}": {split: {} for split in sizes} for kind in ("real", *MANIPULATIONS)}
    for split, count in sizes.items():
        fake_counter = 0
        for v in range(count):
            real = v % 2 == 0
            kind = "real" if real else MANIPULATIONS[fake_counter % len(MANIPULATIONS)]
            fake_counter += 0 if real else 1
            label = f"Synth_{kind}"
            video = f"{split}_{v:04d}_{kind}"
            if real:  # as in FaceForensics++, each fake is made from the real video before it
                source = _source(rng, canvas)
                image, mask = source, np.zeros((canvas, canvas), dtype=np.float32)
            else:
                image, mask = manipulate(source, kind, rng, difficulty, donor=_source(rng, canvas))
            paths = []
            for i in range(frames):
                dy, dx = (int(t) for t in rng.integers(0, JITTER + 1, size=2))
                gain = rng.uniform(0.97, 1.03)
                frame = np.clip(image[dy : dy + size, dx : dx + size] * gain, 0, 1)
                frame = _jpeg(frame, 90)
                rel = Path("frames") / video / f"{i}.png"
                _save_png(frame, root / rel)
                _save_png(mask[dy : dy + size, dx : dx + size], root / "masks" / video / f"{i}.png")
                paths.append(rel.as_posix())
            tree[label][split][video] = {"label": label, "frames": paths}
    json_dir = root / "json"
    json_dir.mkdir(parents=True, exist_ok=True)
    (json_dir / f"{SYNTHETIC_NAME}.json").write_text(json.dumps({SYNTHETIC_NAME: tree}, indent=1) + "\n")
    return SyntheticDataset(root=root, json_dir=json_dir, name=SYNTHETIC_NAME, videos=sizes)
