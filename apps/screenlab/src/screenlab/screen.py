"""A resumable screening job: labels by collage prompting, optionally the same images one per call, and
face-forgery scores from an exported detector. Every stage writes its rows as it goes; a rerun skips them.

Run folder ``OUT``:

- ``config.json`` — the settings that change results (a rerun with others is refused, see ``new_run``);
- ``vlm/results.jsonl``, ``vlm/failures.jsonl`` — collage-prompt's answers per collage (``run_batch``);
- ``labels.jsonl`` — one row per image: the parsed label, its collage and cell;
- ``baseline/`` and ``baseline.jsonl`` — the same for one image per call (``baseline=True``);
- ``forgery.jsonl`` — one row per image: P(fake) and the flag at the detector's threshold;
- ``collages/`` — the first few collages as sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collage_prompt import GridSpec, PriceTable, parse_answer, run_batch
from collage_prompt.collect import collage_request
from collage_prompt.data import ImageDataset
from collage_prompt.prompt import ClassList
from difflab_core.store import ResultStore, write_run_config

from .errors import ScreenlabError
from .images import ScreenItem, load_image

__all__ = ["ScreenConfig", "ScreenResult", "screen"]

EXAMPLE_COLLAGES = 4


@dataclass
class ScreenConfig:
    """Screening settings: a ``grid`` x ``grid`` collage per request (the last one holds the remainder)."""

    grid: int = 3
    detail: str = "high"
    template: str = "paper-v1"
    baseline: bool = False
    """Also label every image alone, one image per call, to measure what collages save (costs money)."""
    max_cost_usd: float | None = None
    """Stop sending requests before the stored spend would pass this (collages and baseline together)."""
    workers: int = 4
    retry_failed: bool = False
    collages_per_batch: int = 16
    """Collages sent per `run_batch` call; the rows of each batch are on disk before the next starts."""
    detector_batch: int = 32
    new_run: bool = False
    """Move an earlier run with other settings aside (to ``previous-<time>/``) instead of refusing it."""

    def __post_init__(self) -> None:
        if not 1 <= self.grid <= 6:
            raise ScreenlabError(f"--grid {self.grid}: use 1 (one image per call) to 6")
        if self.max_cost_usd is not None and self.max_cost_usd <= 0:
            raise ScreenlabError(f"--max-cost-usd {self.max_cost_usd}: must be > 0")
        if self.workers < 1:
            raise ScreenlabError(f"--workers {self.workers}: must be >= 1")


@dataclass
class ScreenResult:
    """What `screen` found: per-image ``rows``, the ``figures`` of ``report.json`` and the job's ``status``
    (complete, budget_reached, aborted or interrupted; ``error`` says why it stopped)."""

    rows: list[dict[str, Any]]
    figures: dict[str, Any]
    status: str
    error: str | None = None
    collages: list[Path] = field(default_factory=list)
    roc: tuple[list[float], list[float]] | None = None


def _host(client) -> str:
    return getattr(client, "host", type(client).__name__)


def _spent(out: Path) -> float:
    return sum(
        r.get("cost_usd", 0.0)
        for name in ("vlm", "baseline")
        if (out / name / "results.jsonl").is_file()
        for r in ResultStore(out / name).records()
    )


def _set_request(items: Sequence[ScreenItem], categories: ClassList, spec: GridSpec, cfg: ScreenConfig):
    """collage-prompt's request for ``items`` in cell order; the true categories travel in its local metadata
    (the simulated VLM uses them for neighbour leakage) only when every cell's is known."""
    truth = [-1 if it.truth is None else it.truth for it in items]
    data = ImageDataset(
        [load_image(it.path) for it in items], np.asarray(truth), categories, [it.id for it in items]
    )
    req = collage_request(data, range(len(items)), range(len(items)), spec, cfg.template, cfg.detail)
    if min(truth) < 0:
        req.meta.pop("truth")
    return req


def _label_stage(
    name: str,
    sets: list[list[ScreenItem]],
    spec_of: Callable[[list[ScreenItem]], GridSpec],
    out: Path,
    client,
    categories: ClassList,
    cfg: ScreenConfig,
    prices: PriceTable,
    tick: Callable[[int], None],
    save_collages: bool,
) -> tuple[str, str | None]:
    """Send every set not yet labelled in ``out/{name}.jsonl``; returns run_batch's last status and error."""
    rows = ResultStore(out, name=name)
    todo = [(i, s) for i, s in enumerate(sets) if not all(rows.done(it.id) for it in s)]
    tick(len(sets) - len(todo))
    status, error = "complete", None
    for start in range(0, len(todo), cfg.collages_per_batch):
        chunk = [s for _, s in todo[start : start + cfg.collages_per_batch]]
        requests = [_set_request(s, categories, spec_of(s), cfg) for s in chunk]
        if save_collages:
            for (index, _), req in zip(todo[start : start + len(chunk)], requests, strict=True):
                path = out / "collages" / f"{index:04d}.png"
                if index < EXAMPLE_COLLAGES and not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(req.image_png)
        budget = None if cfg.max_cost_usd is None else cfg.max_cost_usd - _spent(out)
        if budget is not None and budget <= 0:
            return "budget_reached", f"the budget of ${cfg.max_cost_usd} is spent"
        summary = run_batch(
            requests,
            client,
            out / ("vlm" if name == "labels" else name),
            workers=cfg.workers,
            max_cost_usd=budget,
            retry_failed=cfg.retry_failed,
            prices=prices,
        )
        for s, req in zip(chunk, requests, strict=True):
            record = summary.records.get(req.key)
            if record is None:  # failed (recorded in failures.jsonl) or never sent
                continue
            parsed = parse_answer(record["text"], len(s), categories)
            for cell, (item, match) in enumerate(zip(s, parsed.matched, strict=True)):
                if rows.done(item.id):
                    continue
                rows.append(
                    {
                        "key": item.id,
                        "label": None if match is None else categories.names[match],
                        "parse_status": parsed.status,
                        "request": record["key"],
                        "cell": cell,
                    }
                )
        tick(len(chunk))
        status, error = summary.status, summary.error
        if status != "complete":
            break
    return status, error


def _forgery_stage(items: list[ScreenItem], out: Path, detector, cfg: ScreenConfig, tick) -> None:
    rows = ResultStore(out, name="forgery")
    todo = [it for it in items if not rows.done(it.id)]
    tick(len(items) - len(todo))
    for start in range(0, len(todo), cfg.detector_batch):
        chunk = todo[start : start + cfg.detector_batch]
        scores = detector.predict_images([load_image(it.path) for it in chunk])
        for item, score in zip(chunk, scores, strict=True):
            rows.append({"key": item.id, "score": float(score), "flagged": bool(score >= detector.threshold)})
        tick(len(chunk))


def _load_detector(directory: str | Path | None, device: str):
    """forgery-kd's `ForgeryDetector` from an exported folder, and the sha256 of its weights (None, None)."""
    if directory is None:
        return None, None
    from forgery_kd import ForgeryDetector

    if not Path(directory).is_dir():
        raise ScreenlabError(
            f"--detector {directory}: not a folder; give the detector folder forgery-kd exported "
            "(config.json + model.safetensors, e.g. runs/student/student)"
        )
    detector = ForgeryDetector.load(directory, device=device)
    return detector, detector.weights_sha256


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _ticker(progress, description: str, total: int) -> Callable[[int], None]:
    if progress is None:
        return lambda n: None
    task = progress.add_task(description, total=total)
    return lambda n: progress.advance(task, n)


def screen(
    items: list[ScreenItem],
    categories: ClassList,
    out: str | Path,
    client,
    *,
    detector_dir: str | Path | None = None,
    device: str = "auto",
    config: ScreenConfig | None = None,
    prices: PriceTable | None = None,
    progress: bool = True,
) -> ScreenResult:
    """Label ``items`` with ``client`` by collages (and alone with ``config.baseline``), score them with the
    forgery-kd detector exported to ``detector_dir`` (None: no forgery scores), and summarise; a rerun on the
    same ``out`` resumes. The detector is loaded before anything is sent, so a bad one costs nothing."""
    cfg = config or ScreenConfig()
    if not items:
        raise ScreenlabError("nothing to screen: no images")
    out = Path(out)
    prices = prices or PriceTable.load()
    detector, detector_sha = _load_detector(detector_dir, device)
    write_run_config(
        out,
        {
            "grid": cfg.grid,
            "detail": cfg.detail,
            "template": cfg.template,
            "categories": categories.synonyms,
            "model": client.model,
            "host": _host(client),
            "detector_sha256": detector_sha,
        },
        new_run=cfg.new_run,
    )
    k = cfg.grid * cfg.grid
    sets = [items[i : i + k] for i in range(0, len(items), k)]

    def collage_spec(s: list[ScreenItem]) -> GridSpec:
        return GridSpec(cfg.grid, cfg.grid) if len(s) == k else GridSpec(1, len(s))

    def alone_spec(s: list[ScreenItem]) -> GridSpec:  # as collage-prompt's evaluation sends one image
        return GridSpec(1, 1, cell=min(s[0].size), gap=0)

    with _progress(progress) as bars:
        status, error = _label_stage(
            "labels",
            sets,
            collage_spec,
            out,
            client,
            categories,
            cfg,
            prices,
            _ticker(bars, f"labelling {len(items)} images in {len(sets)} collages", len(sets)),
            save_collages=True,
        )
        if cfg.baseline and status == "complete":
            status, error = _label_stage(
                "baseline",
                [[it] for it in items],
                alone_spec,
                out,
                client,
                categories,
                cfg,
                prices,
                _ticker(bars, "labelling each image alone (baseline)", len(items)),
                save_collages=False,
            )
        if detector is not None and status in ("complete", "budget_reached"):
            _forgery_stage(items, out, detector, cfg, _ticker(bars, "scoring forgeries", len(items)))

    from .summary import summarize

    rows, figures, roc = summarize(items, categories, out, client, detector, cfg, prices, status)
    collages = sorted((out / "collages").glob("*.png"))
    return ScreenResult(rows, figures, status, error, collages, roc)
