"""Collage prompting: many images in one vision-LLM call, with a learned arrangement, exact cost model and a resumable OpenAI-compatible client."""

from collage_prompt.batch import BatchSummary, RateLimiter, RetryPolicy, run_batch
from collage_prompt.calibrate import Calibration, calibrate_image_tokens
from collage_prompt.client import OpenAIChatClient, ReplayClient, VLMClient, VLMRequest, VLMResponse
from collage_prompt.collect import collect_training_data, load_official_dataset
from collage_prompt.cost import CostModel, PriceTable, estimate, image_tokens, query_cost
from collage_prompt.data import CSVDataset, ImageDataset, ImageFolderDataset, offline_dataset
from collage_prompt.errors import CollagePromptError
from collage_prompt.evaluate import Report, evaluate_protocol
from collage_prompt.fallback import CellAnswer, HybridRun, run_with_fallback
from collage_prompt.features import FeatureExtractor, HandcraftedFeatures, OpenClipFeatures, TimmFeatures
from collage_prompt.grid import (
    GridSpec,
    all_permutations,
    canonical,
    grid_adjacency,
    grid_graph,
    render_collage,
    symmetry_group,
)
from collage_prompt.metrics import arrangement_gain, cer, ces, ces_rel, pce
from collage_prompt.optimize import (
    Arrangement,
    ExhaustiveSearch,
    GeneticSearch,
    SwapSearch,
    optimize_arrangement,
    similarity_scorer,
)
from collage_prompt.plan import (
    AccuracyTable,
    BudgetPlan,
    PlanOption,
    plan_budget,
    plan_for_accuracy,
    simulated_accuracy_table,
)
from collage_prompt.predictor import (
    CollageGCN,
    CollageSample,
    OfficialLikeGCN,
    PredictorConfig,
    load_predictor,
    score,
    train_predictor,
)
from collage_prompt.prompt import (
    ParseResult,
    PromptTemplate,
    build_messages,
    load_classes,
    normalize_label,
    parse_answer,
)
from collage_prompt.simulate import CellClassifier, SimConfig, SimulatedVLM

__version__ = "0.1.0"

__all__ = [
    "AccuracyTable",
    "Arrangement",
    "BatchSummary",
    "BudgetPlan",
    "CSVDataset",
    "Calibration",
    "CellAnswer",
    "CellClassifier",
    "CollageGCN",
    "CollagePromptError",
    "CollageSample",
    "CostModel",
    "ExhaustiveSearch",
    "FeatureExtractor",
    "GeneticSearch",
    "GridSpec",
    "HandcraftedFeatures",
    "HybridRun",
    "ImageDataset",
    "ImageFolderDataset",
    "OfficialLikeGCN",
    "OpenAIChatClient",
    "OpenClipFeatures",
    "ParseResult",
    "PlanOption",
    "PredictorConfig",
    "PriceTable",
    "PromptTemplate",
    "RateLimiter",
    "ReplayClient",
    "Report",
    "RetryPolicy",
    "SimConfig",
    "SimulatedVLM",
    "SwapSearch",
    "TimmFeatures",
    "VLMClient",
    "VLMRequest",
    "VLMResponse",
    "all_permutations",
    "arrangement_gain",
    "build_messages",
    "calibrate_image_tokens",
    "canonical",
    "cer",
    "ces",
    "ces_rel",
    "collect_training_data",
    "estimate",
    "evaluate_protocol",
    "grid_adjacency",
    "grid_graph",
    "image_tokens",
    "load_classes",
    "load_official_dataset",
    "load_predictor",
    "normalize_label",
    "offline_dataset",
    "optimize_arrangement",
    "parse_answer",
    "pce",
    "plan_budget",
    "plan_for_accuracy",
    "query_cost",
    "render_collage",
    "run_batch",
    "run_with_fallback",
    "score",
    "similarity_scorer",
    "simulated_accuracy_table",
    "symmetry_group",
    "train_predictor",
]
