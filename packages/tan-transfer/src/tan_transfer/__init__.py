"""Few-shot transfer of diffusion models: adapters, similarity-guided training, adversarial noise selection (DPMs-ANT).

Main entry points: `load_dpm` → `digits_task` / `load_image_folder` → `train_tan` → `sample` → `proxy_metrics`;
the photo-patch task adds `pretrain_source` (its source DDPM) and `patch_cnn` (its proxy network).
"""

from .adapters import (
    AdaptedUNet,
    AntAdapter,
    AntAdapterSet,
    add_lora,
    base_config_hash,
    build_adapted_unet,
    fuse_lora,
    load_adapters,
    save_adapters,
    trainable_fraction,
)
from .classifier import (
    SmallNoisyClassifier,
    UNetEncoderClassifier,
    build_classifier,
    load_custom_classifier,
    target_logprob_grad,
    train_domain_classifier,
)
from .config import LORA_TARGETS, TANConfig
from .data import (
    FewShotTask,
    digits_task,
    load_captioned_folder,
    load_image_folder,
    photo_image,
    photo_patch_task,
    read_captions,
    save_image_folder,
)
from .errors import TanTransferError
from .evaluate import (
    copy_mask,
    copy_rate,
    evaluate_run,
    fid,
    intra_cluster_distance,
    lpips_distance,
    proxy_metrics,
)
from .losses import tan_loss
from .model import DPMBundle, load_dpm
from .monitor import MonitorRecord, OverfittingMonitor, monitor_score
from .noise import adversarial_noise, antithetic_timesteps, guidance_weight, standardize
from .patch_proxy import PATCH_CLASSES, PatchCNNConfig, PatchFeatures, patch_cnn, patch_split
from .pretrain import default_unet_config, pretrain_source
from .sample import default_scheduler, make_pipeline, sample
from .train import TanTrainResult, build_model, effective_gamma, sample_source_images, train_tan

__version__ = "0.1.0"

__all__ = [
    "LORA_TARGETS",
    "PATCH_CLASSES",
    "AdaptedUNet",
    "AntAdapter",
    "AntAdapterSet",
    "DPMBundle",
    "FewShotTask",
    "MonitorRecord",
    "OverfittingMonitor",
    "PatchCNNConfig",
    "PatchFeatures",
    "SmallNoisyClassifier",
    "TANConfig",
    "TanTrainResult",
    "TanTransferError",
    "UNetEncoderClassifier",
    "__version__",
    "add_lora",
    "adversarial_noise",
    "antithetic_timesteps",
    "base_config_hash",
    "build_adapted_unet",
    "build_classifier",
    "build_model",
    "copy_mask",
    "copy_rate",
    "default_scheduler",
    "default_unet_config",
    "digits_task",
    "effective_gamma",
    "evaluate_run",
    "fid",
    "fuse_lora",
    "guidance_weight",
    "intra_cluster_distance",
    "load_adapters",
    "load_captioned_folder",
    "load_custom_classifier",
    "load_dpm",
    "load_image_folder",
    "lpips_distance",
    "make_pipeline",
    "monitor_score",
    "patch_cnn",
    "patch_split",
    "photo_image",
    "photo_patch_task",
    "pretrain_source",
    "proxy_metrics",
    "read_captions",
    "sample",
    "sample_source_images",
    "save_adapters",
    "save_image_folder",
    "standardize",
    "tan_loss",
    "target_logprob_grad",
    "train_domain_classifier",
    "train_tan",
    "trainable_fraction",
]
