"""The training loop every difflab package shares.

Packages own the model and a loss function ``loss_fn(model, batch, step) -> Tensor`` (a scalar);
:class:`Trainer` owns the rest through :mod:`accelerate`: devices, mixed precision, gradient
accumulation and clipping, the learning-rate schedule, EMA weights, checkpoints and exact resume,
progress display and the loss log.

Layout of ``output_dir``::

    checkpoints/step-00000500/   # accelerate state (safetensors weights, optimizer, RNG states),
                                 # trainer_state.json (position, schedule), ema.safetensors;
                                 # COMPLETE is written last. Nothing is loaded with pickle.
    train_log.jsonl              # one JSON record per logged step: step, loss, lr, epoch, time_s
    model.safetensors            # final weights
    model_ema.safetensors        # final EMA weights (when ``ema_decay`` is set)

Resume is exact: the latest complete checkpoint restores weights, optimizer, schedule, EMA, the
torch/numpy/python RNG states and the position in the data, so a run that is killed and resumed
ends with the same weights as one that never stopped — provided the data order depends only on
``(seed, epoch)``, as with :func:`seeded_loader`, :func:`difflab_core.data.weighted_sampler` or a
``shuffle=True`` loader under the accelerator this module creates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from difflab_core.data import EpochSampler
from difflab_core.errors import DifflabError

__all__ = [
    "EMA",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "find_latest_checkpoint",
    "load_weights",
    "lr_multiplier",
    "save_weights",
    "seeded_loader",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, int], Tensor]
"""``loss_fn(model, batch, step) -> scalar Tensor``; ``step`` counts optimizer steps from 1."""

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
EMA_STATE_FILE = "ema.safetensors"
COMPLETE_MARKER = "COMPLETE"
LOG_FILE = "train_log.jsonl"
MODEL_FILE = "model.safetensors"
EMA_FILE = "model_ema.safetensors"
_CHECKPOINT_RE = re.compile(r"^step-(\d{8,})$")


# --------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything :class:`Trainer` needs besides the model, the loss and the data.

    Steps are optimizer steps; each consumes ``grad_accum`` batches.
    """

    max_steps: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float | None = None
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps; 0 saves only at the end."""
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 50
    progress: bool = True
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DifflabError:
            return DifflabError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("max_steps", "grad_accum", "keep_checkpoints", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be an int >= 1")
        for name in ("warmup_steps", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "must be an int >= 0")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise bad("lr_schedule", "use 'constant', 'cosine' or 'linear'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise bad("mixed_precision", "use 'no', 'fp16' or 'bf16'")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise bad("max_grad_norm", "must be > 0, or None to disable clipping")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in (0, 1), or None to disable EMA")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    """Optimizer steps completed (``max_steps`` after a full run)."""
    last_loss: float
    """Loss of the final step (mean over its micro-batches, this process)."""
    loss_history: list[tuple[int, float]]
    """``(step, mean loss since the previous record)`` every ``log_every`` steps, the whole run."""
    checkpoint: Path
    """The final checkpoint directory."""
    model_path: Path
    ema_path: Path | None = None
    resumed_from: Path | None = None


def lr_multiplier(step: int, *, max_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """Learning-rate factor for optimizer step ``step`` (counted from 1).

    Linear warm-up ``step / warmup_steps`` for the first ``warmup_steps`` steps, then with
    ``t = (step - warmup_steps - 1) / (max_steps - warmup_steps)`` in [0, 1):
    constant 1, cosine ``(1 + cos(pi t)) / 2`` or linear ``1 - t``.
    """
    if step <= warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup_steps - 1) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise DifflabError(f"unknown lr schedule {schedule!r}; use 'constant', 'cosine' or 'linear'")


# ------------------------------------------------------------------------------------------------ EMA


class EMA:
    """Exponential moving average of a model's floating-point parameters (kept in float32).

    After each :meth:`update`, ``shadow = d * shadow + (1 - d) * param`` with
    ``d = decay``, or ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` previous updates when
    ``warmup`` is on (so early averages are not dominated by the random initialisation).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise DifflabError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def _pairs(self, model: nn.Module) -> Iterator[tuple[Tensor, nn.Parameter]]:
        params = dict(model.named_parameters())
        missing = [name for name in self.shadow if name not in params]
        if missing:
            raise DifflabError(
                f"model lacks EMA parameters {missing[:5]}; pass the model the EMA was built from"
            )
        for name, shadow in self.shadow.items():
            yield shadow, params[name]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current parameters."""
        weight = 1.0 - self.current_decay()
        for shadow, param in self._pairs(model):
            shadow.lerp_(param.detach().to(device=shadow.device, dtype=shadow.dtype), weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averaged ones."""
        for shadow, param in self._pairs(model):
            param.copy_(shadow.to(device=param.device, dtype=param.dtype))

    @contextlib.contextmanager
    def average_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the averaged weights into ``model`` (e.g. to sample or save)."""
        live = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in live:
                        p.copy_(live[name])

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow parameters to ``device``."""
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:5]
            unexpected = sorted(set(shadow) - set(self.shadow))[:5]
            raise DifflabError(
                f"EMA state does not match the model: missing {missing}, unexpected {unexpected}"
            )
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)


# -------------------------------------------------------------------------------------------- weights


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model``'s state dict to a ``.safetensors`` file (tied tensors stored once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path), metadata={"format": "pt"}, force_contiguous=True)
    return path


def _aliases(state: dict[str, Tensor]) -> dict[str, set[str]]:
    """Map each key to the keys whose tensor is the very same view of the same storage."""
    groups: dict[tuple, set[str]] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        groups.setdefault(key, set()).add(name)
    return {name: group for group in groups.values() for name in group}


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load a ``.safetensors`` file written by :func:`save_weights` into ``model``.

    Raises:
        DifflabError: naming ``path`` if it is missing or unreadable, or (``strict``) if its keys or
            shapes do not match the model; a few missing / unexpected keys are listed.
    """
    path = Path(path)
    if not path.is_file():
        raise DifflabError(f"weights file {path} does not exist; check the path or train the model first")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:
        raise DifflabError(f"weights file {path} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    aliases = _aliases(expected)
    missing = [k for k in expected if k not in state and not (aliases[k] & state.keys())]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if strict and (missing or unexpected or shapes):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise DifflabError(
            f"weights file {path} does not match {type(model).__name__}: {'; '.join(problems)}. "
            "Was it saved from a different model or configuration?"
        )
    state = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------------------------- data


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose order in epoch ``e`` depends only on ``(seed, e)``.

    It uses :class:`difflab_core.data.EpochSampler` and its own generator, so iterating it never
    touches the global torch RNG; :class:`Trainer` calls ``set_epoch`` to resume mid-epoch exactly.
    """
    if batch_size < 1:
        raise DifflabError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle=shuffle),
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def _epoch_aware_sampler(loader: DataLoader) -> Any:
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            return sampler
    return None


# ---------------------------------------------------------------------------------------- checkpoints


def _rng_states() -> tuple[Any, ...]:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Any, ...]) -> None:
    py, npy, cpu, cuda = states
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(_checkpoint_step(p), p) for p in root.iterdir()]
    return sorted((s, p) for s, p in found if s is not None and (p / COMPLETE_MARKER).is_file())


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``output_dir/checkpoints/step-N`` holding a ``COMPLETE`` marker, or None.

    Directories without the marker (a save interrupted by a crash) are ignored.
    """
    complete = _complete_checkpoints(Path(output_dir) / CHECKPOINT_DIR)
    return complete[-1][1] if complete else None


@dataclass
class _Progress:
    """Training position, checkpointed with the accelerate state."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    window_loss: float = 0.0
    window_steps: int = 0
    last_loss: float = math.nan

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))


@dataclass
class _Scheduler:
    """LambdaLR-like schedule over optimizer steps; saved in ``trainer_state.json``."""

    optimizer: torch.optim.Optimizer
    config: TrainConfig
    base_lrs: list[float] = field(default_factory=list)
    last_step: int = 0

    def __post_init__(self) -> None:
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        self._apply()

    def _apply(self) -> None:
        factor = lr_multiplier(
            self.last_step + 1,
            max_steps=self.config.max_steps,
            warmup_steps=self.config.warmup_steps,
            schedule=self.config.lr_schedule,
        )
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.last_step = int(state["last_step"])
        self._apply()


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Runs ``loss_fn`` over ``dataloader`` for ``config.max_steps`` optimizer steps.

    Args:
        model: the module to train; moved to the accelerator's device.
        loss_fn: ``loss_fn(model, batch, step) -> scalar Tensor`` with ``step`` in ``1..max_steps``;
            batches arrive already on the device. Draw noise from the global RNGs (``torch.randn``
            etc.): their states are checkpointed, so a resumed run draws the same noise.
        dataloader: a ``torch.utils.data.DataLoader``, iterated endlessly across epochs. For exact
            resume its order must depend only on the epoch (see :func:`seeded_loader`).
        config: a :class:`TrainConfig`.
        output_dir: where checkpoints, the loss log and the final weights go.
        optimizer: defaults to ``AdamW(lr, betas, weight_decay)`` over trainable parameters; its
            learning rates are scaled by the schedule each step.
        accelerator: an existing ``accelerate.Accelerator``; it must use ``config.grad_accum``
            accumulation steps with ``sync_with_dataloader=False``. By default one is built from
            ``config``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataloader: DataLoader,
        config: TrainConfig,
        output_dir: str | os.PathLike[str],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        if not isinstance(dataloader, DataLoader):
            raise DifflabError(
                f"dataloader must be a torch.utils.data.DataLoader, got {type(dataloader).__name__}; "
                "wrap your dataset with difflab_core.train.seeded_loader(dataset, batch_size, seed)"
            )
        self.config = config
        self.loss_fn = loss_fn
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator if accelerator is not None else self._build_accelerator(config)
        self._check_accelerator(self.accelerator)
        if optimizer is None:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise DifflabError("model has no trainable parameters (all requires_grad=False)")
            optimizer = torch.optim.AdamW(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
        self._epoch_sampler = _epoch_aware_sampler(dataloader)
        if (
            isinstance(dataloader.sampler, RandomSampler)
            and dataloader.sampler.generator is None
            and not self.accelerator.use_seedable_sampler
        ):
            logger.warning(
                "dataloader shuffles with the global RNG, so a resumed run will see a different data "
                "order; use difflab_core.train.seeded_loader for exact resume"
            )
        if dataloader.generator is None:
            # Otherwise every new data iterator draws a worker seed from the global torch RNG, which
            # would shift the noise drawn in loss_fn after a resume.
            dataloader.generator = torch.Generator().manual_seed(config.seed)
        self.model, self.optimizer, self.dataloader = self.accelerator.prepare(model, optimizer, dataloader)
        self.scheduler = _Scheduler(self.optimizer, config)
        self.ema = None
        if config.ema_decay is not None:
            self.ema = EMA(self.accelerator.unwrap_model(self.model), config.ema_decay)
        self.progress = _Progress()

    # -- setup ----------------------------------------------------------------------------------------

    @staticmethod
    def _build_accelerator(config: TrainConfig) -> Accelerator:
        precision = config.mixed_precision
        if precision == "fp16" and not torch.cuda.is_available():
            logger.warning("mixed_precision='fp16' needs CUDA; training in full precision ('no') instead")
            precision = "no"
        return Accelerator(
            mixed_precision=precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.grad_accum, sync_with_dataloader=False
            ),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )

    def _check_accelerator(self, accelerator: Accelerator) -> None:
        if accelerator.gradient_accumulation_steps != self.config.grad_accum:
            raise DifflabError(
                f"accelerator.gradient_accumulation_steps={accelerator.gradient_accumulation_steps} but "
                f"TrainConfig.grad_accum={self.config.grad_accum}; make them equal"
            )
        if accelerator.gradient_state.sync_with_dataloader:
            raise DifflabError(
                "the accelerator syncs gradients at the end of each epoch; build it with "
                "GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False)"
            )

    # -- data -----------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        """Endless batches, starting at the checkpointed ``(epoch, batches_in_epoch)`` position."""
        p = self.progress
        while True:
            skip = p.batches_in_epoch
            loader = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            if self._epoch_sampler is not None:
                self._epoch_sampler.set_epoch(p.epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(p.epoch)
            yielded = False
            for batch in loader:
                yielded = True
                p.batches_in_epoch += 1
                yield batch
            if not yielded and skip == 0:
                raise DifflabError(
                    "the dataloader yielded no batches; is the dataset empty or drop_last too strict?"
                )
            p.epoch += 1
            p.batches_in_epoch = 0

    # -- checkpoints ----------------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    def save_checkpoint(self) -> Path:
        """Save the full training state to ``checkpoints/step-{step:08d}`` and prune old ones."""
        acc = self.accelerator
        path = self.checkpoint_root / f"step-{self.progress.step:08d}"
        if acc.is_main_process and path.exists():
            shutil.rmtree(path)
        acc.wait_for_everyone()
        acc.save_state(str(path), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._save_trainer_state(path)
            marker = {"step": self.progress.step, "epoch": self.progress.epoch, "time": time.time()}
            tmp = path / f".{COMPLETE_MARKER}.tmp"
            tmp.write_text(json.dumps(marker) + "\n")
            os.replace(tmp, path / COMPLETE_MARKER)
            for _, old in _complete_checkpoints(self.checkpoint_root)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def _save_trainer_state(self, path: Path) -> None:
        """Progress, schedule and EMA as JSON + safetensors (accelerate's custom states would be pickles)."""
        state: dict[str, Any] = {
            "progress": self.progress.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.ema is not None:
            ema = self.ema.state_dict()
            shadow = {k: v.detach().cpu().contiguous() for k, v in ema.pop("shadow").items()}
            save_file(shadow, str(path / EMA_STATE_FILE))
            state["ema"] = ema
        (path / TRAINER_STATE_FILE).write_text(json.dumps(state) + "\n")

    def _load_trainer_state(self, path: Path) -> None:
        state_path = path / TRAINER_STATE_FILE
        if not state_path.is_file():
            raise DifflabError(
                f"{state_path}: missing; this checkpoint was not written by difflab_core.train"
            )
        state = json.loads(state_path.read_text())
        self.progress.load_state_dict(state["progress"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise DifflabError(f"{path}: the checkpoint has no EMA state but config.ema_decay is set")
            device = next(iter(self.ema.shadow.values())).device
            shadow = {k: v.to(device) for k, v in load_file(str(path / EMA_STATE_FILE)).items()}
            self.ema.load_state_dict(state["ema"] | {"shadow": shadow})

    def _read_log(self, up_to_step: int) -> list[dict[str, Any]]:
        path = self.output_dir / LOG_FILE
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("step", math.inf) <= up_to_step:
                    records.append(record)
        return records

    def _start_log(self, records: list[dict[str, Any]]) -> None:
        """Rewrite the log with ``records`` (drops lines a crashed run wrote after its checkpoint)."""
        self.accelerator.wait_for_everyone()  # every process has read the old log
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / LOG_FILE, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        self.accelerator.wait_for_everyone()

    # -- loop -----------------------------------------------------------------------------------------

    def _train_step(self, batches: Iterator[Any], step: int) -> float:
        acc, cfg = self.accelerator, self.config
        losses = []
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss = self.loss_fn(self.model, batch, step)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise DifflabError(
                        f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(getattr(loss, 'shape', ()))}"
                    )
                acc.backward(loss.reshape(()))
                if acc.sync_gradients and cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float().reshape(()))
        if not acc.sync_gradients:
            raise RuntimeError("gradient accumulation fell out of step with the accelerator")
        if not self.optimizer.step_was_skipped:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.model))
        return torch.stack(losses).mean().item()

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not (self.config.progress and self.accelerator.is_main_process),
        )

    def fit(self, resume: bool = True) -> TrainResult:
        """Train to ``config.max_steps``, resuming from the latest complete checkpoint if ``resume``.

        Raises:
            DifflabError: if ``resume=False`` but ``output_dir`` already holds checkpoints.
        """
        acc, cfg, p = self.accelerator, self.config, self.progress
        latest = find_latest_checkpoint(self.output_dir)
        resumed_from = None
        if latest is not None and resume:
            acc.load_state(str(latest))
            self._load_trainer_state(latest)
            resumed_from = latest
            logger.info("resumed from %s at step %d", latest, p.step)
        elif latest is not None:
            raise DifflabError(
                f"{self.checkpoint_root} already holds checkpoints (latest {latest.name}); pass "
                "resume=True to continue, or delete that directory / choose another output_dir to restart"
            )
        else:
            set_seed(cfg.seed, device_specific=True)
        # Setup below must not shift the noise loss_fn draws (e.g. a library seeding an id counter
        # from `random` on first import): snapshot the seeded/restored RNGs and reinstate them.
        rng = _rng_states()
        records = self._read_log(p.step) if resumed_from is not None else []
        self._start_log(records)
        history = [(int(r["step"]), float(r["loss"])) for r in records]

        last_saved = p.step if resumed_from is not None else -1
        batches = self._batches()
        start_time = time.monotonic()
        with (
            self._progress_bar() as bar,
            open(self.output_dir / LOG_FILE, "a") if acc.is_main_process else contextlib.nullcontext() as log,
        ):
            task = bar.add_task("train", total=cfg.max_steps, completed=p.step, loss="-")
            _set_rng_states(rng)
            while p.step < cfg.max_steps:
                step = p.step + 1
                lr = self.scheduler.get_last_lr()[0]
                p.last_loss = self._train_step(batches, step)
                p.step = step
                p.window_loss += p.last_loss
                p.window_steps += 1
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    mean = torch.tensor(p.window_loss / p.window_steps, device=acc.device)
                    mean = acc.reduce(mean, reduction="mean").item()
                    p.window_loss, p.window_steps = 0.0, 0
                    history.append((step, mean))
                    if log is not None:
                        record = {
                            "step": step,
                            "loss": mean,
                            "lr": lr,
                            "epoch": p.epoch,
                            "time_s": round(time.monotonic() - start_time, 3),
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                bar.update(task, completed=step, loss=f"{p.last_loss:.4g}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                    last_saved = step
        checkpoint = (
            self.save_checkpoint() if last_saved != p.step else self.checkpoint_root / f"step-{p.step:08d}"
        )

        model_path, ema_path = self.output_dir / MODEL_FILE, None
        unwrapped = acc.unwrap_model(self.model)
        if acc.is_main_process:
            save_weights(unwrapped, model_path)
        if self.ema is not None:
            ema_path = self.output_dir / EMA_FILE
            if acc.is_main_process:
                with self.ema.average_weights(unwrapped):
                    save_weights(unwrapped, ema_path)
        acc.wait_for_everyone()
        return TrainResult(
            step=p.step,
            last_loss=p.last_loss,
            loss_history=history,
            checkpoint=checkpoint,
            model_path=model_path,
            ema_path=ema_path,
            resumed_from=resumed_from,
        )
