"""Content and motion memorization in video diffusion models: metrics, audit and detection.

Main entry points: `audit_videos` (folder audit), `write_sprite_testbed` (the planted testbed as files),
`VideoIndex`, `audit`, `generate_videos`, `MemorizationDetector`, `evaluate`.
"""

from .audit import AuditReport, audit, audit_videos, generate_videos, read_prompts, score_clip, summarize
from .content import ContentMatch, VideoLevelMatch, content_match, frame_similarity, video_level_match
from .detect import DetectionRecord, MemorizationDetector, frame_magnitudes, prompt_scores
from .embed import (
    FrameEmbedder,
    TinyImageEmbedder,
    TorchScriptEmbedder,
    create_embedder,
    default_tau_c,
    load_sscd,
)
from .errors import MemVideoError
from .evaluation import calibrate_threshold, evaluate
from .flow import FarnebackFlow, FlowEstimator, RAFTFlow, create_flow, video_flows
from .index import ContentHit, MotionHit, VideoIndex
from .io import VideoClip, read_image, read_video, to_clip, to_clips, write_video
from .motion import MotionMatch, NaturalMotionFilter, NMFResult, flow_similarity, ofs_k
from .oracle import OraclePipeline, OracleVideoDenoiser, oracle_prompts
from .sources import (
    ClipSource,
    FolderSource,
    FrameFolderSource,
    ImageFolderSource,
    SourceItem,
    UCF101Source,
    Video2DatasetSource,
    WebVidSource,
)
from .testbed import SpriteMemTestbed, SpriteTestbedData, write_sprite_testbed

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "ClipSource",
    "ContentHit",
    "ContentMatch",
    "DetectionRecord",
    "FarnebackFlow",
    "FlowEstimator",
    "FolderSource",
    "FrameEmbedder",
    "FrameFolderSource",
    "ImageFolderSource",
    "MemVideoError",
    "MemorizationDetector",
    "MotionHit",
    "MotionMatch",
    "NMFResult",
    "NaturalMotionFilter",
    "OraclePipeline",
    "OracleVideoDenoiser",
    "RAFTFlow",
    "SourceItem",
    "SpriteMemTestbed",
    "SpriteTestbedData",
    "TinyImageEmbedder",
    "TorchScriptEmbedder",
    "UCF101Source",
    "Video2DatasetSource",
    "VideoClip",
    "VideoIndex",
    "VideoLevelMatch",
    "WebVidSource",
    "__version__",
    "audit",
    "audit_videos",
    "calibrate_threshold",
    "content_match",
    "create_embedder",
    "create_flow",
    "default_tau_c",
    "evaluate",
    "flow_similarity",
    "frame_magnitudes",
    "frame_similarity",
    "generate_videos",
    "load_sscd",
    "ofs_k",
    "oracle_prompts",
    "prompt_scores",
    "read_image",
    "read_prompts",
    "read_video",
    "score_clip",
    "summarize",
    "to_clip",
    "to_clips",
    "video_flows",
    "video_level_match",
    "write_sprite_testbed",
    "write_video",
]
