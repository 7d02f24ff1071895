"""`train_noisy_classifier`: train p(y | x_t, t) on the user's own labels with core `train` (spec §3.2, §8.6).

``arch="tiny"`` trains core's `TinyNoisyClassifier` from scratch; ``arch="encoder"`` trains the linear head of an
`EncoderClassifier` on the frozen encoder half of the user's diffusion UNet (ADM's architecture and cost). Each
batch is noised at uniform random t by ``scheduler.add_noise``. Writes, into ``out_dir``, the Trainer's resumable
checkpoints and ``train_log.jsonl``, then ``classifier.safetensors`` and ``classifier_config.json``, which `load_noisy_classifier` reads back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .encoder_classifier import EncoderClassifier
from .errors import GuidanceKitError

__all__ = ["ARCHS", "load_noisy_classifier", "train_noisy_classifier"]

ARCHS = ("tiny", "encoder")


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def _check(images: Tensor, labels: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise GuidanceKitError(
            f"images: expected a [N,C,H,W] tensor in [-1, 1], got {getattr(images, 'shape', images)}"
        )
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(labels) != len(images):
        raise GuidanceKitError(f"labels: {len(labels)} labels for {len(images)} images")
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise GuidanceKitError(
            f"labels must lie in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels, classes


def train_noisy_classifier(
    images: Tensor,
    labels: Tensor,
    scheduler,
    *,
    arch: str = "tiny",
    out_dir: str | Path,
    steps: int = 1000,
    unet: nn.Module | None = None,
    null_class: int | None = None,
    num_classes: int | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train a noise-aware classifier on ``images`` ([N,C,H,W] in [−1, 1]) and ``labels`` ([N] in [0, K)).

    ``scheduler``: the diffusion model's noise scheduler (its ``add_noise`` and ``num_train_timesteps``).
    ``arch="encoder"`` needs ``unet`` (a `UNet2DModel`; ``null_class`` for class-conditional ones).
    Re-running with the same ``out_dir`` resumes. Returns the trained classifier in eval mode on the CPU,
    ``forward(x_t [B,C,H,W], t [B] long) -> logits [B,K]``.
    """
    from difflab_core.tiny import TinyNoisyClassifier, seeded
    from difflab_core.train import TrainConfig, Trainer, seeded_loader

    if arch not in ARCHS:
        raise GuidanceKitError(f"arch={arch!r}: use one of {ARCHS}")
    if not isinstance(steps, int) or steps < 1:
        raise GuidanceKitError(f"steps must be an integer ≥ 1, got {steps!r}")
    labels, classes = _check(images, labels, num_classes)
    with seeded(seed):
        if arch == "tiny":
            model = TinyNoisyClassifier(images.shape[1], classes, images.shape[-1])
            config = {
                "arch": "tiny",
                "in_channels": images.shape[1],
                "num_classes": classes,
                "size": images.shape[-1],
            }
        else:
            if unet is None:
                raise GuidanceKitError(
                    "arch='encoder' needs unet= (the diffusion model whose encoder it reuses)"
                )
            model = EncoderClassifier(unet, classes, null_class=null_class)
            model.unet.requires_grad_(False)
            config = {"arch": "encoder", "num_classes": classes, "null_class": null_class}
    total = int(scheduler.config.num_train_timesteps)

    def loss_fn(model, batch, step):  # the global RNG: the Trainer seeds it and restores it on resume
        x, y = batch
        t = torch.randint(0, total, (x.shape[0],), device=x.device)
        noise = torch.randn_like(x)
        return nn.functional.cross_entropy(model(scheduler.add_noise(x, noise, t), t), y)

    out = Path(out_dir)
    loader = seeded_loader(
        _Pairs(images.float(), labels), min(batch_size, len(labels)), seed=seed, drop_last=True
    )
    train_config = TrainConfig(
        max_steps=steps,
        lr=lr,
        warmup_steps=min(50, steps // 10),
        lr_schedule="cosine",
        seed=seed,
        log_every=min(50, steps),
        progress=progress,
    )
    trainer = Trainer(model, loss_fn, loader, train_config, out)
    result = trainer.fit(resume=True)
    trained = trainer.accelerator.unwrap_model(trainer.model).cpu().eval()
    state = {k: v.detach().contiguous() for k, v in trained.state_dict().items() if not k.startswith("unet.")}
    save_file(state, str(out / "classifier.safetensors"))
    config |= {"steps": result.step, "final_loss": result.last_loss, "num_train_timesteps": total}
    (out / "classifier_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return trained


def load_noisy_classifier(directory: str | Path, *, unet: nn.Module | None = None) -> nn.Module:
    """Load what `train_noisy_classifier` wrote into ``directory`` (strictly; eval mode, on the CPU).

    ``arch="encoder"`` classifiers store only their head: pass the same ``unet`` they were trained on.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from difflab_core.tiny import TinyNoisyClassifier

    folder = Path(directory)
    config_path, weights_path = folder / "classifier_config.json", folder / "classifier.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise GuidanceKitError(f"{path}: not found; train one with train_noisy_classifier(out_dir=...)")
    try:
        config = json.loads(config_path.read_text())
        arch, classes = config["arch"], int(config["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise GuidanceKitError(f"{config_path}: not a classifier config ({err})") from err
    if arch == "tiny":
        model: nn.Module = TinyNoisyClassifier(int(config["in_channels"]), classes, int(config["size"]))
    elif arch == "encoder":
        if unet is None:
            raise GuidanceKitError(
                f"{folder}: an arch='encoder' classifier needs unet= (its diffusion model)"
            )
        model = EncoderClassifier(unet, classes, null_class=config.get("null_class"))
    else:
        raise GuidanceKitError(f"{config_path}: unknown arch {arch!r}; expected one of {ARCHS}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise GuidanceKitError(f"{weights_path}: unreadable safetensors file ({err})") from err
    expected = {k for k in model.state_dict() if not k.startswith("unet.")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise GuidanceKitError(
            f"{weights_path}: tensors do not match a {arch} classifier (missing {missing}, extra {extra})"
        )
    try:
        model.load_state_dict(state, strict=arch == "tiny")
    except RuntimeError as err:
        raise GuidanceKitError(f"{weights_path}: {err}") from err
    return model.eval()
