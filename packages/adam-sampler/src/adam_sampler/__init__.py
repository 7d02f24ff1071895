"""adam-sampler: the Adaptive Momentum Sampler as a drop-in diffusers scheduler."""

from .compare import DEFAULT_SAMPLERS, SchedulerSpec, compare_samplers, sample
from .errors import AdamSamplerError
from .functional import lambda_schedule, momentum_update, second_moment_update
from .scheduling_ams import PRESETS, AdaptiveMomentumScheduler, AdaptiveMomentumSchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SAMPLERS",
    "PRESETS",
    "AdamSamplerError",
    "AdaptiveMomentumScheduler",
    "AdaptiveMomentumSchedulerOutput",
    "SchedulerSpec",
    "__version__",
    "compare_samplers",
    "lambda_schedule",
    "momentum_update",
    "sample",
    "second_moment_update",
]
