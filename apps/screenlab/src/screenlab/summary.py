"""Per-image rows and the figures of a screening run, read back from its stores (so a resumed run counts the
work of every earlier attempt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from collage_prompt import GridSpec, PriceTable, estimate
from collage_prompt.prompt import ClassList
from difflab_core.metrics import roc_auc, roc_curve
from difflab_core.store import ResultStore

from .images import ScreenItem

__all__ = ["summarize", "usage"]


def _records(directory: Path, name: str, key: str = "key") -> list[dict[str, Any]]:
    if not (directory / f"{name}.jsonl").is_file():
        return []
    return ResultStore(directory, name=name, key=key).records()


def usage(directory: Path, n_images: int) -> dict[str, Any]:
    """Requests answered, calls made (retries and failures included), tokens and USD of one `run_batch`
    store folder, as reported by the server (or the simulator)."""
    answered = _records(directory, "results")
    failed = _records(directory, "failures", key="fail_id")
    usd = float(sum(r["cost_usd"] for r in answered))
    return {
        "requests": len(answered),
        "calls": int(sum(r["attempts"] for r in answered)) + len(failed),
        "failed_requests": len(failed),
        "prompt_tokens": int(sum(r["prompt_tokens"] for r in answered)),
        "completion_tokens": int(sum(r["completion_tokens"] for r in answered)),
        "usd": usd,
        "usd_per_1k_images": 1000.0 * usd / n_images if n_images else None,
    }


def _accuracy(rows: list[dict], field: str) -> float | None:
    scored = [r for r in rows if r["truth"] is not None]
    return float(np.mean([r[field] for r in scored])) if scored else None


def _estimates(items: list[ScreenItem], categories: ClassList, model: str, cfg, prices: PriceTable):
    """USD by collage-prompt's cost model: the collages, and every image sent alone at its own side."""
    if model not in prices.prices:
        return None, None
    n = len(items)
    collage = estimate(
        GridSpec(cfg.grid, cfg.grid), categories, model, cfg.detail, n, template=cfg.template, prices=prices
    ).total_usd
    per_side: dict[int, float] = {}
    alone = 0.0
    for it in items:
        side = min(it.size)
        if side not in per_side:
            spec = GridSpec(1, 1, cell=side, gap=0)
            per_side[side] = estimate(
                spec, categories, model, cfg.detail, 1, template=cfg.template, prices=prices
            ).total_usd
        alone += per_side[side]
    return collage, alone


def _forgery(rows: list[dict], detector) -> tuple[dict[str, Any], tuple[list[float], list[float]] | None]:
    scored = [r for r in rows if r.get("forgery_score") is not None]
    known = [r for r in scored if r["forged"] is not None]
    out: dict[str, Any] = {
        "n_scored": len(scored),
        "n_flagged": int(sum(r["flagged"] for r in scored)),
        "threshold": detector.threshold,
        "threshold_source": detector.threshold_source,
        "n_known": len(known),
        "auc": None,
        "recall": None,
        "false_positive_rate": None,
    }
    y = np.asarray([r["forged"] for r in known], dtype=int)
    if not known or y.min() == y.max():
        return out, None
    s = np.asarray([r["forgery_score"] for r in known])
    flagged = np.asarray([r["flagged"] for r in known])
    out["auc"] = roc_auc(s, y)
    out["recall"] = float(flagged[y == 1].mean())
    out["false_positive_rate"] = float(flagged[y == 0].mean())
    fpr, tpr, _ = roc_curve(s, y)
    return out, (fpr.tolist(), tpr.tolist())


def summarize(
    items: list[ScreenItem], categories: ClassList, out: Path, client, detector, cfg, prices, status: str
) -> tuple[list[dict], dict[str, Any], tuple[list[float], list[float]] | None]:
    """``(rows, figures, roc)``: one row per image, the run's figures and the ROC of the forgery scores on
    the images whose forgery truth is known (None without both kinds)."""
    labels = {r["key"]: r for r in _records(out, "labels")}
    alone = {r["key"]: r for r in _records(out, "baseline")} if cfg.baseline else {}
    scores = {r["key"]: r for r in _records(out, "forgery")} if detector is not None else {}
    rows = []
    for it in items:
        truth = None if it.truth is None else categories.names[it.truth]
        label = labels[it.id]["label"] if it.id in labels else None
        row: dict[str, Any] = {"id": it.id, "truth": truth, "label": label}
        row["correct"] = None if truth is None else label == truth
        if cfg.baseline:
            row["label_alone"] = alone[it.id]["label"] if it.id in alone else None
            row["correct_alone"] = None if truth is None else row["label_alone"] == truth
        if detector is not None:
            found = scores.get(it.id)
            row["forgery_score"] = None if found is None else found["score"]
            row["flagged"] = None if found is None else found["flagged"]
        row["forged"] = it.forged
        rows.append(row)

    n = len(items)
    parse = {r["request"]: r["parse_status"] for r in labels.values()}
    collage_est, alone_est = _estimates(items, categories, client.model, cfg, prices)
    figures: dict[str, Any] = {
        "n_images": n,
        "n_categories": len(categories),
        "grid": f"{cfg.grid}x{cfg.grid}",
        "model": client.model,
        "priced": client.model in prices.prices,
        "status": status,
        "labels": {
            "n_labelled": sum(r["label"] is not None for r in rows),
            "n_with_truth": sum(r["truth"] is not None for r in rows),
            "accuracy": _accuracy(rows, "correct"),
            "parse_ok_rate": float(np.mean([s == "ok" for s in parse.values()])) if parse else None,
        },
        "collage": {**usage(out / "vlm", n), "usd_estimate": collage_est},
        "one_per_call": {"usd_estimate": alone_est},
        "cost_ratio_estimate": collage_est / alone_est if collage_est is not None and alone_est else None,
    }
    if cfg.baseline:
        measured = usage(out / "baseline", n)
        figures["one_per_call"].update(measured, accuracy=_accuracy(rows, "correct_alone"))
        figures["cost_ratio_measured"] = (
            figures["collage"]["usd"] / measured["usd"] if measured["usd"] > 0 else None
        )
    roc = None
    if detector is not None:
        figures["forgery"], roc = _forgery(rows, detector)
    return rows, figures, roc
