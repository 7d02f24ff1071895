"""adam-sampler: the Adaptive Momentum Sampler as a drop-in diffusers scheduler."""

from .errors import AdamSamplerError
from .functional import lambda_schedule, momentum_update, second_moment_update
from .scheduling_ams import PRESETS, AdaptiveMomentumScheduler, AdaptiveMomentumSchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AdamSamplerError",
    "AdaptiveMomentumScheduler",
    "AdaptiveMomentumSchedulerOutput",
    "__version__",
    "lambda_schedule",
    "momentum_update",
    "second_moment_update",
]
