"""`train_tan`: one DPMs-ANT run [paper Alg. 1; code `train.py`] on `difflab_core.train.Trainer`.

Per iteration: B shots (drawn with replacement; micro-batches accumulated), antithetic t, ε* by J ascent steps,
x_t*, g from the frozen domain classifier, loss ‖ε* − ε_θ,ψ(x_t*, t) − γ s_t g‖², AdamW on ψ only, EMA of ψ.

Run directory: ``config.json`` (TAN config, versions, seed, fingerprint), ``classifier/`` (weights + report),
``checkpoints/`` and ``train_log.jsonl`` (Trainer; exact resume), ``adapter/`` (EMA adapters + card), and with the
overfitting monitor ``metrics.jsonl`` + ``adapter_best/`` (`tan_transfer.monitor`).
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from difflab_core.data import weighted_sampler
from difflab_core.errors import DifflabError
from difflab_core.report import write_json
from difflab_core.store import write_run_config
from difflab_core.tiny import seeded
from difflab_core.train import TrainConfig, Trainer, load_weights, save_weights

from .adapters import AdaptedUNet, build_adapted_unet, save_adapters, trainable_fraction
from .classifier import build_classifier, target_logprob_grad, train_domain_classifier
from .config import TANConfig
from .data import load_captioned_folder, load_image_folder, save_image_folder
from .errors import TanTransferError
from .losses import tan_loss
from .monitor import MonitorRecord, OverfittingMonitor
from .noise import adversarial_noise, antithetic_timesteps, guidance_weight

__all__ = ["TanTrainResult", "build_model", "effective_gamma", "sample_source_images", "train_tan"]

MAX_NONFINITE_IN_A_ROW = 5
EPOCH_BATCHES = 10


@dataclass
class TanTrainResult:
    """What `train_tan` returns; ``model`` holds the EMA weights (what sampling uses)."""

    model: AdaptedUNet
    output_dir: Path
    adapter_dir: Path
    steps: int
    last_loss: float
    loss_history: list[tuple[int, float]]
    sec_per_iter: float
    trainable_fraction: float
    classifier: nn.Module | None = None
    classifier_report: dict[str, Any] = field(default_factory=dict)
    resumed_from: Path | None = None
    nonfinite_steps: int = 0
    monitor: list[MonitorRecord] = field(default_factory=list)
    """The overfitting monitor's records (``metrics.jsonl``), empty when it is off."""
    best_adapter_dir: Path | None = None
    """``adapter_best/``: the adapters of the best monitor score (None when the monitor is off)."""


def effective_gamma(cfg: TANConfig, sample_dim: int) -> float:
    """γ, or γ·√(D / D_ref) with ``cfg.guidance_reference_dim`` = D_ref and ``sample_dim`` = D = C·H·W."""
    if cfg.guidance_reference_dim is None:
        return cfg.gamma
    return cfg.gamma * (sample_dim / cfg.guidance_reference_dim) ** 0.5


def build_model(unet: nn.Module, cfg: TANConfig) -> AdaptedUNet:
    """A deep copy of ``unet`` with ``cfg``'s adapters (seeded by ``cfg.seed``); the source UNet is untouched."""
    with seeded(cfg.seed):
        base = copy.deepcopy(unet)
        if cfg.adapter == "ant":
            hp = {
                "dim": cfg.ant_dim,
                "heads": cfg.ant_heads,
                "dropout": cfg.ant_dropout,
                "pool": cfg.ant_pool,
            }
            return build_adapted_unet(base, "ant", init=cfg.ant_init, **hp)
        if cfg.adapter == "lora":
            return build_adapted_unet(base, "lora", rank=cfg.lora_rank, targets=cfg.lora_targets)
        return build_adapted_unet(base, "full")


def sample_source_images(bundle, n: int, *, seed: int = 0, steps: int = 50) -> Tensor:
    """``n`` images in [−1, 1] from the frozen source model (DDIM, η = 1): the classifier's source domain."""
    from .sample import sample

    return sample(None, bundle, n, steps=steps, seed=seed, prompt=None) * 2 - 1


def _check_images(images: Tensor | str | Path, bundle, name: str) -> Tensor:
    if isinstance(images, (str, Path)):
        return load_image_folder(images, bundle.image_size, bundle.image_channels)
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise TanTransferError(name, "must be a folder or a tensor [N, C, H, W] in [-1, 1]")
    expected = (bundle.image_channels, bundle.image_size, bundle.image_size)
    if tuple(images.shape[1:]) != expected:
        raise TanTransferError(name, f"images are {tuple(images.shape[1:])}, the model makes {expected}")
    if len(images) < 1:
        raise TanTransferError(name, "no images")
    return images.float()


def _run_config(cfg: TANConfig, target: Tensor, bundle, texts: list[str] | None) -> dict[str, Any]:
    import diffusers

    from difflab_core.store import fingerprint

    config = {
        "tan_config": cfg.to_dict(),
        "seed": cfg.seed,
        "n_shots": len(target),
        "target_fingerprint": fingerprint(target.flatten().tolist()[:4096]),
        "model_path": str(bundle.path) if bundle.path else None,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }
    if texts is not None and any(text != cfg.prompt for text in texts):
        config["captions_fingerprint"] = fingerprint(texts)  # only then, so prompt-only runs keep resuming
    return config


def _shot_texts(target, captions, bundle, cfg: TANConfig) -> tuple[Tensor, list[str] | None]:
    """The target images and one text per image (None for unconditional models): ``captions`` if given, else
    the folder's ``captions.jsonl`` (``cfg.prompt`` for images without a line), else ``cfg.prompt`` for all."""
    if captions is not None:
        if not bundle.conditional:
            raise TanTransferError("captions", "this model is unconditional; it takes no captions")
        images = _check_images(target, bundle, "target")
        texts = [str(text) for text in captions]
        if len(texts) != len(images):
            raise TanTransferError("captions", f"{len(texts)} captions for {len(images)} target images")
        return images, texts
    if not bundle.conditional:
        return _check_images(target, bundle, "target"), None
    if isinstance(target, (str, Path)):
        return load_captioned_folder(target, bundle.image_size, bundle.image_channels, default=cfg.prompt)
    images = _check_images(target, bundle, "target")
    return images, [cfg.prompt] * len(images)


def _write_config(output_dir: Path, config: dict[str, Any], override: bool) -> None:
    from difflab_core.store import fingerprint

    stable = {k: v for k, v in config.items() if k != "versions"}
    config = {**config, "fingerprint": fingerprint(stable)}
    try:
        write_run_config(output_dir, config)
    except DifflabError as err:
        if not override:
            raise TanTransferError(
                output_dir / "config.json", f"{err} (or pass override_config / --override-config)"
            ) from err
        write_json(output_dir / "config.json", config)


def _classifier_for_run(bundle, target: Tensor, source, cfg: TANConfig, output_dir: Path):
    folder = output_dir / "classifier"
    weights = folder / "classifier.safetensors"
    if weights.is_file() and cfg.classifier != "custom":
        with seeded(cfg.seed):
            clf = build_classifier(cfg.classifier, bundle.unet, pooling=cfg.classifier_pooling)
        try:
            load_weights(clf, weights)
        except DifflabError as err:
            raise TanTransferError(weights, str(err)) from err
        report = {}
        if (folder / "report.json").is_file():
            import json

            report = json.loads((folder / "report.json").read_text())
        return clf.eval().requires_grad_(False), report
    if source is None:
        if cfg.source_from_model < 2:
            raise TanTransferError("source", "give source images, or set source_from_model >= 2")
        source = sample_source_images(bundle, cfg.source_from_model, seed=cfg.seed + 1)
    source = _check_images(source, bundle, "source")
    clf, report = train_domain_classifier(bundle, source, target, cfg)
    save_weights(clf, weights)
    write_json(folder / "report.json", report)
    return clf, report


def train_tan(
    bundle,
    target: Tensor | str | Path,
    cfg: TANConfig | None = None,
    *,
    source: Tensor | str | Path | None = None,
    classifier: nn.Module | None = None,
    output_dir: str | Path,
    captions: list[str] | None = None,
    resume: str = "auto",
    override_config: bool = False,
    progress: bool = False,
) -> TanTrainResult:
    """Adapt ``bundle``'s model to ``target`` (K images [K, C, H, W] in [−1, 1], or a folder).

    Text-conditional models are trained on one text per shot: ``captions`` (K strings), or a target folder's
    ``captions.jsonl``, with ``cfg.prompt`` for shots without one. The domain classifier and its guidance use
    ``cfg.prompt`` throughout (a per-image caption would tell it the domain).

    ``source`` (images or folder) trains the domain classifier; without it ``cfg.source_from_model`` images are
    sampled from the source model. ``classifier`` skips classifier training (any module
    ``forward(x_t, t[, encoder_hidden_states]) -> logits [B, 2]``, label 1 = target); the overfitting monitor
    (``cfg.monitor_every > 0``, at least 2 shots) uses it too, so it is trained even without guidance when none is
    given. ``resume="auto"`` continues
    from the latest checkpoint in ``output_dir``; ``"never"`` refuses to (raises if checkpoints exist). A changed
    config raises unless ``override_config``.
    """
    cfg = cfg or TANConfig()
    if resume not in ("auto", "never"):
        raise TanTransferError("resume", f"{resume!r}: use 'auto' or 'never'")
    lr = cfg.lr if cfg.lr is not None else (1e-5 if bundle.latent_kind is not None else 5e-5)
    target, texts = _shot_texts(target, captions, bundle, cfg)
    output_dir = Path(output_dir)
    _write_config(output_dir, _run_config(cfg, target, bundle, texts), override_config)
    if bundle.image_channels in (1, 3) and not (output_dir / "shots").is_dir():
        save_image_folder(target, output_dir / "shots", "shot")

    clf, clf_report = None, {}
    monitoring = cfg.monitor_every > 0 and len(target) >= 2
    if cfg.similarity_guidance or monitoring:
        if classifier is not None:
            clf = classifier.eval().requires_grad_(False)
        else:
            clf, clf_report = _classifier_for_run(bundle, target, source, cfg, output_dir)

    guide = clf if cfg.similarity_guidance else None
    model = build_model(bundle.unet, cfg).train()
    monitor = OverfittingMonitor(bundle, target, clf, cfg, output_dir) if monitoring else None
    monitor_state = {"started": False, "seconds": 0.0}
    shots = bundle.encode(target).float().cpu()
    device = bundle.device
    ac = bundle.alphas_cumprod.to(device=device, dtype=torch.float32)
    T = bundle.num_train_timesteps
    cond_one = bundle.prompt_embeds([cfg.prompt]).float() if bundle.conditional else None
    shot_conds = bundle.prompt_embeds(texts).float() if texts is not None else None  # [K, L, D]
    gamma = effective_gamma(cfg, shots[0].numel())
    index = torch.arange(len(shots))

    if cfg.fixed_batch:
        pick = torch.randint(
            0, len(shots), (cfg.batch_size,), generator=torch.Generator().manual_seed(cfg.seed)
        )
        dataset, sampler = TensorDataset(shots[pick], index[pick]), None
    else:
        dataset = TensorDataset(shots, index)
        sampler = weighted_sampler(torch.ones(len(shots)), cfg.batch_size * EPOCH_BATCHES, cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.micro_batch,
        sampler=sampler,
        shuffle=False,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    nonfinite = {"run": 0, "total": 0}

    def watch(step: int) -> None:
        """Monitor the EMA weights after ``step`` iterations; called before iteration ``step + 1`` starts."""
        if not monitor_state["started"]:
            monitor.start(step)
            monitor_state["started"] = True
        if not (monitor.due(step) and trainer.accelerator.is_main_process):
            return
        begin = time.perf_counter()
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.ema is None:
            monitor.measure(unwrapped, step)
        else:
            with trainer.ema.average_weights(unwrapped):
                monitor.measure(unwrapped, step)
        monitor_state["seconds"] += time.perf_counter() - begin

    def loss_fn(model: nn.Module, batch, step: int) -> Tensor:
        if monitor is not None:
            watch(step - 1)
        x0 = batch[0].float()
        b = x0.shape[0]
        if cfg.hflip:
            flip = torch.rand(b) < 0.5
            x0 = torch.where(flip.to(x0.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = antithetic_timesteps(b, T, device=x0.device)
        cond = None if shot_conds is None else shot_conds[batch[1].to(shot_conds.device)]
        if cfg.adversarial_noise:
            eps = adversarial_noise(
                model,
                x0,
                t,
                ac,
                steps=cfg.ascent_steps,
                omega=cfg.omega,
                ref_batch=cfg.ascent_ref_batch,
                resample_t=cfg.resample_t_inner,
                norm=cfg.ascent_norm,
                cond=cond,
            )
        else:
            eps = torch.randn(x0.shape).to(x0.device)
        ab = ac[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        grad = weight = None
        if guide is not None:
            grad = target_logprob_grad(
                guide, x_t, t, None if cond_one is None else cond_one.expand(b, -1, -1)
            )
            weight = guidance_weight(t, bundle.alphas_cumprod, cfg.s_schedule).to(x0.device)
        pred = model(x_t, t, cond) if cond is not None else model(x_t, t)
        loss = tan_loss(pred, eps, grad, weight, gamma)
        if torch.isfinite(loss):
            nonfinite["run"] = 0
            return loss
        nonfinite["run"] += 1
        nonfinite["total"] += 1
        if nonfinite["run"] >= MAX_NONFINITE_IN_A_ROW:
            raise TanTransferError(
                f"iteration {step}",
                f"{MAX_NONFINITE_IN_A_ROW} non-finite losses in a row; lower lr / gamma / omega "
                "(the last checkpoint is kept for resume)",
            )
        return torch.zeros((), device=x0.device, requires_grad=True)  # skipped: no gradient reaches ψ

    train_config = TrainConfig(
        max_steps=cfg.iterations,
        lr=lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_fraction * cfg.iterations),
        lr_schedule="cosine",
        grad_accum=cfg.grad_accum,
        max_grad_norm=cfg.grad_clip,
        mixed_precision=cfg.mixed_precision,
        ema_decay=cfg.ema_decay,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
        log_every=min(25, cfg.iterations),
        progress=progress,
        betas=cfg.betas,
    )
    trainer = Trainer(model, loss_fn, loader, train_config, output_dir)
    start = time.perf_counter()
    try:
        result = trainer.fit(resume=resume == "auto")
    except DifflabError as err:
        if isinstance(err, TanTransferError):
            raise
        raise TanTransferError(output_dir, str(err)) from err
    except torch.OutOfMemoryError as err:
        raise TanTransferError(
            "micro_batch", f"out of memory at micro_batch={cfg.micro_batch}; lower it (batch_size stays)"
        ) from err
    done = result.step - (int(result.resumed_from.name.split("-")[1]) if result.resumed_from else 0)
    elapsed = time.perf_counter() - start - monitor_state["seconds"]
    trained: AdaptedUNet = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ema is not None:
        trainer.ema.copy_to(trained)
    trained.eval()
    if monitor is not None:
        if not monitor_state["started"]:
            monitor.start(result.step)
        if monitor.due(result.step, final=True) and trainer.accelerator.is_main_process:
            monitor.measure(trained, result.step)
    adapter_dir = save_adapters(
        output_dir / "adapter", trained, extra={"iterations": result.step, "ema": True}
    )
    return TanTrainResult(
        model=trained,
        output_dir=output_dir,
        adapter_dir=adapter_dir,
        steps=result.step,
        last_loss=result.last_loss,
        loss_history=result.loss_history,
        sec_per_iter=elapsed / done if done else float("nan"),
        trainable_fraction=trainable_fraction(trained),
        classifier=clf,
        classifier_report=clf_report,
        resumed_from=result.resumed_from,
        nonfinite_steps=nonfinite["total"],
        monitor=list(monitor.records) if monitor is not None else [],
        best_adapter_dir=monitor.best_dir if monitor is not None and monitor.records else None,
    )
