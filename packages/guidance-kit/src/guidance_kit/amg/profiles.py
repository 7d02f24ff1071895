"""Per-backend dissimilarity scales c_sim (spec §2.3).

``sscd``: 100, from the official AMG-sd code. ``pixel``: fixed once by the spec's rule on the memorization
testbed's calibration split (the global-memorization prompts, seeds 100–101, 20 DDIM steps, guidance 1.5):
the smallest value in {1, 3, 10, 30, 100, 300, 1000} that halves the memorized fraction
(``calibrate(..., memorized_prompts=..., is_memorized=...)`` reruns the rule). ``ssim`` and ``embedding`` reuse the pixel value
until calibrated on data of their own (see the README).
"""

from __future__ import annotations

SIM_SCALE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)

SIM_SCALES: dict[str, float] = {
    "sscd": 100.0,
    "pixel": 30.0,
    "ssim": 30.0,
    "embedding": 30.0,
}
