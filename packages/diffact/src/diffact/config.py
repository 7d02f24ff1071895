"""Frozen configuration dataclasses with the official DiffAct defaults, presets and a JSON round-trip.

Defaults are GTEA's, from the official ``default_configs.py`` (Finspire13/DiffAct @ a223e0c);
:func:`preset` gives ``gtea``, ``50salads``, ``breakfast`` and a ``tiny`` one for tests and demos.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import DiffActError

COND_TYPES = ("full", "zero", "boundary03-", "boundary05-", "segment=1", "segment=2")
MODES = ("decoder-agg", "decoder-noagg", "encoder")
SEGMENT_ENDS = ("mstcn", "asformer")


@dataclass(frozen=True)
class EncoderConfig:
    """Temporal encoder (§2.2)."""

    input_dim: int = 2048  # I3D RGB + flow
    num_layers: int = 10
    num_f_maps: int = 64
    kernel_size: int = 5
    normal_dropout: float = 0.5
    channel_dropout: float = 0.5
    temporal_dropout: float = 0.5
    feature_layer_indices: tuple[int, ...] = (5, 7, 9)
    use_instance_norm: bool = False


@dataclass(frozen=True)
class DecoderConfig:
    """Conditioned denoising decoder (§2.3)."""

    num_layers: int = 8
    num_f_maps: int = 24
    kernel_size: int = 5
    dropout: float = 0.1
    time_emb_dim: int = 512


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion over one-hot sequences (§2.4) and the training condition masks (§2.5)."""

    num_train_timesteps: int = 1000
    snr_scale: float = 0.5  # λ: 0.5 GTEA/Breakfast, 1.0 50Salads
    sampling_steps: int = 25
    ddim_eta: float = 1.0
    cond_types: tuple[str, ...] = ("full", "zero", "boundary03-", "segment=1", "segment=1")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (§2.6); ``soft_label=None`` means class-weighted plain CE."""

    ce_weight: float = 0.5
    smooth_weight: float = 0.1
    boundary_weight: float = 0.1
    encoder_boundary_weight: float = 0.0  # must stay 0, as in the official code
    soft_label: float | None = 1.4
    boundary_smooth: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    """MS-TCN data layout and sampling (§4.1)."""

    dataset: str = "gtea"
    num_classes: int = 11
    sample_rate: int = 1
    temporal_aug: bool = True
    length_mismatch: str = "error"  # or "truncate" (MS-TCN's truncate-to-shorter)
    unknown_label: str = "error"  # or "ignore": those frames leave CE and boundary losses
    bg_classes: tuple[str, ...] = ("background",)
    fps: float = 15.0
    mmap_threshold_gb: float = 8.0


@dataclass(frozen=True)
class PostprocessConfig:
    """Post-processing (§2.7): ``kind`` is ``None``, ``"purge"`` (min length) or ``"median"`` (window)."""

    kind: str | None = "purge"
    value: int = 3


@dataclass(frozen=True)
class EvalConfig:
    """Inference and scoring (§2.7, §2.8, §2.10, §8)."""

    mode: str = "decoder-agg"
    segment_end: str = "mstcn"
    selection: str = "val"  # "val", "test" (the paper's protocol) or "last"
    val_fraction: float = 0.15
    sampling_seed: int = 0
    seed_by: str = "name"  # "name": seed + crc32(video); "index": the official per-index seeding


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (§2.7): Adam, 4-video accumulation, evaluation every ``eval_every`` epochs."""

    lr: float = 5e-4
    weight_decay: float = 1e-6
    accumulation: int = 4
    epochs: int = 10001
    eval_every: int = 100
    max_steps: int | None = None  # overrides epochs when set
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class DiffActConfig:
    """Everything one DiffAct run needs."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffActConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`DiffActError`."""
        parts = {}
        for f in fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            values = dict(data.get(f.name, {}))
            known = {g.name for g in fields(sub_cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise DiffActError(
                    f"config section {f.name!r}: unknown keys {unknown}; known {sorted(known)}"
                )
            for key, value in values.items():
                if isinstance(value, list):
                    values[key] = tuple(value)
            parts[f.name] = sub_cls(**values)
        return cls(**parts)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DiffActConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DiffActError(f"{path}: cannot read the config JSON ({err})") from err
        return cls.from_dict(data.get("config", data))

    def with_updates(self, **sections: dict[str, Any]) -> DiffActConfig:
        """A copy with fields replaced per section, e.g. ``with_updates(train={"lr": 1e-3})``."""
        return replace(
            self, **{name: replace(getattr(self, name), **values) for name, values in sections.items()}
        )


def validate(cfg: DiffActConfig) -> None:
    """Raise :class:`DiffActError` naming the field for an impossible configuration."""

    def bad(where: str, why: str) -> DiffActError:
        return DiffActError(f"invalid config {where}: {why}")

    enc, dec = cfg.encoder, cfg.decoder
    for where, k in (("encoder.kernel_size", enc.kernel_size), ("decoder.kernel_size", dec.kernel_size)):
        if k < 1 or k % 2 == 0:
            raise bad(where, f"{k} must be a positive odd int")
    out_of_range = [i for i in enc.feature_layer_indices if not -2 <= i < enc.num_layers]
    if out_of_range or not enc.feature_layer_indices:
        raise bad(
            "encoder.feature_layer_indices",
            f"{list(enc.feature_layer_indices)}: need a non-empty list in -2..{enc.num_layers - 1}",
        )
    if cfg.loss.encoder_boundary_weight != 0:
        raise bad("loss.encoder_boundary_weight", "must be 0 (the encoder has no boundary loss)")
    unknown = [c for c in cfg.diffusion.cond_types if c not in COND_TYPES]
    if unknown or not cfg.diffusion.cond_types:
        raise bad("diffusion.cond_types", f"{unknown or 'empty'}: use some of {COND_TYPES}")
    if cfg.diffusion.snr_scale <= 0:
        raise bad("diffusion.snr_scale", "must be > 0")
    if not 1 <= cfg.diffusion.sampling_steps <= cfg.diffusion.num_train_timesteps:
        raise bad("diffusion.sampling_steps", f"must be in 1..{cfg.diffusion.num_train_timesteps}")
    if cfg.data.num_classes < 2 or cfg.data.sample_rate < 1:
        raise bad("data", "num_classes must be >= 2 and sample_rate >= 1")
    if cfg.data.length_mismatch not in ("error", "truncate"):
        raise bad("data.length_mismatch", "use 'error' or 'truncate'")
    if cfg.data.unknown_label not in ("error", "ignore"):
        raise bad("data.unknown_label", "use 'error' or 'ignore'")
    if cfg.postprocess.kind not in (None, "purge", "median"):
        raise bad("postprocess.kind", "use None, 'purge' or 'median'")
    if cfg.eval.mode not in MODES:
        raise bad("eval.mode", f"use one of {MODES}")
    if cfg.eval.segment_end not in SEGMENT_ENDS:
        raise bad("eval.segment_end", f"use one of {SEGMENT_ENDS}")
    if cfg.eval.selection not in ("val", "test", "last"):
        raise bad("eval.selection", "use 'val', 'test' or 'last'")
    if cfg.eval.seed_by not in ("name", "index"):
        raise bad("eval.seed_by", "use 'name' or 'index'")
    if cfg.train.accumulation < 1 or cfg.train.lr <= 0 or cfg.train.eval_every < 1:
        raise bad("train", "accumulation and eval_every must be >= 1 and lr > 0")


def preset(name: str) -> DiffActConfig:
    """The official defaults for ``gtea``, ``50salads`` or ``breakfast``, or the small ``tiny`` preset."""
    if name == "gtea":
        return DiffActConfig()
    if name == "50salads":
        return DiffActConfig(
            decoder=DecoderConfig(kernel_size=7),
            diffusion=DiffusionConfig(
                snr_scale=1.0, cond_types=("full", "zero", "boundary05-", "segment=2", "segment=2")
            ),
            loss=LossConfig(soft_label=None, boundary_smooth=20.0),
            data=DataConfig(dataset="50salads", num_classes=19, sample_rate=8),
            postprocess=PostprocessConfig(kind="median", value=30),
            train=TrainConfig(lr=5e-4, weight_decay=0.0, epochs=5001, eval_every=100),
        )
    if name == "breakfast":
        return DiffActConfig(
            encoder=EncoderConfig(
                num_layers=12,
                num_f_maps=256,
                channel_dropout=0.1,
                temporal_dropout=0.1,
                feature_layer_indices=(7, 8, 9),
            ),
            decoder=DecoderConfig(num_f_maps=128),
            loss=LossConfig(smooth_weight=0.025, soft_label=4.0, boundary_smooth=3.0),
            data=DataConfig(dataset="breakfast", num_classes=48),
            postprocess=PostprocessConfig(kind="median", value=15),
            train=TrainConfig(lr=1e-4, weight_decay=0.0, epochs=1001, eval_every=20),
        )
    if name == "tiny":
        return DiffActConfig(
            encoder=EncoderConfig(input_dim=16, num_layers=6, num_f_maps=32, feature_layer_indices=(1, 3, 5)),
            decoder=DecoderConfig(num_layers=4, num_f_maps=16, time_emb_dim=64),
            data=DataConfig(dataset="synthetic", num_classes=5),
            postprocess=PostprocessConfig(kind=None),
            train=TrainConfig(lr=2e-3, weight_decay=0.0, epochs=200, eval_every=50),
        )
    raise DiffActError(f"unknown preset {name!r}; use gtea, 50salads, breakfast or tiny")


PRESETS = ("gtea", "50salads", "breakfast", "tiny")
