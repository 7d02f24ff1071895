"""`TANConfig`: every hyper-parameter of DPMs-ANT training, with the defaults of the paper / official code.

Provenance: [paper] Wang et al., ICML 2024; [code] ShinyGua/DPMs-ANT @241e398; [ours] our reconstruction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import TanTransferError

__all__ = ["LORA_TARGETS", "TANConfig"]

LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")
"""Modules LoRA wraps by default: attention projections, ResNet convs and their time projections."""

_CHOICES = {
    "adapter": ("ant", "lora", "full"),
    "ant_init": ("zero_out", "official"),
    "s_schedule": ("one_minus_alphabar", "paper"),
    "ascent_norm": ("standard", "match_initial"),
    "classifier": ("unet_encoder", "small_cnn", "custom"),
    "classifier_pooling": ("attention", "mean"),
    "mixed_precision": ("no", "fp16", "bf16"),
}


@dataclass
class TANConfig:
    """Hyper-parameters of one TAN / DPMs-ANT run (`train_tan`)."""

    # adapters (§2.5)
    adapter: str = "ant"
    """"ant" (parallel adapters, [code]), "lora" (peft) or "full" (all weights, the baseline)."""
    ant_dim: int = 8
    """Adapter width d [paper; appendix for 9 of 10 tasks]."""
    ant_heads: int = 2
    ant_dropout: float = 0.1
    """[code base.yaml]."""
    ant_pool: int = 4
    """Patch pooling p [code]; clipped to the feature map size [ours]."""
    ant_init: str = "zero_out"
    """"zero_out": official N(0, 2e-4) init plus a zero last conv, so training starts at the source model."""
    lora_rank: int = 4
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # similarity guidance (§2.2)
    similarity_guidance: bool = True
    gamma: float = 5.0
    """Guidance strength γ [paper §5.2]."""
    s_schedule: str = "one_minus_alphabar"
    """Weight s_t: "one_minus_alphabar" [code] or "paper" (σ̂_t²)."""
    guidance_reference_dim: int | None = None
    """None: γ as given [paper]. An int D_ref: use γ·√(D / D_ref), D = C·H·W of the model's sample space, so the
    shift γ·s_t·g keeps the size relative to ε (norm √D) that γ gives at D_ref; ‖g‖ itself barely depends on D
    (measured, see the README). The paper's pixel DDPMs: 3·256·256 = 196608; its LDMs: 3·64·64 = 12288 [ours]."""
    # adversarial noise (§2.3)
    adversarial_noise: bool = True
    ascent_steps: int = 10
    """J [paper appendix, code]."""
    omega: float = 0.02
    """Ascent step ω [paper appendix, code]."""
    ascent_ref_batch: int = 5
    """The gradient is divided by this; 5 reproduces the official per-GPU mean, 1 the literal Eq. 7 [ours]."""
    resample_t_inner: bool = False
    """Re-draw t at every ascent step, as the official code does (the paper keeps t fixed)."""
    ascent_norm: str = "standard"
    """Norm after each ascent step: "standard" = per-sample mean 0, std 1 [paper]; "match_initial" = the
    per-sample mean and std of the starting draw ε⁰ [ours]. They agree as C·H·W grows; on small images "standard"
    removes the noise's per-sample mean (std 1/√D: 1/16 on 16×16×1, 1/443 on 3×256×256), which the model then never
    sees in training but meets when sampling (see the README)."""
    fixed_batch: bool = False
    """Reuse one batch of shots for every iteration, as the official code does."""
    hflip: bool = False
    # optimisation (§2.6)
    iterations: int = 300
    """[paper Table 7: best FID at 300]."""
    batch_size: int = 40
    """B [paper]; split into ``batch_size / micro_batch`` accumulated micro-batches."""
    micro_batch: int = 10
    lr: float | None = None
    """None: 5e-5 for pixel models, 1e-5 for latent models [paper]."""
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    warmup_fraction: float = 0.2
    ema_decay: float = 0.9
    """[code]; sampling uses the EMA weights."""
    checkpoint_every: int = 50
    # domain classifier (§2.4)
    classifier: str = "unet_encoder"
    classifier_pooling: str = "attention"
    classifier_steps: int = 300
    classifier_lr: float = 1e-4
    classifier_weight_decay: float = 1e-4
    classifier_batch: int = 10
    """Images per domain in each balanced classifier batch (10 source + 10 target)."""
    source_from_model: int = 200
    """Source images sampled from the frozen model when no source folder is given [ours]."""
    # overfitting monitor (§8.4)
    monitor_every: int = 25
    """Log copy rate and the classifier's target probability every this many iterations (and at the last one) to
    ``metrics.jsonl`` and keep the best adapters in ``adapter_best/``; 0 turns the monitor off [ours]."""
    monitor_samples: int = 32
    """Size of the fixed sample batch the monitor draws (DDIM, η = 1, same seed every time)."""
    monitor_steps: int = 25
    """DDIM steps of the monitor's samples."""
    # run
    prompt: str = ""
    """Prompt for text-conditional models."""
    seed: int = 0
    mixed_precision: str = "no"
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the run (not used by training)."""

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise TanTransferError(
                    f"TANConfig.{name}", f"{getattr(self, name)!r} is not one of {choices}"
                )
        for name in ("ant_dim", "ant_heads", "ant_pool", "lora_rank", "iterations", "batch_size"):
            self._positive_int(name)
        for name in ("micro_batch", "ascent_ref_batch", "classifier_steps", "classifier_batch"):
            self._positive_int(name)
        for name in ("monitor_samples", "monitor_steps"):
            self._positive_int(name)
        for name in ("ascent_steps", "checkpoint_every", "source_from_model", "seed", "monitor_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TanTransferError(f"TANConfig.{name}", f"must be an int >= 0, got {value!r}")
        if self.ant_dim % self.ant_heads:
            raise TanTransferError(
                "TANConfig.ant_dim", f"{self.ant_dim} is not divisible by ant_heads={self.ant_heads}"
            )
        if self.batch_size % self.micro_batch:
            raise TanTransferError(
                "TANConfig.batch_size",
                f"{self.batch_size} is not a multiple of micro_batch={self.micro_batch}",
            )
        if not 0.0 <= self.ant_dropout < 1.0:
            raise TanTransferError("TANConfig.ant_dropout", f"must be in [0, 1), got {self.ant_dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise TanTransferError("TANConfig.ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TanTransferError(
                "TANConfig.warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}"
            )
        if self.lr is not None and not self.lr > 0:
            raise TanTransferError("TANConfig.lr", f"must be > 0 or None, got {self.lr}")
        if self.guidance_reference_dim is not None:
            self._positive_int("guidance_reference_dim")
        for name in ("gamma", "omega"):
            if getattr(self, name) < 0:
                raise TanTransferError(f"TANConfig.{name}", f"must be >= 0, got {getattr(self, name)}")
        self.lora_targets = tuple(self.lora_targets)
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def _positive_int(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TanTransferError(f"TANConfig.{name}", f"must be an int >= 1, got {value!r}")

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        out["betas"] = list(self.betas)
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TANConfig:
        """Parse JSON text, or read a JSON file; unknown keys raise `TanTransferError`."""
        source = str(text_or_path)
        if not source.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise TanTransferError(path, "config file not found")
            source = path.read_text()
        try:
            data = json.loads(source)
        except json.JSONDecodeError as err:
            raise TanTransferError("TANConfig", f"not valid JSON ({err})") from err
        if "tan_config" in data:  # a run's config.json
            data = data["tan_config"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TanTransferError("TANConfig", f"unknown fields {unknown}")
        for key in ("lora_targets", "betas"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)
