"""Cost-efficiency metrics (our definitions; the paper's CER and PCE formulas are unknown) and bootstrap CIs."""

from __future__ import annotations

import numpy as np

__all__ = ["arrangement_gain", "cer", "ces", "ces_rel", "pce"]


def ces(acc: float, usd_per_image: float) -> float:
    """Cost-efficiency score Acc / C_img."""
    return acc / usd_per_image


def ces_rel(acc_c: float, acc_s: float, cost_c: float, cost_s: float) -> float:
    """(Acc_c / Acc_s) * (C_s / C_c): collage c against standard s, per-image costs."""
    return (acc_c / acc_s) * (cost_s / cost_c)


def cer(acc_c: float, acc_s: float, cost_c: float, cost_s: float) -> float:
    """Cost saved per unit of relative accuracy lost: (1 - C_c/C_s) / max(0.001, 1 - Acc_c/Acc_s)."""
    return (1 - cost_c / cost_s) / max(0.001, 1 - acc_c / acc_s)


def pce(acc_c: float, cost_c: float, cost_s: float) -> float:
    """Acc_c * C_s / C_c."""
    return acc_c * cost_s / cost_c


def arrangement_gain(
    acc_method, acc_random, n_boot: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean per-set accuracy difference and its bootstrap 95 % CI over sets (paired, seeded)."""
    d = np.asarray(acc_method, dtype=np.float64) - np.asarray(acc_random, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    return float(d.mean()), (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
