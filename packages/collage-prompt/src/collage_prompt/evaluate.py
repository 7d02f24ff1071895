"""The evaluation protocol: the same image sets labelled by standard prompting and by collages arranged by
each method; accuracy from the parsed answers, cost from the reported usage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collage_prompt.batch import run_batch
from collage_prompt.collect import collage_request, sample_image_sets
from collage_prompt.data import ImageDataset
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec
from collage_prompt.optimize import (
    optimize_arrangement,
    predictor_scorer,
    random_best_of_n,
    similarity_scorer,
)
from collage_prompt.prompt import parse_answer

__all__ = ["METHODS", "MethodResult", "Report", "choose_arrangement", "evaluate_protocol"]

METHODS = ("random", "learned", "random_best_of_n", "similarity_group", "similarity_separate")


@dataclass
class MethodResult:
    """One (grid, method) cell of the protocol. ``set_acc`` holds the accuracy of each image set, in order."""

    grid: str
    method: str
    acc: float
    acc_lenient: float
    parse_success_rate: float
    usd_per_image: float
    tokens_per_image: float
    n_images: int
    set_acc: list[float]
    search: list[dict] = field(default_factory=list)


@dataclass
class Report:
    """``results[(grid, method)]``; the standard prompt is ``("1x1", "standard")``."""

    results: dict[tuple[str, str], MethodResult]
    sets: dict[str, list[list[int]]]

    def __getitem__(self, key: tuple[str, str]) -> MethodResult:
        return self.results[key]


def choose_arrangement(
    method: str, feats: np.ndarray, spec: GridSpec, *, predictor=None, search: str = "auto", seed: int = 0
) -> tuple[np.ndarray, dict]:
    """The arrangement ``method`` picks for one image set; returns ``(perm, info)`` (search method, score, seconds)."""
    start = time.perf_counter()
    if method == "random":
        perm, info = np.random.default_rng(seed).permutation(spec.k), {}
    elif method in ("similarity_group", "similarity_separate"):
        best = optimize_arrangement(
            feats,
            similarity_scorer(feats, spec, method.split("_")[1]),
            spec,
            "exhaustive" if spec.k <= 9 else "ga",
            seed,
        )
        perm, info = best.perm, {"score": best.score}
    elif method in ("learned", "random_best_of_n"):
        if predictor is None:
            raise CollagePromptError(
                f"method {method!r} needs a trained predictor for grid {spec.rows}x{spec.cols}"
            )
        scorer = predictor_scorer(predictor, feats)
        if method == "learned":
            best = optimize_arrangement(feats, scorer, spec, search, seed)
        else:
            best = random_best_of_n(scorer, spec, 25 if spec.k <= 4 else 1500, seed)
        perm, info = (
            best.perm,
            {"score": best.score, "search": search if method == "learned" else "best_of_n"},
        )
    else:
        raise CollagePromptError(f"unknown method {method!r}; use one of {METHODS}")
    info["seconds"] = time.perf_counter() - start
    return np.asarray(perm), info


def _score(
    dataset: ImageDataset, requests, summary, grid: str, method: str, search: list[dict]
) -> MethodResult:
    correct, lenient, ok, usd, tokens, set_acc = [], [], 0, 0.0, 0, []
    for req in requests:
        rec = summary.records.get(req.key)
        truth = req.meta["truth"]
        if rec is None:
            parsed_m, parsed_l = [None] * req.k, [None] * req.k
        else:
            parsed = parse_answer(rec["text"], req.k, dataset.classes)
            parsed_m, parsed_l = parsed.matched, parsed.lenient
            ok += parsed.status == "ok"
            usd += rec["cost_usd"]
            tokens += rec["prompt_tokens"] + rec["completion_tokens"]
        c = [m == t for m, t in zip(parsed_m, truth, strict=False)]
        correct += c
        lenient += [m == t for m, t in zip(parsed_l, truth, strict=False)]
        set_acc.append(float(np.mean(c)))
    n = len(correct)
    return MethodResult(
        grid,
        method,
        float(np.mean(correct)),
        float(np.mean(lenient)),
        ok / max(1, len(requests)),
        usd / n,
        tokens / n,
        n,
        set_acc,
        search,
    )


def evaluate_protocol(
    dataset: ImageDataset,
    specs: list[GridSpec],
    client,
    methods=("random", "learned", "similarity_group"),
    store: str | Path = "evaluation",
    *,
    features: np.ndarray,
    predictors: dict[tuple[int, int], object] | None = None,
    n_sets: int = 40,
    pool=None,
    seed: int = 0,
    template: str = "paper-v1",
    detail: str = "high",
    search: Callable[[GridSpec, int], str] | str = "auto",
    standard: bool = True,
    same_class_rate: float = 0.3,
    max_cost_usd: float | None = None,
) -> Report:
    """Label ``n_sets`` image sets per grid with every method (and each image alone when ``standard``).

    Test sets are drawn from ``pool`` (image indices disjoint from training). Requests go through
    :func:`run_batch` with a resumable store per grid under ``store``; ``max_cost_usd`` caps the new spending
    of the whole evaluation (methods and sets left unanswered when it runs out count as wrong).
    """
    store = Path(store)
    spent = 0.0

    def batch(requests, folder: Path):
        nonlocal spent
        left = None if max_cost_usd is None else max(0.0, max_cost_usd - spent)
        summary = run_batch(requests, client, folder, workers=1, max_cost_usd=left)
        spent += summary.cost_usd
        return summary

    predictors = predictors or {}
    results: dict[tuple[str, str], MethodResult] = {}
    all_sets: dict[str, list[list[int]]] = {}
    for spec in specs:
        grid = f"{spec.rows}x{spec.cols}"
        sets = sample_image_sets(dataset.labels, spec.k, n_sets, same_class_rate, seed + 1000 + spec.k, pool)
        all_sets[grid] = [s.tolist() for s in sets]
        for method in methods:
            requests, infos = [], []
            for i, idx in enumerate(sets):
                how = search(spec, i) if callable(search) else search
                perm, info = choose_arrangement(
                    method,
                    features[idx],
                    spec,
                    predictor=predictors.get((spec.rows, spec.cols)),
                    search=how,
                    seed=seed + i,
                )
                requests.append(collage_request(dataset, idx, perm, spec, template, detail))
                infos.append(info)
            summary = batch(requests, store / grid)
            results[(grid, method)] = _score(dataset, requests, summary, grid, method, infos)
    if standard:
        images = sorted({i for sets in all_sets.values() for s in sets for i in s})
        requests = []
        for i in images:
            side = min(dataset.images[i].size)
            requests.append(
                collage_request(dataset, [i], [0], GridSpec(1, 1, cell=side, gap=0), template, detail)
            )
        summary = batch(requests, store / "1x1")
        results[("1x1", "standard")] = _score(dataset, requests, summary, "1x1", "standard", [])
    return Report(results, all_sets)
