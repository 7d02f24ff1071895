"""The overfitting monitor [spec §8.4; paper Table 7: FID is best near 300 iterations and worse after].

Every ``monitor_every`` iterations (and at the last one) the EMA model draws a fixed batch (same seed every time)
and the run logs to ``metrics.jsonl``: ``copy_rate`` (share of samples within half the median shot-to-shot
distance of a shot), ``target_prob`` (the domain classifier's mean p_φ(target | x̂, t = 0)) and ``score``.

Best-checkpoint criterion: ``score`` = mean over samples of p_φ(target | x̂_i, 0) · 1[x̂_i is not a copy], the
expected share of samples that look like the target domain *and* are not copies of a shot. The adapters of the
highest score so far go to ``adapter_best/`` (ties keep the earlier iteration).

Monitoring never changes training: it runs under a forked RNG, in eval mode, on the EMA weights that are swapped
back afterwards. On resume, records after the resumed checkpoint are dropped (they are recomputed identically).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .adapters import AdaptedUNet, read_adapter_config, save_adapters
from .evaluate import copy_mask
from .sample import sample

__all__ = ["METRICS_FILE", "MonitorRecord", "OverfittingMonitor", "monitor_score"]

METRICS_FILE = "metrics.jsonl"
BEST_DIR = "adapter_best"
MONITOR_SEED_OFFSET = 104729
"""Added to the run seed for the fixed monitor batch, so it differs from the evaluation samples' seed."""


@dataclass
class MonitorRecord:
    """One monitor measurement (one line of ``metrics.jsonl``)."""

    step: int
    copy_rate: float
    target_prob: float
    score: float
    best_step: int


@torch.no_grad()
def monitor_score(images01: Tensor, shots: Tensor, classifier: nn.Module, bundle, cond: Tensor | None = None):
    """``(copy_rate, target_prob, score)`` of samples ``[N, C, H, W]`` in [0, 1] against ``shots`` in [−1, 1].

    ``score`` = mean_i p_φ(target | x̂_i, t = 0) · 1[x̂_i not a copy]; the classifier sees the samples in model
    space (``bundle.encode``), as in training.
    """
    copies = copy_mask(images01, (shots.float().cpu() + 1) / 2)
    x = bundle.encode(images01.to(bundle.device) * 2 - 1).float()
    t = torch.zeros(len(x), dtype=torch.long, device=x.device)
    c = None if cond is None else cond.expand(len(x), -1, -1)
    logits = classifier(x, t) if c is None else classifier(x, t, encoder_hidden_states=c)
    prob = logits.float().softmax(dim=1)[:, 1].cpu()
    score = (prob * (~copies).float()).mean().item()
    return copies.float().mean().item(), prob.mean().item(), score


class OverfittingMonitor:
    """Measures the EMA model during `train_tan` and keeps ``adapter_best/`` (see the module docstring)."""

    def __init__(self, bundle, shots: Tensor, classifier: nn.Module, cfg, output_dir: Path) -> None:
        self.bundle, self.shots, self.classifier, self.cfg = bundle, shots, classifier, cfg
        self.path = Path(output_dir) / METRICS_FILE
        self.best_dir = Path(output_dir) / BEST_DIR
        self.records: list[MonitorRecord] = []
        self.cond = bundle.prompt_embeds([cfg.prompt]).float() if bundle.conditional else None

    @property
    def best(self) -> MonitorRecord | None:
        return (
            next((r for r in self.records if r.step == self.records[-1].best_step), None)
            if self.records
            else None
        )

    def start(self, resumed_step: int) -> None:
        """Keep the records up to ``resumed_step`` (0: a fresh run) and check ``adapter_best/`` matches them."""
        kept = []
        if resumed_step > 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = MonitorRecord(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue
                if record.step <= resumed_step:
                    kept.append(record)
        self.records = kept
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in kept))
        best = self.best
        saved = read_adapter_config(self.best_dir).get("step") if self.best_dir.is_dir() else None
        if best is None or saved != best.step:  # stale (a killed run got further) or missing: start anew
            shutil.rmtree(self.best_dir, ignore_errors=True)
            self.records = []
            self.path.write_text("")

    def due(self, step: int, *, final: bool = False) -> bool:
        done = {r.step for r in self.records}
        return step > 0 and step not in done and (final or step % self.cfg.monitor_every == 0)

    def measure(self, model: AdaptedUNet, step: int) -> MonitorRecord:
        """Sample the fixed batch from ``model`` (as it is now), log it, and save it if it is the best so far."""
        devices = [self.bundle.device.index or 0] if self.bundle.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(self.bundle.device.type, enabled=False):
            images = sample(
                model,
                self.bundle,
                self.cfg.monitor_samples,
                steps=self.cfg.monitor_steps,
                eta=1.0,
                seed=self.cfg.seed + MONITOR_SEED_OFFSET,
                batch_size=self.cfg.monitor_samples,
                prompt=self.cfg.prompt if self.bundle.conditional else None,
            )
            copy, prob, score = monitor_score(images, self.shots, self.classifier, self.bundle, self.cond)
        best = self.best
        improved = best is None or score > best.score
        record = MonitorRecord(step, copy, prob, score, step if improved else best.best_step)
        if improved:
            save_adapters(self.best_dir, model, extra={"step": step, "ema": True, "monitor": asdict(record)})
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
        return record
