"""Anti-Memorization Guidance (Chen et al., CVPR 2024) for diffusers pipelines and `UNet2DModel`s."""

from .config import TERMS, AMGConfig
from .guidance import AMGStepRecord, AntiMemorizationGuidance
from .noised import NoisedPixelDistance
from .profiles import SIM_SCALE_GRID, SIM_SCALES
from .run import AMGResult, amg, calibrate, generate_with_amg, pipeline_decoder
from .similarity import Detection, EmbeddingSimilarity, PixelSimilarity, SSIMSimilarity, make_similarity

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
    "NoisedPixelDistance",
    "PixelSimilarity",
    "SSIMSimilarity",
    "amg",
    "calibrate",
    "generate_with_amg",
    "make_similarity",
    "pipeline_decoder",
]
