"""Video I/O: the `VideoClip` container, readers/writers (PyAV, imageio for gif, frame folders, .npy/.npz)
and `to_clip` for diffusers pipeline outputs.

A clip is ``frames`` ``Tensor[F,3,H,W]`` float32 in [0,1], RGB, frames first, plus its frame rate.
torchvision >= 0.28 removed ``read_video``, so decoding goes through PyAV directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import MemVideoError

__all__ = [
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "VideoClip",
    "read_image",
    "read_video",
    "resample_fps",
    "resize_frames",
    "to_clip",
    "to_clips",
    "write_video",
]

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif", ".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_FPS = 8.0
"""Frame rate assumed for frame folders, arrays and pipeline outputs that carry none."""

_LAYOUTS = ("FCHW", "FHWC", "CFHW")


@dataclass
class VideoClip:
    """One video: ``frames`` [F,3,H,W] float32 in [0,1], ``fps`` frames per second, an ``id``,
    the ``source`` it came from (a path or a description) and free-form ``meta``."""

    frames: Tensor
    fps: float = DEFAULT_FPS
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = self.frames
        where = self.id or self.source or "VideoClip"
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise MemVideoError(f"{where}: frames must be a Tensor [F,3,H,W], got {shape}")
        if x.shape[0] < 1:
            raise MemVideoError(f"{where}: the clip has no frames")
        if not torch.isfinite(x).all():
            raise MemVideoError(f"{where}: frames contain NaN or infinite values")
        if not self.fps or self.fps <= 0:
            raise MemVideoError(f"{where}: fps must be > 0, got {self.fps}")
        self.frames = x.float()

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.frames.shape[2]), int(self.frames.shape[3])

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def _size_tuple(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return int(h), int(w)


def resize_frames(frames: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    """Resize [N,3,H,W] to ``size`` (H, W) with antialiased bilinear filtering (area-like when shrinking)."""
    hw = _size_tuple(size)
    if hw is None or tuple(frames.shape[-2:]) == hw:
        return frames
    out = F.interpolate(frames, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def resample_fps(frames: Tensor, src_fps: float, fps: float | None) -> Tensor:
    """Nearest-frame resampling of [F,...] from ``src_fps`` to ``fps`` (None keeps every frame)."""
    if fps is None or abs(fps - src_fps) < 1e-6:
        return frames
    if fps <= 0:
        raise MemVideoError(f"fps must be > 0, got {fps}")
    n = frames.shape[0]
    count = max(1, int(np.floor((n - 1) * fps / src_fps + 1e-9)) + 1)
    idx = np.minimum(np.round(np.arange(count) * src_fps / fps).astype(np.int64), n - 1)
    return frames[torch.from_numpy(idx)]


def _array_to_frames(a: np.ndarray, where: str, layout: str = "auto") -> Tensor:
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.integer):
        x = torch.from_numpy(a.astype(np.float32) / float(np.iinfo(a.dtype).max))
    else:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if x.ndim == 3:  # [F,H,W] greyscale
        x = x[..., None].expand(-1, -1, -1, 3)
    if x.ndim != 4:
        raise MemVideoError(
            f"{where}: expected a video array [F,H,W,3] or [F,3,H,W], got shape {tuple(x.shape)}"
        )
    return _to_fchw(x, layout, where)


def _candidates(shape: tuple[int, ...]) -> list[str]:
    """Layouts of a 4-D shape whose channel axis has 3 entries."""
    axis = {"FCHW": 1, "FHWC": 3, "CFHW": 0}
    return [name for name, i in axis.items() if shape[i] == 3]


def _to_fchw(x: Tensor, layout: str, where: str) -> Tensor:
    """[F,3,H,W] from a 4-D tensor in ``layout`` ("auto", "FCHW", "FHWC", "CFHW")."""
    if layout == "auto":
        found = _candidates(tuple(x.shape))
        if len(found) != 1:
            raise MemVideoError(
                f"{where}: cannot tell the layout of shape {tuple(x.shape)} (could be {found or 'none'}); "
                f"pass layout= one of {_LAYOUTS}"
            )
        layout = found[0]
    layout = layout.upper()
    if layout == "FHWC":
        x = x.permute(0, 3, 1, 2)
    elif layout == "CFHW":
        x = x.permute(1, 0, 2, 3)
    elif layout != "FCHW":
        raise MemVideoError(f"{where}: layout must be 'auto' or one of {_LAYOUTS}, got {layout!r}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] != 3:
        raise MemVideoError(
            f"{where}: frames need 1, 3 or 4 channels, got shape {tuple(x.shape)} as {layout}"
        )
    if x.min() < -0.01:  # pipeline outputs in [-1, 1]
        x = (x + 1) / 2
    return x.clamp(0.0, 1.0).contiguous()


def to_clips(
    x: Any, layout: str = "auto", *, fps: float = DEFAULT_FPS, id_prefix: str = ""
) -> list[VideoClip]:
    """Pipeline outputs to clips: a PIL list (one video) or list of PIL lists, numpy/torch arrays
    [F,H,W,3], [F,3,H,W], [3,F,H,W] or batched [B,...], or an output object with ``.frames``/``.videos``.

    ``layout`` names the per-video layout ("FCHW", "FHWC", "CFHW"); "auto" refuses ambiguous shapes
    such as [3,3,H,W]. Values in [-1,1] are mapped to [0,1]; integer arrays are scaled by their maximum.
    """
    for attr in ("frames", "videos"):
        if hasattr(x, attr) and not isinstance(x, (Tensor, np.ndarray)):
            x = getattr(x, attr)
            break
    if isinstance(x, (list, tuple)) and x and _is_image(x[0]):
        x = [x]
    if isinstance(x, (list, tuple)):
        if not x:
            raise MemVideoError("to_clips: got an empty list")
        if all(isinstance(v, (list, tuple)) for v in x):
            videos = [np.stack([_image_array(im) for im in v]) for v in x]
            return [
                VideoClip(_array_to_frames(v, "to_clips", "FHWC"), fps=fps, id=f"{id_prefix}{i}")
                for i, v in enumerate(videos)
            ]
        return [c for i, v in enumerate(x) for c in to_clips(v, layout, fps=fps, id_prefix=f"{id_prefix}{i}")]
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise MemVideoError(f"to_clips: cannot read a video from a {type(x).__name__}")
    x = x.detach().cpu()
    if not x.is_floating_point():
        x = x.float() / (255.0 if x.dtype == torch.uint8 else float(x.max().clamp(min=1)))
    if x.ndim == 4:
        return [VideoClip(_to_fchw(x.float(), layout, "to_clips"), fps=fps, id=f"{id_prefix}0")]
    if x.ndim == 5:
        return [
            VideoClip(_to_fchw(v.float(), layout, "to_clips"), fps=fps, id=f"{id_prefix}{i}")
            for i, v in enumerate(x)
        ]
    raise MemVideoError(f"to_clips: expected a 4-D video or 5-D batch, got shape {tuple(x.shape)}")


def to_clip(x: Any, layout: str = "auto", *, fps: float = DEFAULT_FPS, id: str = "") -> VideoClip:
    """One clip from a pipeline output (see `to_clips`); a batch must hold exactly one video."""
    clips = to_clips(x, layout, fps=fps)
    if len(clips) != 1:
        raise MemVideoError(f"to_clip: the input holds {len(clips)} videos; use to_clips for batches")
    clip = clips[0]
    clip.id = id
    return clip


def _is_image(v: Any) -> bool:
    return hasattr(v, "convert") and hasattr(v, "size")


def _image_array(im: Any) -> np.ndarray:
    if _is_image(im):
        return np.asarray(im.convert("RGB"))
    return np.asarray(im)


def read_image(path: str | os.PathLike[str], *, size: int | tuple[int, int] | None = None) -> VideoClip:
    """A still image as a one-frame clip (a training image is a reference with M = 1)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MemVideoError(f"{p}: image file does not exist")
    try:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MemVideoError(f"{p}: not a readable image ({exc})") from exc
    frames = resize_frames(_array_to_frames(a[None], str(p), "FHWC"), size)
    return VideoClip(frames, fps=DEFAULT_FPS, id=p.stem, source=str(p), meta={"kind": "image"})


def _finish(
    frames: Tensor, src_fps: float, p: Path, *, max_frames: int | None, fps: float | None, size, meta: dict
) -> VideoClip:
    frames = resample_fps(frames, src_fps, fps)
    if max_frames is not None:
        frames = frames[:max_frames]
    frames = resize_frames(frames, size)
    return VideoClip(frames, fps=float(fps or src_fps), id=p.stem, source=str(p), meta=meta)


def read_video(
    path: str | os.PathLike[str],
    *,
    max_frames: int | None = None,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start_s: float = 0.0,
) -> VideoClip:
    """Read a video file (mp4/webm/avi/mkv/mov via PyAV, gif via imageio), a frame folder
    (sorted ``*.png``/``*.jpg``) or a ``.npy``/``.npz`` array (``frames`` [F,H,W,3], optional ``fps``).

    Args:
        max_frames: keep at most this many frames (after resampling).
        fps: resample to this frame rate (nearest frame); None keeps the native rate.
        size: resize frames to (H, W) or a square side.
        start_s: skip the first ``start_s`` seconds.
    """
    p = Path(path)
    if not p.exists():
        raise MemVideoError(f"{p}: video file does not exist")
    if p.is_dir():
        frames, src_fps, meta = _read_frame_folder(p)
    elif p.suffix.lower() in (".npy", ".npz"):
        frames, src_fps, meta = _read_array(p)
    elif p.suffix.lower() == ".gif":
        frames, src_fps, meta = _read_gif(p)
    else:
        frames, src_fps, meta = _read_av(p, start_s, max_frames, fps)
        start_s = 0.0
    if start_s > 0:
        frames = frames[round(start_s * src_fps) :]
        if frames.shape[0] == 0:
            raise MemVideoError(f"{p}: start_s={start_s} is past the last frame")
    return _finish(frames, src_fps, p, max_frames=max_frames, fps=fps, size=size, meta=meta)


def _read_frame_folder(p: Path) -> tuple[Tensor, float, dict]:
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MemVideoError(f"{p}: frame folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    frames = [read_image(f).frames for f in files]
    sizes = {tuple(f.shape[-2:]) for f in frames}
    if len(sizes) > 1:
        raise MemVideoError(f"{p}: frames have mismatched sizes {sorted(sizes)}; resize them to one size")
    fps_file = p / "fps.txt"
    fps = float(fps_file.read_text().strip()) if fps_file.is_file() else DEFAULT_FPS
    return torch.cat(frames), fps, {"kind": "frames", "files": len(files)}


def _read_array(p: Path) -> tuple[Tensor, float, dict]:
    try:
        if p.suffix.lower() == ".npy":
            a, fps = np.load(p, allow_pickle=False), DEFAULT_FPS
        else:
            with np.load(p, allow_pickle=False) as z:
                if "frames" not in z:
                    raise MemVideoError(f"{p}: .npz needs an array named 'frames' (found {list(z.keys())})")
                a = z["frames"]
                fps = float(z["fps"]) if "fps" in z else DEFAULT_FPS
    except (OSError, ValueError) as exc:
        if isinstance(exc, MemVideoError):
            raise
        raise MemVideoError(f"{p}: not a readable numpy file ({exc})") from exc
    return _array_to_frames(a, str(p)), fps, {"kind": "array"}


def _read_gif(p: Path) -> tuple[Tensor, float, dict]:
    import imageio.v3 as iio

    try:
        a = iio.imread(p, index=None)
        meta = iio.immeta(p)
    except Exception as exc:
        raise MemVideoError(f"{p}: not a readable gif ({type(exc).__name__}: {exc})") from exc
    if a.ndim == 3:
        a = a[None]
    duration_ms = float(meta.get("duration") or 0)
    fps = 1000.0 / duration_ms if duration_ms > 0 else DEFAULT_FPS
    return _array_to_frames(a, str(p), "FHWC"), fps, {"kind": "gif"}


def _read_av(
    p: Path, start_s: float, max_frames: int | None, fps: float | None
) -> tuple[Tensor, float, dict]:
    import av

    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MemVideoError(f"{p}: cannot open the video ({type(exc).__name__}: {exc})") from exc
    arrays: list[np.ndarray] = []
    try:
        if not container.streams.video:
            raise MemVideoError(f"{p}: the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        src_fps = float(rate) if rate else DEFAULT_FPS
        codec = stream.codec_context.name
        limit = None
        if max_frames is not None:
            limit = int(np.ceil(max_frames * src_fps / (fps or src_fps))) + 1
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else len(arrays) / src_fps
            if t + 1e-6 < start_s:
                continue
            arrays.append(frame.to_ndarray(format="rgb24"))
            if limit is not None and len(arrays) >= limit:
                break
    except av.error.FFmpegError as exc:
        if not arrays:
            raise MemVideoError(f"{p}: cannot decode the video ({type(exc).__name__}: {exc})") from exc
    finally:
        container.close()
    if not arrays:
        raise MemVideoError(f"{p}: no frame could be decoded (after start_s={start_s})")
    return _array_to_frames(np.stack(arrays), str(p), "FHWC"), src_fps, {"kind": "video", "codec": codec}


def write_video(
    path: str | os.PathLike[str], clip: VideoClip, codec: str = "libx264", *, crf: int = 12
) -> Path:
    """Write ``clip`` to ``path``: mp4/mkv/avi/mov/webm via PyAV (``codec``, yuv420p; ``crf`` for x264),
    ``.gif`` via imageio, ``.npy``/``.npz`` as uint8 [F,H,W,3]. Written to ``*.tmp`` and renamed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    tmp = p.with_name(f"{p.stem}.tmp{p.suffix}")
    a = (clip.frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if suffix == ".npy":
        np.save(tmp, a)
    elif suffix == ".npz":
        np.savez(tmp, frames=a, fps=np.float64(clip.fps))
    elif suffix == ".gif":
        import imageio.v3 as iio

        iio.imwrite(tmp, a, duration=1000.0 / clip.fps, loop=0)
    else:
        _write_av(tmp, a, clip.fps, codec, crf)
    os.replace(tmp, p)
    return p


def _write_av(path: Path, a: np.ndarray, fps: float, codec: str, crf: int) -> None:
    import av

    h, w = a.shape[1:3]
    if codec in ("libx264", "h264", "mpeg4") and (h % 2 or w % 2):
        raise MemVideoError(f"{path}: {codec} needs even frame sizes, got {h}x{w}; resize the clip first")
    try:
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf)}
            else:
                stream.bit_rate = 8_000_000
            for frame in a:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except (av.error.FFmpegError, ValueError) as exc:
        raise MemVideoError(f"{path}: cannot encode with codec {codec!r} ({exc})") from exc
