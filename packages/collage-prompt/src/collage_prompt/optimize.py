"""Arrangement search: maximise a scorer's predicted collage accuracy over cell permutations.

A scorer is a callable ``scorer(perms (N, K) int) -> (N,) float`` with an optional ``symmetry_invariant``
attribute; when true, exhaustive search scores one arrangement per symmetry orbit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from collage_prompt.errors import CollagePromptError
from collage_prompt.features import cosine_matrix
from collage_prompt.grid import GridSpec, all_permutations, grid_adjacency

__all__ = [
    "Arrangement",
    "ExhaustiveSearch",
    "GeneticSearch",
    "SwapSearch",
    "optimize_arrangement",
    "predictor_scorer",
    "random_best_of_n",
    "similarity_scorer",
]

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass
class Arrangement:
    """The best arrangement found, its score, and the ``top_k`` best ``(perm, score)`` pairs seen."""

    perm: np.ndarray
    score: float
    top_k: list[tuple[np.ndarray, float]]
    n_scored: int = 0


def _top(perms: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[np.ndarray, float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(perms[i].astype(np.int64), float(scores[i])) for i in order]


@dataclass
class ExhaustiveSearch:
    """Score every arrangement (one per symmetry orbit for invariant scorers), in chunks."""

    chunk: int = 32768
    top_k: int = 5

    def search(self, scorer: Scorer, spec: GridSpec) -> Arrangement:
        canonical_only = bool(getattr(scorer, "symmetry_invariant", False))
        perms = all_permutations(spec.k, canonical_only, (spec.rows, spec.cols))
        best: list[tuple[np.ndarray, float]] = []
        for i in range(0, len(perms), self.chunk):
            part = perms[i : i + self.chunk]
            best = sorted(
                best + _top(part, np.asarray(scorer(part), dtype=np.float64), self.top_k), key=lambda t: -t[1]
            )[: self.top_k]
        return Arrangement(best[0][0], best[0][1], best, len(perms))


def _swap_climb(
    cur: np.ndarray, cur_score: float, scorer: Scorer, max_rounds: int
) -> tuple[np.ndarray, float, int]:
    """Best-improvement pairwise swaps until no swap helps; returns (perm, score, arrangements scored)."""
    k = len(cur)
    ii, jj = np.triu_indices(k, 1)
    rows = np.arange(len(ii))
    n = 0
    for _ in range(max_rounds):
        cands = np.repeat(cur[None], len(ii), 0)
        cands[rows, ii], cands[rows, jj] = cur[jj], cur[ii]
        s = np.asarray(scorer(cands), dtype=np.float64)
        n += len(cands)
        if s.max() <= cur_score + 1e-12:
            break
        cur, cur_score = cands[int(np.argmax(s))], float(s.max())
    return cur, cur_score, n


@dataclass
class GeneticSearch:
    """Permutation GA: tournament selection, order crossover (OX1), swap and inversion mutation, elitism."""

    population: int = 64
    generations: int = 200
    patience: int = 30
    tournament: int = 3
    p_crossover: float = 0.9
    p_swap: float = 0.2
    p_inversion: float = 0.1
    elitism: int = 2
    polish: int = 8
    """Finish with best-improvement pairwise swaps from the best ``polish`` distinct individuals (a memetic
    step beyond the spec: OX1 keeps relative order, so it is weak on position-dependent scores); 0 disables."""
    top_k: int = 5

    def _ox1(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = len(a)
        i, j = sorted(rng.choice(k + 1, 2, replace=False))
        child = np.full(k, -1)
        child[i:j] = a[i:j]
        kept = set(a[i:j].tolist())
        rest = [g for g in np.roll(b, -j).tolist() if g not in kept]
        slots = [(j + t) % k for t in range(k - (j - i))]
        child[slots] = rest
        return child

    def search(self, scorer: Scorer, spec: GridSpec, seed: int = 0) -> Arrangement:
        rng = np.random.default_rng(seed)
        k = spec.k
        pop = np.stack([rng.permutation(k) for _ in range(self.population)])
        fit = np.asarray(scorer(pop), dtype=np.float64)
        seen = {tuple(p): f for p, f in zip(pop.tolist(), fit, strict=False)}
        best, stale, n = fit.max(), 0, len(pop)
        for _ in range(self.generations):
            elite = pop[np.argsort(-fit)[: self.elitism]]
            children = []
            while len(children) < self.population - self.elitism:
                parents = []
                for _ in range(2):
                    cand = rng.choice(self.population, self.tournament, replace=False)
                    parents.append(pop[cand[np.argmax(fit[cand])]])
                child = (
                    self._ox1(parents[0], parents[1], rng)
                    if rng.random() < self.p_crossover
                    else parents[0].copy()
                )
                if rng.random() < self.p_swap:
                    i, j = rng.choice(k, 2, replace=False)
                    child[[i, j]] = child[[j, i]]
                if rng.random() < self.p_inversion:
                    i, j = sorted(rng.choice(k + 1, 2, replace=False))
                    child[i:j] = child[i:j][::-1]
                children.append(child)
            pop = np.concatenate([elite, np.stack(children)])
            fit = np.asarray(scorer(pop), dtype=np.float64)
            n += len(pop)
            seen.update(zip(map(tuple, pop.tolist()), fit, strict=False))
            if fit.max() > best + 1e-12:
                best, stale = fit.max(), 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        for cur in sorted(seen, key=seen.get, reverse=True)[: self.polish]:
            perm, score, used = _swap_climb(np.array(cur), seen[cur], scorer, 100)
            seen[tuple(perm.tolist())] = score
            n += used
        perms = np.array(list(seen.keys()))
        top = _top(perms, np.array(list(seen.values())), self.top_k)
        return Arrangement(top[0][0], top[0][1], top, n)


@dataclass
class SwapSearch:
    """Best-improvement pairwise swaps from ``restarts`` random starts."""

    restarts: int = 10
    max_rounds: int = 100
    top_k: int = 5

    def search(self, scorer: Scorer, spec: GridSpec, seed: int = 0) -> Arrangement:
        rng = np.random.default_rng(seed)
        found: dict[tuple, float] = {}
        n = 0
        for _ in range(self.restarts):
            start = rng.permutation(spec.k)
            cur, cur_score, used = _swap_climb(start, float(scorer(start[None])[0]), scorer, self.max_rounds)
            n += used + 1
            found[tuple(cur.tolist())] = cur_score
        top = _top(np.array(list(found)), np.array(list(found.values())), self.top_k)
        return Arrangement(top[0][0], top[0][1], top, n)


def optimize_arrangement(
    feats: np.ndarray, scorer: Scorer, spec: GridSpec, method: str = "auto", seed: int = 0
) -> Arrangement:
    """Best arrangement of the K images (``feats`` (K, D)) under ``scorer``.

    ``method``: ``auto`` (exhaustive for K <= 9, else GA), ``exhaustive``, ``ga`` or ``swap``.
    """
    if len(feats) != spec.k:
        raise CollagePromptError(
            f"optimize_arrangement: {len(feats)} images for a {spec.rows}x{spec.cols} grid"
        )
    if method == "auto":
        method = "exhaustive" if spec.k <= 9 else "ga"
    if method == "exhaustive":
        return ExhaustiveSearch().search(scorer, spec)
    if method == "ga":
        return GeneticSearch().search(scorer, spec, seed)
    if method == "swap":
        return SwapSearch().search(scorer, spec, seed)
    raise CollagePromptError(f"unknown method {method!r}; use 'auto', 'exhaustive', 'ga' or 'swap'")


def similarity_scorer(feats: np.ndarray, spec: GridSpec, mode: str = "group") -> Scorer:
    """Sum of cosine similarities of images in adjacent cells (``group``), or its negative (``separate``)."""
    if mode not in ("group", "separate"):
        raise CollagePromptError(f"similarity_scorer: mode={mode!r}; use 'group' or 'separate'")
    sim = cosine_matrix(feats).astype(np.float64)
    iu = np.argwhere(np.triu(grid_adjacency(spec.rows, spec.cols)) > 0)
    sign = 1.0 if mode == "group" else -1.0

    def scorer(perms: np.ndarray) -> np.ndarray:
        p = np.asarray(perms, dtype=np.int64)
        return sign * sim[p[:, iu[:, 0]], p[:, iu[:, 1]]].sum(1)

    scorer.symmetry_invariant = True
    return scorer


def predictor_scorer(model, feats: np.ndarray) -> Scorer:
    """Scorer from a trained predictor (``collage_prompt.predictor.score``) on one image set."""
    from collage_prompt.predictor import score

    def scorer(perms: np.ndarray) -> np.ndarray:
        return score(model, feats, perms)

    scorer.symmetry_invariant = bool(getattr(model, "symmetry_invariant", False))
    return scorer


def random_best_of_n(scorer: Scorer, spec: GridSpec, n: int = 25, seed: int = 0) -> Arrangement:
    """The best of ``n`` random arrangements (official N: 25 for 2x2, 1,500 for 3x3)."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(spec.k) for _ in range(n)])
    top = _top(perms, np.asarray(scorer(perms), dtype=np.float64), 5)
    return Arrangement(top[0][0], top[0][1], top, n)
