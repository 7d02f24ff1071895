"""The offline sprite testbed (spec section 5): synthetic moving-sprite videos with planted content copies
and motion copies and known labels, built from scikit-image photos and faces and scikit-learn digits.

Training and novel pools are disjoint (backgrounds, digits, faces), so negatives are truly novel.
`write_sprite_testbed` writes it as video files for folder-based audits (memguard's demo).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import MemVideoError
from .io import VideoClip, write_video

__all__ = [
    "GENERATED_TYPES",
    "NOVEL_PHOTOS",
    "TRAIN_PHOTOS",
    "SpriteMemTestbed",
    "SpriteTestbedData",
    "write_sprite_testbed",
]

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "grass", "brick")
NOVEL_PHOTOS = ("rocket", "immunohistochemistry", "hubble_deep_field", "gravel", "moon", "coins")
GENERATED_TYPES = ("negative", "content", "motion", "both", "partial", "image", "static", "pan")
_LABELS = {
    "negative": (False, False),
    "content": (True, False),
    "motion": (False, True),
    "both": (True, True),
    "partial": (True, False),
    "image": (True, False),
    "static": (False, False),
    "pan": (False, False),
}
SPRITE = 12
BG = 96


@cache
def _photo(name: str) -> Tensor:
    from skimage import data as skdata

    a = getattr(skdata, name)()
    x = torch.from_numpy(a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else float(a.max() or 1)))
    x = x[None].expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)[:3]
    h, w = x.shape[-2:]
    scale = 128 / min(h, w)
    size = (round(h * scale), round(w * scale))
    return F.interpolate(x[None], size=size, mode="area")[0].clamp(0, 1).contiguous()


@cache
def _sprite_pools() -> dict[str, Tensor]:
    from skimage import data as skdata

    d = torch.from_numpy(_digit_images() / 16.0)[:, None]
    d = F.interpolate(d, size=(SPRITE, SPRITE), mode="bilinear", align_corners=False).clamp(0, 1)
    faces = torch.from_numpy(skdata.lfw_subset().astype(np.float32))[:, None]
    faces = F.interpolate(faces, size=(SPRITE, SPRITE), mode="area").clamp(0, 1)
    return {"digits": d, "faces": faces}


def _digit_images() -> np.ndarray:
    """scikit-learn's 1797 8×8 digits [N,8,8] in 0..16, read from its bundled CSV (importing sklearn.datasets
    costs seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MemVideoError("the sprite testbed needs scikit-learn's bundled digits; install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    return np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :64].reshape(-1, 8, 8)


def _pool(family: str, novel: bool) -> Tensor:
    pool = _sprite_pools()[family]
    cut = 900 if family == "digits" else 100
    return pool[cut:] if novel else pool[:cut]


@dataclass
class _Sprite:
    rgb: Tensor  # [3,S,S]
    alpha: Tensor  # [1,S,S]


@dataclass
class _Scene:
    """Everything needed to render a clip: background [3,96,96], sprites, per-sprite positions [F,2] in the
    64×64 view (or scene coordinates for pans) and the viewport origin per frame [F,2]."""

    bg: Tensor
    sprites: list[_Sprite]
    paths: list[Tensor]
    view: Tensor


class SpriteMemTestbed:
    """Builder of the sprite testbed (spec section 5).

    Args:
        seed: everything follows from it.
        size: frame side (64). frames: clip length (16) at 8 fps. sprites: sprites per video (2).
        n_train: moving training videos (30; plus 5 static, 5 pans and 20 images).
        per_type: generated videos per type (negatives: twice that).
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 64,
        frames: int = 16,
        sprites: int = 2,
        n_train: int = 30,
        per_type: int = 12,
    ) -> None:
        if size + 2 * 8 > BG or size < 2 * SPRITE:
            raise MemVideoError(f"SpriteMemTestbed: size must be in {2 * SPRITE}..{BG - 16}, got {size}")
        if frames < 2:
            raise MemVideoError(f"SpriteMemTestbed: frames must be >= 2, got {frames}")
        if n_train < 1 or per_type < 1 or sprites < 1:
            raise MemVideoError("SpriteMemTestbed: n_train, per_type and sprites must be >= 1")
        self.seed, self.size, self.frames, self.sprites = seed, size, frames, sprites
        self.n_train, self.per_type = n_train, per_type
        self.fps = 8.0

    def config(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "size": self.size,
            "frames": self.frames,
            "sprites": self.sprites,
            "n_train": self.n_train,
            "per_type": self.per_type,
        }

    # ------------------------------------------------------------------ pieces

    def _background(self, rng: np.random.Generator, novel: bool) -> Tensor:
        photo = _photo(str(rng.choice(NOVEL_PHOTOS if novel else TRAIN_PHOTOS)))
        h, w = photo.shape[-2:]
        top, left = int(rng.integers(0, h - BG + 1)), int(rng.integers(0, w - BG + 1))
        return photo[:, top : top + BG, left : left + BG].clone()

    def _sprite(self, rng: np.random.Generator, family: str, novel: bool) -> _Sprite:
        pool = _pool(family, novel)
        g = pool[int(rng.integers(0, pool.shape[0]))]
        tint = torch.from_numpy(rng.uniform(0.2, 1.0, size=3).astype(np.float32))
        tint[int(rng.integers(0, 3))] = 1.0
        if family == "digits":
            return _Sprite(tint[:, None, None].expand(3, SPRITE, SPRITE).clone(), g.clone())
        return _Sprite(g * tint[:, None, None], torch.ones(1, SPRITE, SPRITE))

    def _trajectory(self, rng: np.random.Generator) -> Tensor:
        t = np.arange(self.frames, dtype=np.float64)
        hi = self.size - SPRITE
        axes = []
        for _ in range(2):
            c = rng.uniform(0.25 * hi, 0.75 * hi)
            pos = c + rng.uniform(-0.6, 0.6) * t
            for _ in range(2):
                pos = pos + rng.uniform(3, 9) * np.sin(rng.uniform(0.25, 0.8) * t + rng.uniform(0, 2 * np.pi))
            axes.append(np.clip(pos, 0, hi))
        return torch.from_numpy(np.stack(axes, axis=1)).float()  # [F,2] (x, y)

    def _static_path(self, rng: np.random.Generator) -> Tensor:
        hi = self.size - SPRITE
        p = torch.tensor(rng.uniform(0, hi, size=2), dtype=torch.float32)
        return p[None].expand(self.frames, 2).clone()

    def _centre_view(self) -> Tensor:
        o = (BG - self.size) / 2
        return torch.full((self.frames, 2), o)

    def _pan_view(self, rng: np.random.Generator) -> Tensor:
        span = BG - self.size
        speed = rng.uniform(0.8, 2.0)
        angle = rng.uniform(0, 2 * np.pi)
        v = np.array([np.cos(angle), np.sin(angle)]) * speed
        travel = v * (self.frames - 1)
        start = np.clip(span / 2 - travel / 2, 0, span)
        t = np.arange(self.frames)[:, None]
        return torch.from_numpy(np.clip(start + v * t, 0, span)).float()

    def _moving_scene(
        self, rng: np.random.Generator, novel: bool, family: str | None = None
    ) -> tuple[_Scene, str]:
        family = family or str(rng.choice(["digits", "faces"]))
        sprites = [self._sprite(rng, family, novel) for _ in range(self.sprites)]
        paths = [self._trajectory(rng) for _ in range(self.sprites)]
        return _Scene(self._background(rng, novel), sprites, paths, self._centre_view()), family

    def _static_scene(self, rng: np.random.Generator, novel: bool) -> _Scene:
        family = str(rng.choice(["digits", "faces"]))
        sprites = [self._sprite(rng, family, novel) for _ in range(self.sprites)]
        paths = [self._static_path(rng) for _ in range(self.sprites)]
        return _Scene(self._background(rng, novel), sprites, paths, self._centre_view())

    def _pan_scene(self, rng: np.random.Generator, novel: bool) -> _Scene:
        scene = self._static_scene(rng, novel)
        view = self._pan_view(rng)
        # sprites stay fixed in the scene: express their positions in scene coordinates minus the view
        centre = (BG - self.size) / 2
        scene.paths = [p + centre - view for p in scene.paths]
        scene.view = view
        return scene

    def render(self, scene: _Scene) -> Tensor:
        """[F,3,size,size] in [0,1]: sprites composited at rounded positions in a (sub-pixel) viewport."""
        out = []
        for f in range(self.frames):
            frame = _crop(scene.bg, scene.view[f], self.size)
            for sp, path in zip(scene.sprites, scene.paths, strict=True):
                _paste(frame, sp, path[f])
            out.append(frame)
        return torch.stack(out)

    @staticmethod
    def _perturb(frames: Tensor, rng: np.random.Generator) -> Tensor:
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        noise = torch.randn(frames.shape, generator=g) * 0.02
        return (frames + noise + float(rng.uniform(-0.05, 0.05))).clamp(0, 1)

    # ------------------------------------------------------------------ build

    def build(self, cache_dir: str | os.PathLike[str] | None = None) -> SpriteTestbedData:
        """Render the training set and the labelled generated set (about 3 s; cached when ``cache_dir``)."""
        if self.frames < 9:
            raise MemVideoError(
                f"SpriteMemTestbed.build: frames must be >= 9 (partial copies use frames 5-8), got "
                f"{self.frames}"
            )
        if cache_dir is not None:
            cached = SpriteTestbedData.load(cache_dir, self.config())
            if cached is not None:
                return cached
        rng = np.random.default_rng(self.seed)
        train: list[VideoClip] = []
        scenes: list[tuple[_Scene, str]] = []
        for n in range(self.n_train):
            scene, family = self._moving_scene(rng, novel=False)
            scenes.append((scene, family))
            train.append(self._clip(self.render(scene), f"train_{n:03d}", "moving"))
        for n in range(5):
            train.append(
                self._clip(self.render(self._static_scene(rng, False)), f"train_static_{n:03d}", "static")
            )
        for n in range(5):
            train.append(self._clip(self.render(self._pan_scene(rng, False)), f"train_pan_{n:03d}", "pan"))
        images = []
        for n in range(20):
            scene = self._static_scene(rng, False)
            frame = self.render(scene)[:1]
            images.append(VideoClip(frame, fps=self.fps, id=f"image_{n:03d}", meta={"kind": "image"}))
        generated: list[VideoClip] = []
        labels: list[dict[str, Any]] = []

        def add(
            frames: Tensor, kind: str, content_src: str | None = None, motion_src: str | None = None
        ) -> None:
            vid = f"gen_{kind}_{sum(lab['type'] == kind for lab in labels):03d}"
            generated.append(VideoClip(self._perturb(frames, rng), fps=self.fps, id=vid, meta={"type": kind}))
            content, motion = _LABELS[kind]
            labels.append(
                {
                    "id": vid,
                    "type": kind,
                    "content": content,
                    "motion": motion,
                    "content_source": content_src,
                    "motion_source": motion_src,
                }
            )

        for _ in range(2 * self.per_type):
            add(self.render(self._moving_scene(rng, True)[0]), "negative")
        for _ in range(self.per_type):
            i = int(rng.integers(0, self.n_train))
            scene, _ = scenes[i]
            new = _Scene(scene.bg, scene.sprites, [self._trajectory(rng) for _ in scene.sprites], scene.view)
            add(self.render(new), "content", train[i].id)
        for _ in range(self.per_type):
            i = int(rng.integers(0, self.n_train))
            scene, family = scenes[i]
            new, _ = self._moving_scene(rng, True, family)
            new.paths = [p.clone() for p in scene.paths]
            add(self.render(new), "motion", None, train[i].id)
        for _ in range(self.per_type):
            i = int(rng.integers(0, self.n_train))
            add(train[i].frames.clone(), "both", train[i].id, train[i].id)
        for _ in range(self.per_type):
            i = int(rng.integers(0, self.n_train))
            frames = self.render(self._moving_scene(rng, True)[0])
            frames[4:8] = train[i].frames[4:8]
            add(frames, "partial", train[i].id)
        for _ in range(self.per_type):
            i = int(rng.integers(0, len(images)))
            frames = self.render(self._moving_scene(rng, True)[0])
            frames[int(rng.integers(0, self.frames))] = images[i].frames[0]
            add(frames, "image", images[i].id)
        for _ in range(self.per_type):
            add(self.render(self._static_scene(rng, True)), "static")
        for _ in range(self.per_type):
            add(self.render(self._pan_scene(rng, True)), "pan")
        data = SpriteTestbedData(train, images, generated, labels, self.config())
        if cache_dir is not None:
            data.save(cache_dir)
        return data

    def _clip(self, frames: Tensor, vid: str, kind: str) -> VideoClip:
        return VideoClip(frames, fps=self.fps, id=vid, meta={"kind": kind})


def _crop(bg: Tensor, origin: Tensor, size: int) -> Tensor:
    """A size×size window of bg [3,B,B] at fractional origin (x, y), bilinear."""
    x0, y0 = float(origin[0]), float(origin[1])
    if x0.is_integer() and y0.is_integer():
        return bg[:, int(y0) : int(y0) + size, int(x0) : int(x0) + size].clone()
    b = bg.shape[-1]
    xs = (torch.arange(size) + x0 + 0.5) / b * 2 - 1
    ys = (torch.arange(size) + y0 + 0.5) / b * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)[None]
    return F.grid_sample(bg[None], grid, mode="bilinear", align_corners=False, padding_mode="border")[0]


def _paste(frame: Tensor, sprite: _Sprite, pos: Tensor) -> None:
    """Alpha-composite a sprite in place at integer-rounded (x, y), clipped at the border."""
    size = frame.shape[-1]
    x, y = round(float(pos[0])), round(float(pos[1]))
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + SPRITE, size), min(y + SPRITE, size)
    if x1 <= x0 or y1 <= y0:
        return
    sx, sy = x0 - x, y0 - y
    rgb = sprite.rgb[:, sy : sy + y1 - y0, sx : sx + x1 - x0]
    a = sprite.alpha[:, sy : sy + y1 - y0, sx : sx + x1 - x0]
    region = frame[:, y0:y1, x0:x1]
    frame[:, y0:y1, x0:x1] = region * (1 - a) + rgb * a


@dataclass
class SpriteTestbedData:
    """The built testbed: training ``videos`` (30 moving, 5 static, 5 pans), training ``images`` (one-frame
    clips), ``generated`` clips and their ``labels`` (``id``, ``type``, ``content``, ``motion``,
    ``content_source``, ``motion_source``)."""

    videos: list[VideoClip]
    images: list[VideoClip]
    generated: list[VideoClip]
    labels: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def _name(self) -> str:
        from difflab_core.store import fingerprint

        return f"sprite-testbed-{fingerprint(self.config)}"

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Cache as one safetensors file (frames as uint8) plus a JSON sidecar."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        meta = {"config": self.config, "labels": self.labels, "groups": {}}
        for group, clips in (("videos", self.videos), ("images", self.images), ("generated", self.generated)):
            meta["groups"][group] = [{"id": c.id, "meta": c.meta, "fps": c.fps} for c in clips]
            for c in clips:
                tensors[f"{group}/{c.id}"] = (c.frames * 255).round().to(torch.uint8)
        path = d / f"{self._name()}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        (d / f"{self._name()}.json").write_text(json.dumps(meta))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str], config: dict[str, Any]) -> SpriteTestbedData | None:
        """The cached testbed of ``config`` in ``directory``, or None."""
        from safetensors.torch import load_file

        probe = cls([], [], [], [], config)
        d = Path(directory)
        path, side = d / f"{probe._name()}.safetensors", d / f"{probe._name()}.json"
        if not (path.is_file() and side.is_file()):
            return None
        tensors = load_file(str(path))
        meta = json.loads(side.read_text())
        groups = {
            g: [
                VideoClip(tensors[f"{g}/{m['id']}"].float() / 255, fps=m["fps"], id=m["id"], meta=m["meta"])
                for m in items
            ]
            for g, items in meta["groups"].items()
        }
        return cls(groups["videos"], groups["images"], groups["generated"], meta["labels"], config)


def write_sprite_testbed(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    per_type: int = 6,
    n_train: int = 30,
    video_format: str = "mp4",
) -> dict[str, Any]:
    """Write the sprite testbed as files for a folder audit (memguard's demo).

    Layout: ``out_dir/training/{id}.{video_format}`` (training videos), ``out_dir/training/images/{id}.png``
    (training images), ``out_dir/generated/{id}.{video_format}`` and ``out_dir/labels.jsonl``.
    ``video_format`` is "mp4" (libx264) or a lossless "npz"/"gif". Returns the paths and counts.
    Audit it with ``audit_videos(out/"generated", out/"training", ..., flow_size=(64, 64), content_fps=None)``.
    """
    from difflab_core.report import to_pil

    out = Path(out_dir)
    data = SpriteMemTestbed(seed=seed, per_type=per_type, n_train=n_train).build()
    train_dir, gen_dir, img_dir = out / "training", out / "generated", out / "training" / "images"
    for c in data.videos:
        write_video(train_dir / f"{c.id}.{video_format}", c)
    img_dir.mkdir(parents=True, exist_ok=True)
    for c in data.images:
        to_pil(c.frames[0]).save(img_dir / f"{c.id}.png")
    for c in data.generated:
        write_video(gen_dir / f"{c.id}.{video_format}", c)
    labels = out / "labels.jsonl"
    labels.write_text("".join(json.dumps(lab) + "\n" for lab in data.labels))
    return {
        "training": str(train_dir),
        "generated": str(gen_dir),
        "labels": str(labels),
        "n_train_videos": len(data.videos),
        "n_train_images": len(data.images),
        "n_generated": len(data.generated),
    }
