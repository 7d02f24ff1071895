"""Frame features with a timm backbone (§2.6): optional per-fold fine-tuning, cached float16 extraction.

* :func:`finetune_backbone` trains ``timm.create_model(arch, num_classes=0)`` plus a 131-way multi-label
  head with BCE on the **training-fold frames only** (resize to ``image_size``, ImageNet mean/std,
  horizontal flips and contrast jitter), on ``difflab_core.train``; it writes ``backbone.safetensors``
  and ``backbone.json``.
* :func:`extract_features` writes ``<out_dir>/<VID>.npy`` (float16 ``F×T``) and ``manifest.json`` (arch,
  weights sha256, image size, mean/std, pooling, frame counts, versions). It resumes per video and
  refuses to mix manifests. ``pooling="avg"`` gives ``F = num_features``; ``"grid:HxW"`` (CNNs with a 4-D
  feature map) adaptive-average-pools to ``H×W`` and flattens, ``F = C·H·W``.

Nothing downloads: initial weights come from a local file (``weights``) or are random (tests). Cholec80
pre-training leaks CholecT50 test videos (shared IDs); the manifest records the weights' provenance.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from difflab_core.device import resolve_device
from difflab_core.loading import file_sha256
from difflab_core.report import write_json

from .data import FrameFolder, dataset_paths, read_video_labels
from .errors import DiffTripletError
from .labels import TripletSpace
from .splits import Split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConfig",
    "Manifest",
    "create_backbone",
    "extract_features",
    "finetune_backbone",
    "pool_features",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_FILE = "backbone.safetensors"
BACKBONE_CONFIG = "backbone.json"
MANIFEST_FILE = "manifest.json"
_GRID = re.compile(r"^grid:(\d+)x(\d+)$")


@dataclass(frozen=True)
class BackboneConfig:
    """A timm backbone and its preprocessing (CAMMA recipe: 256×448 input, ImageNet statistics)."""

    arch: str = "resnet50"
    weights: str | None = None
    """Local weights file (safetensors, or a torch state dict read with ``weights_only=True``); None = random."""
    image_size: tuple[int, int] = (256, 448)
    """``(height, width)`` the frames are resized to."""
    pooling: str = "avg"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.pooling != "avg" and not _GRID.match(self.pooling):
            raise DiffTripletError(f"pooling={self.pooling!r}: use 'avg' or 'grid:HxW' (e.g. 'grid:4x4')")
        object.__setattr__(self, "image_size", tuple(int(x) for x in self.image_size))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BackboneConfig:
        """The config a :func:`finetune_backbone` folder holds (weights = its ``backbone.safetensors``)."""
        directory = Path(directory)
        path = directory / BACKBONE_CONFIG
        if not path.is_file():
            raise DiffTripletError(f"{directory} is not a fine-tuned backbone folder (no {BACKBONE_CONFIG})")
        data = json.loads(path.read_text())
        return cls(**(data["backbone"] | {"weights": str(directory / BACKBONE_FILE)}))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise DiffTripletError(f"backbone weights {path} do not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DiffTripletError(f"backbone weights {path} are unreadable: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DiffTripletError(f"backbone weights {path} do not hold a state dict")
    return state


def create_backbone(cfg: BackboneConfig) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0)`` plus the local weights, if any.

    Classifier keys in the file are ignored; missing backbone keys raise.
    """
    import timm

    try:
        model = timm.create_model(cfg.arch, pretrained=False, num_classes=0)
    except RuntimeError as err:
        raise DiffTripletError(f"unknown timm architecture {cfg.arch!r}: {err}") from err
    if cfg.weights:
        state = _read_state_dict(Path(cfg.weights))
        expected = model.state_dict()
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        missing = [k for k in expected if k not in state]
        if missing:
            raise DiffTripletError(
                f"backbone weights {cfg.weights} do not fit timm {cfg.arch!r}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]})"
            )
        model.load_state_dict({k: state[k] for k in expected})
    return model


def pool_features(model: nn.Module, images: Tensor, pooling: str) -> Tensor:
    """``forward_features`` then pooling: ``(B, 3, H, W) -> (B, F)``."""
    feats = model.forward_features(images)
    grid = _GRID.match(pooling)
    if grid is None:
        return model.forward_head(feats, pre_logits=True)
    if feats.dim() != 4:
        raise DiffTripletError(
            f"pooling={pooling!r} needs a CNN with a 4-D feature map; got {tuple(feats.shape)}"
        )
    return F.adaptive_avg_pool2d(feats, (int(grid.group(1)), int(grid.group(2)))).flatten(1)


def _to_tensor(image: Image.Image, cfg: BackboneConfig) -> Tensor:
    h, w = cfg.image_size
    array = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    x = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std


@dataclass
class Manifest:
    """What produced a feature folder; ``computed`` lists the videos this call extracted (not saved)."""

    arch: str
    weights: str | None
    weights_sha256: str | None
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pooling: str
    feature_dim: int | None = None
    frames: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)

    SETTINGS = ("arch", "weights_sha256", "image_size", "mean", "std", "pooling")

    def settings(self) -> dict[str, Any]:
        return {k: json.loads(json.dumps(getattr(self, k))) for k in self.SETTINGS}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("computed")
        return data

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: v for k, v in data.items() if k != "computed"})
        except (json.JSONDecodeError, TypeError) as err:
            raise DiffTripletError(f"{path} is not a difftriplet feature manifest: {err}") from err


def _versions() -> dict[str, str]:
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__}


def _num_frames(data_root: Path, variant: str, video: str, space: TripletSpace) -> int | None:
    _, labels_dir, suffix = dataset_paths(data_root, variant)
    if not (labels_dir / f"{video}{suffix}").is_file():
        return None
    from .config import DiffTripletConfig

    return read_video_labels(data_root, variant, video, space, DiffTripletConfig()).num_frames


@torch.no_grad()
def extract_features(
    cfg: BackboneConfig,
    data_root: str | os.PathLike[str],
    videos: Sequence[str],
    out_dir: str | os.PathLike[str],
    batch_size: int = 32,
    device: str = "auto",
    variant: str = "cholect50",
    backbone: nn.Module | None = None,
) -> Manifest:
    """Write ``<out_dir>/<VID>.npy`` (float16 ``F×T``) for every video not yet extracted, and the manifest.

    Raises:
        DiffTripletError: if ``out_dir`` holds a manifest with other settings, a frame count differs from
            the labels' ``num_frames``, or a frame is unreadable (the path is given).
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    frames_dir, _, _ = dataset_paths(data_root, variant)
    sha = file_sha256(cfg.weights) if cfg.weights else None
    manifest = Manifest(
        cfg.arch, cfg.weights, sha, cfg.image_size, cfg.mean, cfg.std, cfg.pooling, versions=_versions()
    )
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.is_file():
        previous = Manifest.load(manifest_path)
        diff = [k for k in Manifest.SETTINGS if previous.settings()[k] != manifest.settings()[k]]
        if diff:
            raise DiffTripletError(
                f"{manifest_path} was written with other settings ({', '.join(diff)}); use another output "
                "folder or delete it to re-extract"
            )
        manifest.feature_dim, manifest.frames = previous.feature_dim, dict(previous.frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    space = TripletSpace.from_ivtmetrics()
    device_ = resolve_device(device)
    model = None
    for video in videos:
        path = out_dir / f"{video}.npy"
        if path.is_file() and video in manifest.frames:
            continue
        folder = FrameFolder(frames_dir / video)
        expected = _num_frames(data_root, variant, video, space)
        if expected is not None and expected != len(folder):
            raise DiffTripletError(
                f"{folder.video_dir}: {len(folder)} frames but the labels have num_frames={expected}"
            )
        if model is None:
            model = (backbone if backbone is not None else create_backbone(cfg)).eval().to(device_)
        chunks = []
        for start in range(0, len(folder), batch_size):
            batch = torch.stack(
                [_to_tensor(folder[i], cfg) for i in range(start, min(len(folder), start + batch_size))]
            )
            chunks.append(pool_features(model, batch.to(device_), cfg.pooling).float().cpu())
        feats = torch.cat(chunks).T.numpy().astype(np.float16)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
        manifest.feature_dim = int(feats.shape[0])
        manifest.frames[video] = int(feats.shape[1])
        manifest.computed.append(video)
        write_json(manifest_path, manifest.to_dict())
    write_json(manifest_path, manifest.to_dict())
    return manifest


class _FrameLabels(Dataset):
    """Training-fold frames with their 131-way joint labels, augmented (flip, contrast)."""

    def __init__(self, data_root: Path, variant: str, videos: Sequence[str], cfg: BackboneConfig) -> None:
        from .config import DiffTripletConfig

        frames_dir, _, _ = dataset_paths(data_root, variant)
        space = TripletSpace.from_ivtmetrics()
        self.cfg = cfg
        self.items: list[tuple[FrameFolder, int, np.ndarray]] = []
        for video in videos:
            labels = read_video_labels(data_root, variant, video, space, DiffTripletConfig())
            folder = FrameFolder(frames_dir / video)
            if len(folder) != labels.num_frames:
                raise DiffTripletError(
                    f"{folder.video_dir}: {len(folder)} frames but num_frames={labels.num_frames}"
                )
            self.items += [(folder, i, labels.y[i]) for i in range(len(folder))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        folder, frame, y = self.items[index]
        x = _to_tensor(folder[frame], self.cfg)
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        contrast = 0.8 + 0.4 * torch.rand(())
        x = (x - x.mean()) * contrast + x.mean()
        return x, torch.from_numpy(y.astype(np.float32))


class _BackboneWithHead(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def finetune_backbone(
    cfg: BackboneConfig,
    data_root: str | os.PathLike[str],
    split: Split,
    out: str | os.PathLike[str],
    *,
    variant: str = "cholect50",
    max_steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Fine-tune on ``split.train`` frames only (never the test fold); returns the backbone folder ``out``.

    Runs on the device Accelerate picks (``accelerate launch`` for several GPUs). Resumable (core trainer
    checkpoints under ``out/train``); writes ``backbone.safetensors`` and
    ``backbone.json`` (config, initial weights' sha256, training videos).
    """
    from difflab_core.train import TrainConfig, Trainer, save_weights, seeded_loader

    data_root, out = Path(data_root), Path(out)
    dataset = _FrameLabels(data_root, variant, split.train, cfg)
    model = _BackboneWithHead(create_backbone(cfg), TripletSpace.from_ivtmetrics().num_channels)
    loader = seeded_loader(dataset, batch_size, seed)
    core = TrainConfig(max_steps=max_steps, lr=lr, seed=seed, progress=progress, log_every=10)

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(m(x), y)

    Trainer(model, loss_fn, loader, core, out / "train").fit(resume=True)
    save_weights(model.backbone, out / BACKBONE_FILE)
    write_json(
        out / BACKBONE_CONFIG,
        {
            "backbone": {k: v for k, v in asdict(cfg).items() if k != "weights"},
            "initial_weights": cfg.weights,
            "initial_weights_sha256": file_sha256(cfg.weights) if cfg.weights else None,
            "train_videos": list(split.train),
            "steps": max_steps,
            "versions": _versions(),
        },
    )
    return out
