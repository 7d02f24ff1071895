"""The photo-patch task's proxy network (spec §4 "offline proxies"): a small CNN that tells which photo a greyscale
patch comes from (8 classes: the 7 source photos and ``grass``), trained once and cached as safetensors.

Its penultimate features are the space of the task's ``proxy_fid`` (Fréchet distance to all ``grass`` patches of
`photo_patch_task`), and its ``grass`` predictions give ``target_class_rate``. Data: each photo is downscaled
``scale``× as in `photo_patch_task`; the left ``1 − holdout`` of its width gives training patches (every
``train_stride`` pixels) and the right ``holdout`` band the held-out patches, so no held-out pixel is seen in
training. Classes are balanced by sampling weight (grass has ~8× more patches than ``text``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from difflab_core.data import weighted_sampler
from difflab_core.errors import DifflabError
from difflab_core.loading import file_sha256
from difflab_core.testbed.digits import DigitsCNN
from difflab_core.tiny import seeded
from difflab_core.train import TrainConfig, Trainer, load_weights, save_weights

from .data import PHOTO_SOURCES, PHOTO_TARGET, _patches, photo_image, photo_patch_task
from .errors import TanTransferError

__all__ = [
    "PATCH_CLASSES",
    "PatchCNNConfig",
    "PatchFeatures",
    "patch_cnn",
    "patch_split",
]

PATCH_CLASSES: tuple[str, ...] = (*PHOTO_SOURCES, PHOTO_TARGET)
"""Class names in label order; the target (``grass``) is the last."""
WEIGHTS_FILE = "patch_cnn.safetensors"
CARD_FILE = "patch_cnn.json"


@dataclass(frozen=True)
class PatchCNNConfig:
    """How the patch CNN is built and trained ([reconstruction]: the shipped digits classifier's recipe —
    AdamW lr 2e-3, 50 warm-up steps then cosine, batch 64, dropout 0.2 — on photo patches)."""

    size: int = 16
    """Patch side (pixels), as `photo_patch_task`."""
    scale: int = 4
    """Downscaling of the photos before cutting patches, as `photo_patch_task`."""
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    width: int = 32
    feature_dim: int = 64
    dropout: float = 0.2
    holdout: float = 0.25
    """Right-hand share of each photo's width kept for the held-out accuracy."""
    train_stride: int = 4
    seed: int = 0


def patch_split(config: PatchCNNConfig = PatchCNNConfig()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_x, train_y, heldout_x, heldout_y)``: patches ``[N, 1, size, size]`` in [−1, 1], labels index
    `PATCH_CLASSES`. Training patches come from the left ``1 − holdout`` of each photo's width (stride
    ``train_stride``), held-out ones from the right band (stride ``size // 2``); the two never share a pixel."""
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, name in enumerate(PATCH_CLASSES):
        image = photo_image(name, config.scale)
        cut = round(image.shape[-1] * (1 - config.holdout))
        if cut < config.size or image.shape[-1] - cut < config.size:
            raise TanTransferError("holdout", f"{config.holdout} leaves no full patch on one side of {name}")
        train = _patches(image[..., :cut], config.size, config.train_stride) * 2 - 1
        test = _patches(image[..., cut:], config.size, config.size // 2) * 2 - 1
        train_x.append(train)
        test_x.append(test)
        train_y.append(torch.full((len(train),), label))
        test_y.append(torch.full((len(test),), label))
    return torch.cat(train_x), torch.cat(train_y), torch.cat(test_x), torch.cat(test_y)


@dataclass
class PatchFeatures:
    """The trained patch CNN as a proxy. Images are ``[N, 1, size, size]`` in **[0, 1]** (samples' range).

    ``card`` holds the config, held-out accuracy (overall and per class), steps and the weights' sha256.
    """

    model: DigitsCNN
    config: PatchCNNConfig
    card: dict[str, Any]
    batch_size: int = 512
    _reference: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def target_index(self) -> int:
        return PATCH_CLASSES.index(PHOTO_TARGET)

    @torch.no_grad()
    def _apply(self, images01: Tensor, what: str) -> Tensor:
        size = self.config.size
        if (
            not isinstance(images01, Tensor)
            or images01.ndim != 4
            or tuple(images01.shape[1:]) != (1, size, size)
        ):
            shape = tuple(images01.shape) if isinstance(images01, Tensor) else type(images01).__name__
            raise TanTransferError(
                "images", f"the patch CNN takes [N, 1, {size}, {size}] in [0, 1], got {shape}"
            )
        device = next(self.model.parameters()).device
        outs = []
        for chunk in images01.float().split(self.batch_size):
            x = chunk.to(device) * 2 - 1
            outs.append((self.model.features(x) if what == "features" else self.model(x)).float().cpu())
        return torch.cat(outs)

    def logits(self, images01: Tensor) -> Tensor:
        """Class logits ``[N, 8]`` (order `PATCH_CLASSES`)."""
        return self._apply(images01, "logits")

    def predict(self, images01: Tensor) -> Tensor:
        """Predicted labels ``[N]`` (indices into `PATCH_CLASSES`)."""
        return self.logits(images01).argmax(dim=1)

    def features(self, images01: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]`` (before the ReLU)."""
        return self._apply(images01, "features")

    def target_class_rate(self, images01: Tensor) -> float:
        """Share of images classified as ``grass``."""
        return float((self.predict(images01) == self.target_index).float().mean())

    def reference_features(self) -> Tensor:
        """Features of every ``grass`` patch of `photo_patch_task` (its ``target_all``), cached."""
        if self._reference is None:
            task = photo_patch_task(self.config.size, shots=1, scale=self.config.scale)
            self._reference = self.features((task.target_all + 1) / 2)
        return self._reference

    def frechet(self, images01: Tensor, reference01: Tensor | None = None) -> float:
        """Fréchet distance in `features` between ``images01`` and ``reference01`` (default: all grass patches)."""
        from difflab_core.metrics import frechet_distance

        fa = self.features(images01)
        fb = self.reference_features() if reference01 is None else self.features(reference01)
        if len(fa) < 2 or len(fb) < 2:
            raise TanTransferError("images", "the Fréchet distance needs at least two images on each side")
        return frechet_distance(fa.double().numpy(), fb.double().numpy())


def _settings(config: PatchCNNConfig) -> dict[str, Any]:
    return {"config": asdict(config), "classes": list(PATCH_CLASSES)}


@torch.no_grad()
def _heldout_accuracy(model: DigitsCNN, x: Tensor, y: Tensor) -> dict[str, Any]:
    model.eval()
    pred = torch.cat([model(chunk).argmax(1) for chunk in x.split(512)])
    per_class = {
        name: round(float((pred[y == k] == k).float().mean()), 4) for k, name in enumerate(PATCH_CLASSES)
    }
    return {
        "heldout_accuracy": round(float((pred == y).float().mean()), 4),
        "heldout_balanced_accuracy": round(sum(per_class.values()) / len(per_class), 4),
        "heldout_accuracy_by_class": per_class,
        "heldout_n": len(y),
    }


def _build(config: PatchCNNConfig) -> DigitsCNN:
    """Core's digits classifier architecture at the patch size, with one output per photo."""
    if config.size % 4:
        raise TanTransferError("size", f"the patch CNN needs a multiple of 4, got {config.size}")
    with seeded(config.seed):
        return DigitsCNN(
            config.width, config.feature_dim, len(PATCH_CLASSES), config.dropout, size=config.size
        )


def patch_cnn(
    cache_dir: str | Path,
    config: PatchCNNConfig | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> PatchFeatures:
    """The patch CNN cached in ``cache_dir`` (``patch_cnn.safetensors`` + ``patch_cnn.json``), trained there
    first if absent (on `difflab_core.train.Trainer`: resumable from ``cache_dir/checkpoints``). A cache made with
    another config, or whose weights changed since their card was written, raises `TanTransferError`."""
    from difflab_core.device import resolve_device

    config = config or PatchCNNConfig()
    folder = Path(cache_dir)
    weights, card_path = folder / WEIGHTS_FILE, folder / CARD_FILE
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        if card.get("settings") != _settings(config):
            raise TanTransferError(
                card_path, "was made with another patch-CNN config; use another folder or delete it"
            )
    else:
        card = _train(folder, config, progress)
    if not weights.is_file() or file_sha256(weights) != card.get("weights_sha256"):
        raise TanTransferError(
            weights, f"missing or changed since {CARD_FILE} was written; delete it to retrain"
        )
    model = _build(config)
    try:
        load_weights(model, weights)
    except DifflabError as err:
        raise TanTransferError(weights, str(err)) from err
    model = model.to(resolve_device(device)).eval().requires_grad_(False)
    return PatchFeatures(model=model, config=config, card=card)


def _train(folder: Path, config: PatchCNNConfig, progress: bool) -> dict[str, Any]:
    if config.steps < 1 or config.batch_size < 1 or not 0 < config.holdout < 1:
        raise TanTransferError("config", f"steps and batch_size must be >= 1 and 0 < holdout < 1: {config}")
    train_x, train_y, test_x, test_y = patch_split(config)
    counts = torch.bincount(train_y, minlength=len(PATCH_CLASSES)).double()
    sampler = weighted_sampler(1.0 / counts[train_y], len(train_y), config.seed)
    loader = DataLoader(
        TensorDataset(train_x, train_y),
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    model = _build(config)

    def loss_fn(net: nn.Module, batch, step: int) -> Tensor:
        x, y = batch
        flip = torch.rand(x.shape[0], device=x.device) < 0.5  # textures are mirror-symmetric enough
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return F.cross_entropy(net(x), y)

    train_config = TrainConfig(
        max_steps=config.steps,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=min(config.warmup_steps, config.steps - 1),
        lr_schedule="cosine",
        checkpoint_every=max(config.steps // 4, 1),
        seed=config.seed,
        log_every=min(50, config.steps),
        progress=progress,
    )
    trainer = Trainer(model, loss_fn, loader, train_config, folder)
    try:
        result = trainer.fit(resume=True)
    except DifflabError as err:
        raise TanTransferError(folder, str(err)) from err
    trained = trainer.accelerator.unwrap_model(trainer.model).cpu()
    weights = save_weights(trained, folder / WEIGHTS_FILE)
    card = {
        "settings": _settings(config),
        "steps": result.step,
        "final_loss": result.last_loss,
        "train_n": len(train_y),
        **_heldout_accuracy(trained, test_x, test_y),
        "weights_sha256": file_sha256(weights),
    }
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(folder / CARD_FILE)
    return card
