"""Teacher training, two-in-one distillation and evaluation, all on ``difflab_core.train`` (Accelerate).

* :func:`train_teacher` — CE on the fused logits plus 0.5·CE per auxiliary branch head; Adam(2e-4,
  wd 5e-4), DeepfakeBench defaults; optional model selection on validation AUC every ``eval_every`` steps.
* :func:`distill` — the student with projectors and a :class:`GradientHomogenizer` as one trainable
  module (rotations in their own parameter group at ``rotation_lr_factor·lr``); the frozen teacher
  lives on the accelerator's device outside it, or its outputs are cached once (``cache_teacher``).
  Per-step loss terms and gradient-conflict diagnostics go to ``distill_log.jsonl``.
* :func:`evaluate` — frame, video and per-manipulation metrics; with a ``store`` folder, per-video
  predictions are appended to ``predictions.jsonl`` and a rerun resumes by video key.

Everything resumes from the latest checkpoint in ``out_dir`` (exact on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from difflab_core.device import resolve_device
from difflab_core.store import ResultStore
from difflab_core.tiny import seeded
from difflab_core.train import TrainConfig, Trainer, TrainResult, seeded_loader

from .data import DeepfakeBenchDataset
from .errors import ForgeryKDError, core_errors
from .homogenize import GradientHomogenizer
from .losses import TwoInOneConfig, TwoInOneLoss
from .metrics import frame_metrics, per_type_metrics, video_metrics
from .models import DualBranchTeacher, Student, export_student, load_teacher, save_teacher
from .projectors import make_projectors

__all__ = [
    "DISTILL_VARIANTS",
    "DataConfig",
    "DistillConfig",
    "DistillModel",
    "DistillOutcome",
    "TeacherOutcome",
    "TeacherTrainConfig",
    "distill",
    "distill_variant",
    "evaluate",
    "predict_scores",
    "train_teacher",
]

logger = logging.getLogger(__name__)
MAX_BAD_STEPS = 5


@dataclass
class DataConfig:
    """Where the frames are: DeepfakeBench JSON lists (see :class:`DeepfakeBenchDataset`)."""

    json_dir: str = "."
    names: tuple[str, ...] = ("FaceForensics++",)
    rgb_root: str = "."
    compression: str = "c23"
    frame_num: int = 32
    img_size: int = 256
    max_missing: float = 0.05

    def dataset(self, split: str) -> DeepfakeBenchDataset:
        return DeepfakeBenchDataset(
            self.json_dir,
            list(self.names),
            split,
            self.compression,
            self.frame_num,
            self.rgb_root,
            img_size=self.img_size,
            max_missing=self.max_missing,
        )


@dataclass
class _Optim:
    """Shared optimisation settings (DeepfakeBench detector configs: Adam, lr 2e-4, wd 5e-4, batch 32, 10 epochs)."""

    steps: int = 0
    """Optimizer steps; 0 means ``epochs`` passes over the training set."""
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 0
    mixed_precision: str = "no"
    max_grad_norm: float | None = None
    balance: str = "none"
    """``sampler`` draws real and fake frames equally often (FF++ is 1 real : 4 fake)."""
    progress: bool = False

    def __post_init__(self) -> None:
        if self.balance not in ("none", "sampler"):
            raise ForgeryKDError(f"balance={self.balance!r}: use 'none' or 'sampler'")
        if self.batch_size < 2:
            raise ForgeryKDError(
                f"batch_size={self.batch_size}: BatchNorm in training mode needs at least 2 samples per batch"
            )


@dataclass
class TeacherTrainConfig(_Optim):
    """Teacher training run (defaults: DeepfakeBench F3-Net/two-stream configs; aux weight 0.5 is ours)."""

    out_dir: str = "runs/teacher"
    data: DataConfig = field(default_factory=DataConfig)
    spatial: str = "legacy_xception"
    frequency: str = "legacy_xception"
    freq_transform: str = "fad"
    use: str = "both"
    spatial_weights: str | None = None
    frequency_weights: str | None = None
    aux_weight: float = 0.5
    eval_every: int = 0
    """Evaluate validation AUC every this many steps and keep the best teacher (0: keep the last)."""


@dataclass
class DistillConfig(_Optim):
    """Distillation run; loss weights in ``loss`` (see :class:`TwoInOneConfig`)."""

    out_dir: str = "runs/student"
    data: DataConfig = field(default_factory=DataConfig)
    teacher_dir: str | None = None
    student: str = "mobilenetv3_large_100"
    student_weights: str | None = None
    projector: str = "dedicated"
    homogenize: str | None = "rotograd"
    """A :data:`~forgery_kd.homogenize.HOMOGENIZE_MODES` mode, or None (no homogenizer at all)."""
    homog_tasks: str = "branches"
    """``branches`` (spa, freq) or ``all`` (adds cls = CE + KD as a third task)."""
    burn_in: int = 20
    rotation_dim: int = 512
    rotation_param: str = "expm"
    rotation_lr_factor: float = 0.1
    loss: TwoInOneConfig = field(default_factory=TwoInOneConfig)
    cache_teacher: bool = False
    """Compute the teacher's outputs once per training frame (valid without random augmentation)."""


DISTILL_VARIANTS: dict[str, dict[str, Any]] = {
    "student_ce": {"homogenize": None, "loss": {"w_kd": 0.0, "beta_spa": 0.0, "beta_freq": 0.0}},
    "kd_logits": {"homogenize": None, "loss": {"beta_spa": 0.0, "beta_freq": 0.0}},
    "fitnet_spatial_only": {"homogenize": None, "loss": {"beta_freq": 0.0}},
    "at_spatial_only": {"homogenize": None, "loss": {"beta_freq": 0.0, "beta_spa": 1.0, "feature": "at"}},
    "shared_both": {"projector": "shared", "homogenize": "none"},
    "dedicated_none": {"homogenize": "none"},
    "dedicated_normbal": {"homogenize": "norm_balance"},
    "dedicated_rotograd": {"homogenize": "rotograd"},
    "dedicated_pcgrad": {"homogenize": "pcgrad"},
}
"""The benchmark's distillation variants as overrides of :class:`DistillConfig`."""


def distill_variant(name: str, **overrides: Any) -> DistillConfig:
    """A :class:`DistillConfig` for one of :data:`DISTILL_VARIANTS`, with further overrides."""
    if name not in DISTILL_VARIANTS:
        raise ForgeryKDError(f"variant {name!r} is unknown; use one of {', '.join(DISTILL_VARIANTS)}")
    preset = dict(DISTILL_VARIANTS[name])
    loss = TwoInOneConfig(**{**preset.pop("loss", {}), **overrides.pop("loss", {})})
    return DistillConfig(**{**preset, **overrides, "loss": loss})


# ------------------------------------------------------------------------------------------- helpers


def _train_config(cfg: _Optim, steps: int, lr: float) -> TrainConfig:
    with core_errors("training config"):
        return TrainConfig(
            max_steps=steps,
            lr=lr,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            mixed_precision=cfg.mixed_precision,
            checkpoint_every=cfg.checkpoint_every,
            seed=cfg.seed,
            log_every=10,
            progress=cfg.progress,
            betas=cfg.betas,
        )


def _loader(dataset: Dataset, cfg: _Optim) -> DataLoader:
    drop_last = len(dataset) > cfg.batch_size
    if cfg.balance == "sampler":
        from difflab_core.data import weighted_sampler

        sampler = weighted_sampler(dataset.sample_weights(), num_samples=len(dataset), seed=cfg.seed)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last)
    return seeded_loader(dataset, cfg.batch_size, cfg.seed, drop_last=drop_last)


def _steps(cfg: _Optim, loader: DataLoader) -> int:
    return cfg.steps if cfg.steps > 0 else cfg.epochs * max(1, len(loader))


class _NanGuard:
    """Skip non-finite losses (a zero loss in their place); fail after ``MAX_BAD_STEPS`` in a row."""

    def __init__(self) -> None:
        self.bad = 0

    def __call__(self, loss: Tensor, model: nn.Module, step: int) -> Tensor:
        if torch.isfinite(loss):
            self.bad = 0
            return loss
        self.bad += 1
        if self.bad >= MAX_BAD_STEPS:
            raise ForgeryKDError(
                f"loss was NaN/inf for {self.bad} steps in a row (step {step}); lower the lr"
            )
        logger.warning("step %d: non-finite loss, step skipped", step)
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)


def _batch_check(x: Tensor) -> None:
    if x.shape[0] < 2:
        raise ForgeryKDError(
            "a training batch has 1 sample; BatchNorm needs >= 2 (use a larger batch or drop_last)"
        )


# ------------------------------------------------------------------------------------------- teacher


@dataclass
class TeacherOutcome:
    teacher: DualBranchTeacher
    result: TrainResult
    teacher_dir: Path
    val_auc: float | None = None


def train_teacher(
    cfg: TeacherTrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None
) -> TeacherOutcome:
    """Train a :class:`DualBranchTeacher` initialised under ``cfg.seed``; writes ``<out_dir>/teacher``
    (safetensors + config.json). Two runs with the same config give identical weights."""
    train_set = train_set if train_set is not None else cfg.data.dataset("train")
    if cfg.eval_every and val_set is None:
        val_set = cfg.data.dataset("val")
    with seeded(cfg.seed):  # the initial weights depend on cfg.seed only, not on the caller's RNG state
        teacher = DualBranchTeacher(
            cfg.spatial,
            cfg.frequency,
            cfg.freq_transform,
            cfg.data.img_size,
            use=cfg.use,
            spatial_weights=cfg.spatial_weights,
            frequency_weights=cfg.frequency_weights,
        )
    loader = _loader(train_set, cfg)
    total = _steps(cfg, loader)
    guard = _NanGuard()

    def loss_fn(model: nn.Module, batch: dict[str, Tensor], step: int) -> Tensor:
        _batch_check(batch["image"])
        out = model(batch["image"])
        y = batch["label"]
        loss = F.cross_entropy(out.logits, y)
        for aux in (out.logits_spa, out.logits_freq):
            if aux is not None:
                loss = loss + cfg.aux_weight * F.cross_entropy(aux, y)
        return guard(loss, model, step)

    out_dir = Path(cfg.out_dir)
    teacher_dir = out_dir / "teacher"
    marks = list(range(cfg.eval_every, total, cfg.eval_every)) if cfg.eval_every else []
    best = -math.inf
    result = None
    for end in [*marks, total]:
        optimizer = torch.optim.Adam(
            teacher.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        trainer = Trainer(
            teacher, loss_fn, loader, _train_config(cfg, end, cfg.lr), out_dir, optimizer=optimizer
        )
        with core_errors(str(out_dir)):
            result = trainer.fit(resume=True)
        if val_set is None:
            continue
        auc = evaluate(teacher, val_set, batch_size=cfg.batch_size)["frame"]["auc"]
        if auc > best:
            best = auc
            save_teacher(teacher, teacher_dir)
    if val_set is None:
        save_teacher(teacher, teacher_dir)
    return TeacherOutcome(load_teacher(teacher_dir), result, teacher_dir, None if val_set is None else best)


# ----------------------------------------------------------------------------------------- distill


class DistillModel(nn.Module):
    """Everything distillation trains: the student, its projectors and the homogenizer's rotations.

    ``forward(x)`` returns ``{"logits", "spa", "freq"}``: the student's logits and the maps compared
    with each teacher branch (projected for FitNet, the raw student view for AT).
    """

    def __init__(
        self,
        student: Student,
        projectors: nn.ModuleDict | None,
        homogenizer: GradientHomogenizer | None,
        cls_task: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.projectors = projectors
        self.homogenizer = homogenizer
        self.cls_task = cls_task

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.student.features(x)
        views = self.homogenizer.split(h) if self.homogenizer is not None else [h, h, h]
        logits = self.student.head(views[2] if self.cls_task else h)
        spa, freq = views[0], views[1]
        if self.projectors is not None:
            spa, freq = self.projectors["spa"](spa), self.projectors["freq"](freq)
        return {"logits": logits, "spa": spa, "freq": freq}


class _TeacherTargets:
    """Teacher logits and branch maps for a batch, computed live or looked up from a one-off cache."""

    def __init__(self, teacher: DualBranchTeacher, dataset: Dataset | None, batch_size: int) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.cache: dict[str, Tensor] | None = None
        if dataset is not None:
            self.cache = self._compute_cache(dataset, batch_size)

    @torch.no_grad()
    def _compute_cache(self, dataset: Dataset, batch_size: int) -> dict[str, Tensor]:
        """Teacher outputs for every frame of ``dataset`` (kept on the CPU), computed on the best device."""
        parts: dict[str, list[Tensor]] = defaultdict(list)
        device = resolve_device("auto")
        self.teacher.to(device)
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out = self.teacher(batch["image"].to(device))
            parts["logits"].append(out.logits.cpu())
            for name in ("feat_spa", "feat_freq"):
                if getattr(out, name) is not None:
                    parts[name].append(getattr(out, name).cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    @torch.no_grad()
    def __call__(self, x: Tensor, index: Tensor) -> dict[str, Tensor | None]:
        if self.cache is not None:
            idx = index.cpu()
            return {k: v[idx].to(x.device) for k, v in self.cache.items()}
        self.teacher.to(x.device)
        out = self.teacher(x)
        return {"logits": out.logits, "feat_spa": out.feat_spa, "feat_freq": out.feat_freq}


@dataclass
class DistillOutcome:
    student: Student
    result: TrainResult
    student_dir: Path
    diagnostics: dict[str, float]
    """Mean ``grad_cos_spa_freq`` and ``grad_norm_ratio`` over the run (NaN without a homogenizer)."""


def _diagnostics_summary(path: Path) -> dict[str, float]:
    records: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["step"]] = record
    cos = [r["grad_cos_01"] for r in records.values() if "grad_cos_01" in r]
    ratio = [r["grad_norm_ratio_01"] for r in records.values() if "grad_norm_ratio_01" in r]
    return {
        "grad_cos_spa_freq": sum(cos) / len(cos) if cos else math.nan,
        "grad_norm_ratio": sum(ratio) / len(ratio) if ratio else math.nan,
    }


def build_distill_model(cfg: DistillConfig, teacher: DualBranchTeacher) -> DistillModel:
    """The trainable :class:`DistillModel` for ``cfg`` against ``teacher``'s branch widths, initialised
    under ``cfg.seed`` (the same seed gives the same initial weights whatever the global RNG state)."""
    with seeded(cfg.seed):
        return _build_distill_model(cfg, teacher)


def _build_distill_model(cfg: DistillConfig, teacher: DualBranchTeacher) -> DistillModel:
    student = Student(cfg.student, cfg.student_weights)
    channels = teacher.feature_channels
    if set(channels) != {"spa", "freq"} and (cfg.loss.beta_spa or cfg.loss.beta_freq):
        raise ForgeryKDError(
            f"distillation with feature terms needs a two-branch teacher, got branches {list(channels)}"
        )
    projectors = None
    if cfg.loss.feature == "fitnet" and (cfg.loss.beta_spa or cfg.loss.beta_freq):
        projectors = make_projectors(student, channels, cfg.projector)
    homogenizer = None
    if cfg.homogenize is not None:
        if cfg.homog_tasks not in ("branches", "all"):
            raise ForgeryKDError(f"homog_tasks={cfg.homog_tasks!r}: use 'branches' or 'all'")
        tasks = 3 if cfg.homog_tasks == "all" else 2
        homogenizer = GradientHomogenizer(
            tasks, student.num_features, cfg.homogenize, cfg.burn_in, cfg.rotation_dim, cfg.rotation_param
        )
    return DistillModel(
        student, projectors, homogenizer, cls_task=cfg.homog_tasks == "all" and homogenizer is not None
    )


def distill(
    cfg: DistillConfig, teacher: DualBranchTeacher | None = None, train_set: Dataset | None = None
) -> DistillOutcome:
    """Distil ``teacher`` (or the one in ``cfg.teacher_dir``) into a student; writes ``<out_dir>/student``."""
    if teacher is None:
        if cfg.teacher_dir is None:
            raise ForgeryKDError("distill: give a teacher or DistillConfig.teacher_dir")
        teacher = load_teacher(cfg.teacher_dir)
    train_set = train_set if train_set is not None else cfg.data.dataset("train")
    model = build_distill_model(cfg, teacher)
    targets = _TeacherTargets(teacher, train_set if cfg.cache_teacher else None, cfg.batch_size)
    criterion = TwoInOneLoss(cfg.loss)
    loader = _loader(train_set, cfg)
    total = _steps(cfg, loader)
    guard = _NanGuard()
    out_dir = Path(cfg.out_dir)
    log_path = out_dir / "distill_log.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    homogenizer = model.homogenizer
    state: dict[str, Any] = {"trainer": None, "terms": None}

    def log_previous(step: int) -> None:
        # The homogenizer's statistics of step s are known only after its backward: write them at s + 1.
        if state["terms"] is None:
            return
        record = {"step": step - 1, **state["terms"]}
        if homogenizer is not None:
            record.update(homogenizer.stats())
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def loss_fn(net: nn.Module, batch: dict[str, Tensor], step: int) -> Tensor:
        x, y = batch["image"], batch["label"]
        _batch_check(x)
        log_previous(step)
        if homogenizer is not None:
            scaler = state["trainer"].accelerator.scaler
            homogenizer.grad_scale = float(scaler.get_scale()) if scaler is not None else 1.0
        t = targets(x, batch["index"])
        out = net(x)
        terms = criterion(
            out["logits"], y, t["logits"], out["spa"], t.get("feat_spa"), out["freq"], t.get("feat_freq")
        )
        state["terms"] = {k: float(v.detach()) for k, v in terms.items()}
        return guard(terms["total"], net, step)

    rotation_params = set()
    if homogenizer is not None and homogenizer.rotations is not None:
        rotation_params = {id(p) for p in homogenizer.rotations.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in rotation_params], "lr": cfg.lr}]
    if rotation_params:
        groups.append(
            {"params": list(homogenizer.rotations.parameters()), "lr": cfg.lr * cfg.rotation_lr_factor}
        )
    optimizer = torch.optim.Adam(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    trainer = Trainer(model, loss_fn, loader, _train_config(cfg, total, cfg.lr), out_dir, optimizer=optimizer)
    state["trainer"] = trainer
    with core_errors(str(out_dir)):
        result = trainer.fit(resume=True)
    log_previous(result.step + 1)
    student_dir = export_student(model.student, out_dir / "student", img_size=cfg.data.img_size)
    return DistillOutcome(model.student.eval(), result, student_dir, _diagnostics_summary(log_path))


# ---------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    dataset: Dataset,
    indices: list[int] | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> list[float]:
    """``P(fake)`` for each frame of ``dataset`` (or the given indices), model in eval mode."""
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    subset = dataset if indices is None else Subset(dataset, indices)
    scores: list[float] = []
    for batch in DataLoader(subset, batch_size=batch_size, shuffle=False):
        logits = model(batch["image"].to(dev)).logits
        scores.extend(torch.softmax(logits.float(), dim=1)[:, 1].cpu().tolist())
    model.train(was_training)
    return scores


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    store: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Frame, video and per-manipulation metrics of ``model`` (teacher or student) on ``dataset``.

    ``dataset`` needs ``labels``, ``video_ids`` and ``kinds`` (the frame datasets of :mod:`forgery_kd.data`).
    With ``store``, per-video predictions go to ``<store>/predictions.jsonl`` and finished videos are skipped.
    """
    videos: dict[str, list[int]] = defaultdict(list)
    for i, vid in enumerate(dataset.video_ids):
        videos[vid].append(i)
    results = ResultStore(store, name="predictions") if store is not None else None
    records = {}
    if results is not None:
        records = {r["key"]: r for r in results.records()}
    pending = [v for v in videos if v not in records]
    flat = [i for v in pending for i in videos[v]]
    scores = predict_scores(model, dataset, flat, batch_size, device) if flat else []
    position = 0
    for v in pending:
        n = len(videos[v])
        first = videos[v][0]
        record = {
            "key": v,
            "label": int(dataset.labels[first]),
            "kind": dataset.kinds[first],
            "scores": scores[position : position + n],
        }
        position += n
        records[v] = record
        if results is not None:
            results.append(record)
    p, y, vids, kinds = [], [], [], []
    for v in videos:
        r = records[v]
        p += r["scores"]
        y += [r["label"]] * len(r["scores"])
        vids += [v] * len(r["scores"])
        kinds += [r["kind"]] * len(r["scores"])
    return {
        "frame": frame_metrics(p, y),
        "video": video_metrics(p, y, vids),
        "per_type": per_type_metrics(p, y, kinds),
        "n_frames": len(p),
        "n_videos": len(videos),
    }
