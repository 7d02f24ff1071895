"""Face cropping (largest face, 1.3× margin, square, resized) and evenly spaced video frame sampling.

Detectors: ``skimage-lbp`` (scikit-image's bundled LBP frontal-face cascade, the default),
``opencv-haar`` (the Haar cascade bundled with opencv-python-headless < 5), ``mtcnn`` (facenet-pytorch,
optional) and ``none`` (already-cropped data: a centre square). Without a detected face the crop
falls back to the centre square and ``face_found`` is False.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import even_indices
from .errors import ForgeryKDError

__all__ = ["DETECTORS", "FaceCrop", "FaceCropper", "extract_frames"]

DETECTORS = ("skimage-lbp", "opencv-haar", "mtcnn", "none")


@dataclass
class FaceCrop:
    """A square crop ``image`` (``size × size`` RGB) and its source box ``(top, left, side)`` in pixels."""

    image: Image.Image
    box: tuple[int, int, int]
    face_found: bool


@functools.cache
def _skimage_cascade():
    from skimage import data, feature

    return feature.Cascade(data.lbp_frontal_face_cascade_filename())


@functools.cache
def _opencv_cascade():
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved Haar cascades out of the main package
        raise ForgeryKDError(
            f"detector='opencv-haar' needs cv2.CascadeClassifier, which OpenCV {cv2.__version__} lacks; "
            "use detector='skimage-lbp' or install opencv-python-headless<5"
        )
    return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))


class FaceCropper:
    """Find the largest face, expand its box by ``margin``, square it, resize to ``size``."""

    def __init__(self, detector: str = "skimage-lbp", margin: float = 1.3, size: int = 256) -> None:
        if detector not in DETECTORS:
            raise ForgeryKDError(f"detector={detector!r} is unknown; use one of {', '.join(DETECTORS)}")
        if margin < 1.0 or size < 1:
            raise ForgeryKDError(f"margin={margin}, size={size}: need margin >= 1 and size >= 1")
        self.detector, self.margin, self.size = detector, margin, size
        if detector == "mtcnn":
            try:
                from facenet_pytorch import MTCNN
            except ImportError as err:
                raise ForgeryKDError(
                    "detector='mtcnn' needs facenet-pytorch (pip install facenet-pytorch)"
                ) from err
            self._mtcnn = MTCNN(keep_all=True, device="cpu")

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(top, left, height, width)`` in pixels, largest first."""
        rgb = np.asarray(image.convert("RGB"))
        grey = rgb.astype(np.float32).mean(axis=2) / 255.0
        side = min(grey.shape)
        boxes: list[tuple[int, int, int, int]] = []
        if self.detector == "skimage-lbp":
            found = _skimage_cascade().detect_multi_scale(
                img=grey,
                scale_factor=1.2,
                step_ratio=1,
                min_size=(max(20, side // 12),) * 2,
                max_size=(side, side),
            )
            boxes = [(d["r"], d["c"], d["height"], d["width"]) for d in found]
        elif self.detector == "opencv-haar":
            found = _opencv_cascade().detectMultiScale((grey * 255).astype(np.uint8), 1.1, 5)
            boxes = [(int(y), int(x), int(h), int(w)) for x, y, w, h in found]
        elif self.detector == "mtcnn":
            found, _ = self._mtcnn.detect(Image.fromarray(rgb))
            boxes = [
                (int(y0), int(x0), int(y1 - y0), int(x1 - x0))
                for x0, y0, x1, y1 in (found if found is not None else [])
            ]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)

    def __call__(self, image: Image.Image) -> FaceCrop:
        image = image.convert("RGB")
        w, h = image.size
        boxes = [] if self.detector == "none" else self.detect(image)
        if boxes:
            top, left, bh, bw = boxes[0]
            cy, cx = top + bh / 2, left + bw / 2
            side = min(round(max(bh, bw) * self.margin), w, h)
        else:
            cy, cx, side = h / 2, w / 2, min(w, h)
        top = int(np.clip(round(cy - side / 2), 0, h - side))
        left = int(np.clip(round(cx - side / 2), 0, w - side))
        crop = image.crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.BILINEAR)
        return FaceCrop(crop, (top, left, side), bool(boxes))


def extract_frames(video_path: str | os.PathLike[str], n: int = 32) -> list[Image.Image]:
    """``n`` evenly spaced RGB frames of a video (all frames when it has fewer), decoded with PyAV."""
    path = Path(video_path)
    if not path.is_file():
        raise ForgeryKDError(f"video {path} does not exist")
    try:
        import av
    except ImportError as err:
        raise ForgeryKDError("reading videos needs PyAV: pip install 'forgery-kd[video]'") from err
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_image() for frame in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError) as err:
        raise ForgeryKDError(f"video {path}: cannot decode ({err})") from err
    if not frames:
        raise ForgeryKDError(f"video {path} has no frames")
    return [frames[i].convert("RGB") for i in even_indices(len(frames), n)]
