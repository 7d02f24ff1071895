"""Which sampling steps run guidance, and with what weight: `StepSchedule` and its constructors.

Steps are in sampling order, j = 0…n−1 (j = 0 noisiest); the official Compress Guidance code indexes
τ = n−1−j. `compress_schedule` is the guided set of Compress Guidance (arXiv 2408.11194, official code
``compt_guidance``): with m = ⌊n/skip⌋ and c = n/m^k, G = {⌊c·i^k⌋ : i = 0…m−1} ∪ {n−2, n−1}.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import GuidanceKitError

__all__ = [
    "WEIGHT_MODES",
    "StepSchedule",
    "check_compress_args",
    "compress_schedule",
    "early_stop_schedule",
    "full_schedule",
    "interval_matched",
    "interval_schedule",
    "random_schedule",
    "step_sigmas",
    "uniform_schedule",
]

WEIGHT_MODES = ("compress", "multiplicity", "none", "reuse")


@dataclass(frozen=True)
class StepSchedule:
    """Guided steps and their weights for an n-step run.

    ``guided`` [n] bools; ``weights`` [n] floats (0 on unguided steps); ``name`` and ``params`` say how it was
    made. ``params["reuse"]`` is True for the "reuse" rule (re-apply the last guidance on unguided steps).
    """

    n: int
    guided: tuple[bool, ...]
    weights: tuple[float, ...]
    name: str
    params: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if len(self.guided) != self.n or len(self.weights) != self.n:
            raise GuidanceKitError(
                f"StepSchedule: guided ({len(self.guided)}) and weights ({len(self.weights)}) must have n={self.n}"
            )

    def _check(self, j: int) -> int:
        if not 0 <= j < self.n:
            raise GuidanceKitError(f"step j={j} is outside this {self.n}-step schedule")
        return j

    def is_guided(self, j: int) -> bool:
        return self.guided[self._check(j)]

    def weight(self, j: int) -> float:
        """w(j) for a guided step, 0 otherwise."""
        return self.weights[self._check(j)]

    @property
    def num_guided(self) -> int:
        return sum(self.guided)

    @property
    def guided_steps(self) -> list[int]:
        return [j for j, g in enumerate(self.guided) if g]

    @property
    def reuse(self) -> bool:
        return bool(self.params.get("reuse", False))

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "n": self.n,
                "params": self.params,
                "guided_steps": self.guided_steps,
                "weights": [self.weights[j] for j in self.guided_steps],
            }
        )


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise GuidanceKitError(f"n must be an integer ≥ 1, got {n!r}")


def _from_steps(
    n: int, steps: Sequence[int], weights: dict[int, float], name: str, params: dict
) -> StepSchedule:
    chosen = set(steps)
    return StepSchedule(
        n=n,
        guided=tuple(j in chosen for j in range(n)),
        weights=tuple(float(weights.get(j, 1.0)) if j in chosen else 0.0 for j in range(n)),
        name=name,
        params=params,
    )


def _gap_weights(n: int, steps: Sequence[int]) -> dict[int, float]:
    """w(j) = j_next − j, the gap to the next guided step (1 for the last); Σw = n when 0 is guided."""
    ordered = sorted(set(steps))
    return {j: float((ordered[i + 1] if i + 1 < len(ordered) else n) - j) for i, j in enumerate(ordered)}


def full_schedule(n: int) -> StepSchedule:
    """Every step guided, w ≡ 1."""
    _check_n(n)
    return _from_steps(n, range(n), {}, "full", {})


def compress_schedule(
    n: int,
    skip: int = 5,
    k: float = 2.0,
    *,
    weight_mode: str = "compress",
    arithmetic: str = "official",
    max_weight: float | None = None,
) -> StepSchedule:
    """Compress Guidance's guided set and weights (spec §2.4).

    ``arithmetic="official"`` reproduces the code's float64 ``int(c * i**k)``; ``"exact"`` uses
    ⌊n·i^k/m^k⌋ in integers (integer k only). ``skip=1`` is full guidance. ``weight_mode``: "compress" (gap to
    the next guided step), "multiplicity" (#i landing on j; forced steps 1), "none" (1), "reuse" (1, and the
    last guidance is re-applied on unguided steps). ``max_weight`` clamps w.
    """
    _check_n(n)
    check_compress_args(skip, k, weight_mode=weight_mode, arithmetic=arithmetic, max_weight=max_weight)
    if skip > n:
        raise GuidanceKitError(f"skip must be an integer in 1..n={n}, got {skip!r}")
    params = {
        "skip": skip,
        "k": k,
        "weight_mode": weight_mode,
        "arithmetic": arithmetic,
        "max_weight": max_weight,
        "reuse": weight_mode == "reuse",
    }
    if n == 1 or skip == 1:
        schedule = full_schedule(n)
        return StepSchedule(n, schedule.guided, schedule.weights, "compress", params)
    m = n // skip
    if arithmetic == "official":
        c = n / m**k
        hits = [int(c * i**k) for i in range(m)]
    else:
        if float(k) != int(k):
            raise GuidanceKitError(f"arithmetic='exact' needs an integer k, got k={k!r}")
        ki = int(k)
        hits = [(n * i**ki) // m**ki for i in range(m)]
    steps = sorted(set(hits) | {n - 2, n - 1})
    if weight_mode == "compress":
        weights = _gap_weights(n, steps)
    elif weight_mode == "multiplicity":
        weights = {j: float(hits.count(j)) for j in steps}
        weights[n - 2] = weights[n - 1] = 1.0
    else:
        weights = {j: 1.0 for j in steps}
    if max_weight is not None:
        weights = {j: min(w, float(max_weight)) for j, w in weights.items()}
    return _from_steps(n, steps, weights, "compress", params)


def check_compress_args(
    skip: int,
    k: float,
    *,
    weight_mode: str = "compress",
    arithmetic: str = "official",
    max_weight: float | None = None,
) -> None:
    """Validate Compress Guidance arguments before n is known (skip ≥ 1, k > 0, known modes)."""
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 1:
        raise GuidanceKitError(f"skip must be an integer ≥ 1, got {skip!r}")
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not k > 0 or not math.isfinite(k):
        raise GuidanceKitError(f"k must be a number > 0, got {k!r}")
    if weight_mode not in WEIGHT_MODES:
        raise GuidanceKitError(f"weight_mode={weight_mode!r}: use one of {WEIGHT_MODES}")
    if arithmetic not in ("official", "exact"):
        raise GuidanceKitError(f"arithmetic={arithmetic!r}: use 'official' or 'exact'")
    if max_weight is not None and not max_weight > 0:
        raise GuidanceKitError(f"max_weight must be > 0 or None, got {max_weight!r}")


def uniform_schedule(n: int, skip: int, *, weight_mode: str = "none") -> StepSchedule:
    """The official uniform-guidance rule: guided iff (τ+1) mod skip = 0 or τ ≤ 1, τ = n−1−j."""
    _check_n(n)
    if not isinstance(skip, int) or not 1 <= skip <= n:
        raise GuidanceKitError(f"skip must be an integer in 1..n={n}, got {skip!r}")
    steps = [j for j in range(n) if (n - j) % skip == 0 or n - 1 - j <= 1]
    return _weighted(n, steps, weight_mode, "uniform", {"skip": skip})


def early_stop_schedule(n: int, fraction: float = 0.2, *, weight_mode: str = "none") -> StepSchedule:
    """The first ⌈fraction·n⌉ steps (official: τ ≥ 200 of 250)."""
    _check_n(n)
    if not 0 < fraction <= 1:
        raise GuidanceKitError(f"fraction must be in (0, 1], got {fraction!r}")
    steps = list(range(max(1, math.ceil(fraction * n - 1e-9))))
    return _weighted(n, steps, weight_mode, "early_stop", {"fraction": fraction})


def random_schedule(n: int, count: int, seed: int = 0, *, weight_mode: str = "none") -> StepSchedule:
    """A seeded random subset of ``count`` steps that always includes step 0."""
    _check_n(n)
    if not isinstance(count, int) or not 1 <= count <= n:
        raise GuidanceKitError(f"count must be an integer in 1..n={n}, got {count!r}")
    rest = random.Random(seed).sample(range(1, n), count - 1)
    return _weighted(n, [0, *rest], weight_mode, "random", {"count": count, "seed": seed})


def _weighted(n: int, steps: Sequence[int], weight_mode: str, name: str, params: dict) -> StepSchedule:
    if weight_mode not in ("none", "compress"):
        raise GuidanceKitError(f"weight_mode={weight_mode!r}: use 'none' or 'compress' for {name} schedules")
    weights = _gap_weights(n, steps) if weight_mode == "compress" else {}
    return _from_steps(n, steps, weights, name, params | {"weight_mode": weight_mode})


def _sigmas(sigmas) -> list[float]:
    values = [float(s) for s in torch.as_tensor(sigmas).reshape(-1).tolist()]
    if not values or any(not math.isfinite(s) or s < 0 for s in values):
        raise GuidanceKitError("sigmas must be a non-empty sequence of finite noise levels ≥ 0")
    return values


def interval_schedule(sigmas, sigma_lo: float = 0.28, sigma_hi: float = 5.42) -> StepSchedule:
    """Guidance interval (Kynkäänniemi et al.): guided iff σ_j ∈ [σ_lo, σ_hi]; ``sigmas`` [n] per step."""
    values = _sigmas(sigmas)
    if not 0 <= sigma_lo <= sigma_hi:
        raise GuidanceKitError(f"need 0 ≤ sigma_lo ≤ sigma_hi, got sigma_lo={sigma_lo}, sigma_hi={sigma_hi}")
    steps = [j for j, s in enumerate(values) if sigma_lo <= s <= sigma_hi]
    return _from_steps(len(values), steps, {}, "interval", {"sigma_lo": sigma_lo, "sigma_hi": sigma_hi})


def interval_matched(sigmas, count: int) -> StepSchedule:
    """``count`` consecutive steps centred on σ ≈ 1 (compute-matched guidance interval)."""
    values = _sigmas(sigmas)
    n = len(values)
    if not isinstance(count, int) or not 1 <= count <= n:
        raise GuidanceKitError(f"count must be an integer in 1..{n}, got {count!r}")
    centre = min(range(n), key=lambda j: abs(math.log(max(values[j], 1e-12))))
    start = min(max(0, centre - count // 2), n - count)
    return _from_steps(n, range(start, start + count), {}, "interval_matched", {"count": count})


def step_sigmas(scheduler, n: int) -> list[float]:
    """σ_j of an n-step run of ``scheduler`` (a fresh copy is set up): ``scheduler.sigmas`` when the scheduler
    has them, else √((1−ᾱ_t)/ᾱ_t) at its timesteps."""
    _check_n(n)
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(n)
    sigmas = getattr(fresh, "sigmas", None)
    if sigmas is not None:
        return [float(s) for s in torch.as_tensor(sigmas)[: len(fresh.timesteps)]]
    return sigmas_at(fresh, fresh.timesteps)


def sigmas_at(scheduler, timesteps) -> list[float]:
    """√((1−ᾱ_t)/ᾱ_t) at ``timesteps`` from ``scheduler.alphas_cumprod``."""
    acp = scheduler.alphas_cumprod.double()
    return [float(((1 - acp[int(t)]) / acp[int(t)]).sqrt()) for t in timesteps]
