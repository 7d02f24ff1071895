"""Anti-Memorization Guidance (Chen et al., CVPR 2024) for diffusers pipelines and `UNet2DModel`s."""

from .config import TERMS, AMGConfig
from .guidance import AMGStepRecord, AntiMemorizationGuidance
from .noised import NoisedPixelDistance
from .profiles import SIM_SCALE_GRID, SIM_SCALES
from .run import (
    AMGResult,
    amg,
    calibrate,
    generate_with_amg,
    load_preview_decoder,
    pipeline_decoder,
    vae_decoder,
)
from .similarity import (
    Detection,
    EmbeddingSimilarity,
    LatentPixelSimilarity,
    PixelSimilarity,
    SSIMSimilarity,
    make_similarity,
)

__all__ = [
    "SIM_SCALES",
    "SIM_SCALE_GRID",
    "TERMS",
    "AMGConfig",
    "AMGResult",
    "AMGStepRecord",
    "AntiMemorizationGuidance",
    "Detection",
    "EmbeddingSimilarity",
    "LatentPixelSimilarity",
    "NoisedPixelDistance",
    "PixelSimilarity",
    "SSIMSimilarity",
    "amg",
    "calibrate",
    "generate_with_amg",
    "load_preview_decoder",
    "make_similarity",
    "pipeline_decoder",
    "vae_decoder",
]
