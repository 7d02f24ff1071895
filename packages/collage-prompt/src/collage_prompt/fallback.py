"""Hybrid fallback (spec §8.4): after the collage answers, re-query doubtful cells one image per call.

A cell falls back when its answer is missing (``missing``), names no class of the list (``out_of_list``), or,
when per-cell scores are given (e.g. a predictor's P(correct) in cell order), when p_c < tau
(``low_confidence``). The single-image requests go through :func:`~collage_prompt.batch.run_batch` into the
same store, so they resume, retry and count against the budget like the collages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collage_prompt.batch import BatchSummary, run_batch
from collage_prompt.client import VLMClient, VLMRequest
from collage_prompt.collect import collage_request
from collage_prompt.data import ImageDataset
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec
from collage_prompt.prompt import ParseResult, parse_answer

__all__ = [
    "CellAnswer",
    "HybridRun",
    "collage_answers",
    "fallback_reasons",
    "predicted_cell_accuracy",
    "run_with_fallback",
]

DEFAULT_TAU = 0.5
"""[reconstruction] the spec names the threshold tau without a value; 0.5 re-queries cells more likely wrong than right."""


@dataclass
class CellAnswer:
    """The final answer for one cell: ``matched`` class index (None if none), from the ``collage`` or its
    ``fallback`` query (``reason`` says why it fell back); ``source`` is None when the collage went unanswered."""

    request_key: str
    cell: int
    image_index: int
    label: str | None
    matched: int | None
    source: str | None
    reason: str | None = None


@dataclass
class HybridRun:
    """Collage and fallback batches; ``cells[r][c]`` answers cell c of request r; costs and calls are totals."""

    collage: BatchSummary
    fallback: BatchSummary | None
    cells: list[list[CellAnswer]] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return self.collage.cost_usd + (self.fallback.cost_usd if self.fallback else 0.0)

    @property
    def n_calls(self) -> int:
        return self.collage.n_calls + (self.fallback.n_calls if self.fallback else 0)

    @property
    def fallback_cells(self) -> list[CellAnswer]:
        return [a for row in self.cells for a in row if a.source == "fallback"]


def fallback_reasons(
    parsed: ParseResult, cell_scores: Sequence[float] | None = None, tau: float = DEFAULT_TAU
) -> list[str | None]:
    """Per cell: ``"missing"``, ``"out_of_list"``, ``"low_confidence"`` (score < tau) or None (keep)."""
    reasons: list[str | None] = []
    for c, (label, matched) in enumerate(zip(parsed.labels, parsed.matched, strict=True)):
        if label is None:
            reasons.append("missing")
        elif matched is None:
            reasons.append("out_of_list")
        elif cell_scores is not None and cell_scores[c] < tau:
            reasons.append("low_confidence")
        else:
            reasons.append(None)
    return reasons


def predicted_cell_accuracy(model, feats: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Per-cell P(correct) (N, K) from a predictor with per-cell logits (:class:`CollageGCN`) for arrangements
    ``perms`` (N, K) of one image set ``feats`` (K, D): the ``cell_scores`` of :func:`run_with_fallback`."""
    import torch

    if not hasattr(model, "cell_logits"):
        raise CollagePromptError(
            f"{type(model).__name__} predicts only a collage's accuracy; per-cell scores need a CollageGCN"
        )
    model.eval()
    with torch.no_grad():
        logits = model.cell_logits(
            torch.as_tensor(np.asarray(feats, dtype=np.float32)).unsqueeze(0),
            torch.as_tensor(np.asarray(perms, dtype=np.int64)),
        )
    return torch.sigmoid(logits).numpy()


def _cell_images(requests: Sequence[VLMRequest], dataset: ImageDataset) -> list[list[int]]:
    """Dataset positions of each request's cell images, from ``meta["image_ids"]``."""
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    cells = []
    for req in requests:
        ids = req.meta.get("image_ids")
        if ids is None or len(ids) != req.k or any(i not in position for i in ids):
            raise CollagePromptError(
                f"request {req.key[:12]} has no meta['image_ids'] of this dataset (build requests with "
                "collage_request)"
            )
        cells.append([position[i] for i in ids])
    return cells


def collage_answers(
    requests: Sequence[VLMRequest], records: dict[str, dict], dataset: ImageDataset
) -> list[list[CellAnswer]]:
    """Per request and cell, the parsed collage answer (``source="collage"``), or an empty answer
    (``source=None``) for a request with no record in ``records`` (``BatchSummary.records``)."""
    rows = []
    for req, images in zip(requests, _cell_images(requests, dataset), strict=True):
        rec = records.get(req.key)
        if rec is None:
            rows.append([CellAnswer(req.key, c, images[c], None, None, None) for c in range(req.k)])
            continue
        parsed = parse_answer(rec["text"], req.k, dataset.classes)
        rows.append(
            [
                CellAnswer(req.key, c, images[c], parsed.labels[c], parsed.matched[c], "collage")
                for c in range(req.k)
            ]
        )
    return rows


def run_with_fallback(
    requests: Sequence[VLMRequest],
    client: VLMClient,
    store: str | Path,
    dataset: ImageDataset,
    *,
    cell_scores: Sequence[Sequence[float]] | None = None,
    tau: float = DEFAULT_TAU,
    single_spec: GridSpec | None = None,
    max_cost_usd: float | None = None,
    **batch_kwargs,
) -> HybridRun:
    """Run the collage ``requests`` (from :func:`~collage_prompt.collect.collage_request` on ``dataset``), then
    re-query each doubtful cell's image alone (rendered with ``single_spec``, default a 1x1 512-px grid, same
    template and detail). ``cell_scores[r]`` (K,) are per-cell P(correct) in cell order for request r.
    ``batch_kwargs`` go to both :func:`~collage_prompt.batch.run_batch` calls.

    Fallback records carry ``meta["fallback_of"]`` (the collage's request key), ``meta["cell"]`` and
    ``meta["reason"]``. ``max_cost_usd`` caps collage plus fallback cost. No fallback is sent when the
    collage run was aborted or interrupted, nor for collages left unanswered (failed, or over budget); a
    cell whose fallback went unanswered keeps its collage answer with ``reason`` set.
    """
    if not 0.0 <= tau <= 1.0:
        raise CollagePromptError(f"run_with_fallback: tau={tau} must be in [0, 1]")
    if cell_scores is not None:
        if len(cell_scores) != len(requests):
            raise CollagePromptError(
                f"run_with_fallback: {len(cell_scores)} cell_scores rows for {len(requests)} requests"
            )
        cell_scores = [np.asarray(row, dtype=float) for row in cell_scores]
        for r, (row, req) in enumerate(zip(cell_scores, requests, strict=True)):
            if row.shape != (req.k,):
                raise CollagePromptError(
                    f"run_with_fallback: cell_scores[{r}] has shape {row.shape}, not ({req.k},)"
                )
    _cell_images(requests, dataset)
    single_spec = single_spec or GridSpec(1, 1)
    collage = run_batch(requests, client, store, max_cost_usd=max_cost_usd, **batch_kwargs)
    run = HybridRun(collage, None, collage_answers(requests, collage.records, dataset))
    todo: list[tuple[CellAnswer, str, VLMRequest]] = []
    for r, req in enumerate(requests):
        rec = collage.records.get(req.key)
        if rec is None:
            continue
        parsed = parse_answer(rec["text"], req.k, dataset.classes)
        scores = None if cell_scores is None else cell_scores[r]
        for answer, reason in zip(run.cells[r], fallback_reasons(parsed, scores, tau), strict=True):
            if reason is None:
                continue
            single = collage_request(
                dataset,
                [answer.image_index],
                [0],
                single_spec,
                req.meta.get("template", "paper-v1"),
                req.detail,
            )
            if single.key == req.key:  # a 1x1 "collage" already is this single-image request
                continue
            single.meta.update(fallback_of=req.key, cell=answer.cell, reason=reason)
            todo.append((answer, reason, single))
    if not todo or collage.status in ("aborted", "interrupted"):
        return run
    left = None if max_cost_usd is None else max(0.0, max_cost_usd - collage.cost_usd)
    run.fallback = run_batch([t[2] for t in todo], client, store, max_cost_usd=left, **batch_kwargs)
    for answer, reason, single in todo:
        answer.reason = reason
        rec = run.fallback.records.get(single.key)
        if rec is not None:
            parsed = parse_answer(rec["text"], 1, dataset.classes)
            answer.label, answer.matched, answer.source = parsed.labels[0], parsed.matched[0], "fallback"
    return run
