"""Frozen configuration dataclasses with the reconstructed defaults (§2.2–2.5), presets and JSON round-trip.

:func:`preset` gives ``cholect50_cv``, ``cholect45_cv`` (Adam lr 5e-5, wd 1e-5 / 5e-5, 1201 epochs,
evaluate every 100) and ``tiny`` (encoder 4×32, decoder 4×64, time embedding 64) for tests and demos.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import DiffTripletError

__all__ = [
    "DataConfig",
    "DiffTripletConfig",
    "DiffusionConfig",
    "EvalConfig",
    "InferenceConfig",
    "ModelConfig",
    "TrainConfig",
    "preset",
]

COND_TYPES = ("full", "zero")
SELECTIONS = ("val", "test-window", "last")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and decoder (§2.2); ``input_dim`` is the feature size F (1600 for RDV-4x4)."""

    input_dim: int = 1600
    encoder_layers: int = 4
    encoder_f_maps: int = 128
    encoder_kernel_size: int = 5
    normal_dropout: float = 0.1
    channel_dropout: float = 0.5
    temporal_dropout: float = 0.5
    feature_layer_indices: tuple[int, ...] = (1, 2, 3)
    use_instance_norm: bool = False
    decoder_layers: int = 4
    decoder_f_maps: int = 256
    decoder_kernel_size: int = 11
    decoder_dropout: float = 0.2
    time_emb_dim: int = 512
    causal: bool = False  # non-causal by default [decision]


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion over the joint multi-hot sequence (§2.3)."""

    num_train_timesteps: int = 1000
    snr_scale: float = 1.0  # λ
    sampling_steps: int = 8  # S
    ddim_eta: float = 1.0
    cond_types: tuple[str, ...] = ("full", "full", "zero")


@dataclass(frozen=True)
class DataConfig:
    """Which labels and features to read and how strictly (§4.1, §7)."""

    target_components: tuple[str, ...] = ("ivt", "i", "v", "t")
    component_labels: str = "triplet"  # or "json" (CAMMA loader's items 1, 7, 8)
    missing_frames: str = "error"  # or "empty"
    length_mismatch: str = "error"  # or "truncate"
    strict_components: bool = False  # component IDs contradicting the bank: warn, or raise when True


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (§2.5): Adam, one video per step."""

    lr: float = 5e-5
    weight_decay: float = 1e-5
    epochs: int = 1201
    max_steps: int | None = None  # overrides epochs × videos when set
    eval_every: int = 100  # epochs
    sample_rate: int = 1
    class_weighting: tuple[str, ...] = ()  # components given pos_weight n_neg / (n_pos + 10)
    seed: int = 0
    device: str = "auto"
    keep_checkpoints: int = 2


@dataclass(frozen=True)
class InferenceConfig:
    """Sampling and association guidance (§2.4–2.5)."""

    mode: str = "decoder"  # decoder, encoder or ensemble
    guidance_scale: float = 1.0  # w
    guidance_components: tuple[str, ...] = ("i",)
    sampling_seed: int = 0  # each video's generator: sampling_seed + crc32(name)


@dataclass(frozen=True)
class EvalConfig:
    """Model selection and metrics (§2.7–2.8)."""

    selection: str = "val"  # official CAMMA validation; "test-window" reproduces the fork (labelled)
    protocol: str = "cv"
    nan_policy: str = "canonical"


_SECTIONS = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "inference": InferenceConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True)
class DiffTripletConfig:
    """Everything a run needs; :meth:`to_dict` / :meth:`from_dict` round-trip through JSON."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_classes(self) -> int:
        from .labels import TripletSpace

        return TripletSpace.from_ivtmetrics(self.data.target_components).num_channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffTripletConfig:
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise DiffTripletError(f"unknown config sections {unknown}; expected {sorted(_SECTIONS)}")
        return cls(
            **{name: _section(section, data.get(name, {}), name) for name, section in _SECTIONS.items()}
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DiffTripletConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as err:
            raise DiffTripletError(f"config file {path} does not exist") from err
        except json.JSONDecodeError as err:
            raise DiffTripletError(f"config file {path} is not valid JSON: {err}") from err

    def with_updates(self, **sections: dict[str, Any]) -> DiffTripletConfig:
        """A copy with fields of the named sections replaced, e.g. ``with_updates(train={"lr": 1e-3})``."""
        changes = {}
        for name, values in sections.items():
            if name not in _SECTIONS:
                raise DiffTripletError(f"unknown config section {name!r}")
            current = asdict(getattr(self, name))
            changes[name] = _section(_SECTIONS[name], current | dict(values), name)
        return replace(self, **changes)


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise DiffTripletError(f"config section {name!r}: unknown fields {unknown}; known: {sorted(known)}")
    typed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**typed)


def validate(cfg: DiffTripletConfig) -> None:
    """Raise :class:`DiffTripletError` naming the first bad field."""

    def bad(where: str, why: str) -> DiffTripletError:
        return DiffTripletError(f"config {where}: {why}")

    if any(kind not in COND_TYPES for kind in cfg.diffusion.cond_types) or not cfg.diffusion.cond_types:
        raise bad("diffusion.cond_types", f"{cfg.diffusion.cond_types}: use a non-empty list of {COND_TYPES}")
    if cfg.diffusion.snr_scale <= 0:
        raise bad("diffusion.snr_scale", "must be > 0")
    if not 1 <= cfg.diffusion.sampling_steps <= cfg.diffusion.num_train_timesteps:
        raise bad("diffusion.sampling_steps", "must be in 1..num_train_timesteps")
    if cfg.inference.mode not in ("decoder", "encoder", "ensemble"):
        raise bad("inference.mode", f"{cfg.inference.mode!r}: use decoder, encoder or ensemble")
    if cfg.eval.selection not in SELECTIONS:
        raise bad("eval.selection", f"{cfg.eval.selection!r}: use one of {SELECTIONS}")
    if cfg.eval.protocol not in ("cv", "challenge"):
        raise bad("eval.protocol", f"{cfg.eval.protocol!r}: use cv or challenge")
    if cfg.eval.nan_policy not in ("canonical", "installed"):
        raise bad("eval.nan_policy", f"{cfg.eval.nan_policy!r}: use canonical or installed")
    if cfg.data.component_labels not in ("triplet", "json"):
        raise bad("data.component_labels", "use triplet or json")
    if cfg.data.missing_frames not in ("error", "empty"):
        raise bad("data.missing_frames", "use error or empty")
    if cfg.data.length_mismatch not in ("error", "truncate"):
        raise bad("data.length_mismatch", "use error or truncate")
    if cfg.train.sample_rate < 1:
        raise bad("train.sample_rate", "must be >= 1")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise bad("train.max_steps", "must be >= 1 or None")
    if cfg.model.causal and cfg.model.use_instance_norm:
        raise bad("model.causal", "causal=True needs use_instance_norm=False")
    unknown = [c for c in cfg.train.class_weighting if c not in cfg.data.target_components]
    if unknown:
        raise bad("train.class_weighting", f"{unknown} not in data.target_components")


def preset(name: str) -> DiffTripletConfig:
    """``cholect50_cv``, ``cholect45_cv`` or ``tiny``."""
    if name == "cholect50_cv":
        return DiffTripletConfig()
    if name == "cholect45_cv":
        return DiffTripletConfig(train=TrainConfig(weight_decay=5e-5))
    if name == "tiny":
        return DiffTripletConfig(
            model=ModelConfig(input_dim=32, encoder_f_maps=32, decoder_f_maps=64, time_emb_dim=64),
            train=TrainConfig(lr=2e-3, max_steps=400, eval_every=50),
        )
    raise DiffTripletError(f"unknown preset {name!r}; use cholect50_cv, cholect45_cv or tiny")
