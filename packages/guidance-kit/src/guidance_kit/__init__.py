"""Anti-Memorization Guidance and Compress Guidance for diffusers pipelines."""

from .amg import (
    AMGConfig,
    AMGResult,
    AMGStepRecord,
    AntiMemorizationGuidance,
    amg,
    calibrate,
    generate_with_amg,
)
from .captions import CaptionStats, normalise_caption, read_captions
from .compress import classifier_guidance, compress_cfg, increment_uncond, interval_cfg, sample
from .denoiser import GuidanceRun
from .encoder_classifier import EncoderClassifier, fit_encoder_classifier
from .errors import GuidanceKitError
from .index import NeighbourIndex
from .noisy_classifier import load_noisy_classifier, train_noisy_classifier
from .schedules import (
    StepSchedule,
    compress_schedule,
    early_stop_schedule,
    full_schedule,
    interval_matched,
    interval_schedule,
    random_schedule,
    step_sigmas,
    uniform_schedule,
)

__version__ = "0.1.0"

_GUIDERS = ("HAS_GUIDERS", "CompressGuidance", "IntervalGuidance", "ScheduledGuidance")


def __getattr__(name: str):
    """The diffusers guiders load lazily (importing ``diffusers.guiders`` takes seconds)."""
    if name in _GUIDERS:
        from . import guiders

        return getattr(guiders, name)
    raise AttributeError(f"module 'guidance_kit' has no attribute {name!r}")


__all__ = [
    "HAS_GUIDERS",
    "AMGConfig",
    "AMGResult",
    "AMGStepRecord",
    "AntiMemorizationGuidance",
    "CaptionStats",
    "CompressGuidance",
    "EncoderClassifier",
    "GuidanceKitError",
    "GuidanceRun",
    "IntervalGuidance",
    "NeighbourIndex",
    "ScheduledGuidance",
    "StepSchedule",
    "__version__",
    "amg",
    "calibrate",
    "classifier_guidance",
    "compress_cfg",
    "compress_schedule",
    "early_stop_schedule",
    "fit_encoder_classifier",
    "full_schedule",
    "generate_with_amg",
    "increment_uncond",
    "interval_cfg",
    "interval_matched",
    "interval_schedule",
    "load_noisy_classifier",
    "normalise_caption",
    "random_schedule",
    "read_captions",
    "sample",
    "step_sigmas",
    "train_noisy_classifier",
    "uniform_schedule",
]
