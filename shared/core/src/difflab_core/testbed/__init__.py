"""Small diffusion models whose behaviour is known and measured, trained by the repo's own recipes.

- `load_memorization_testbed()` — text-to-image with planted global and local memorization.
- `digits_ddpm(classes=None)` — an unconditional DDPM on scikit-learn digits (all ten, or the shipped subset).
- `digits_ddpm_memorized()` — a class-conditional digits DDPM with planted duplicated digits, its noisy
  classifier and an independent clean classifier.
- `digits_classifier()` — the proxy for digits metrics (accuracy, Fréchet distance in its features).

Trained weights ship in ``weights/`` with a card each (recipe, data fingerprint, sha256). Retrain with
``python -m difflab_core.testbed train NAME``; measure with ``python -m difflab_core.testbed verify NAME``.
"""

from .digits import RECIPES as DIGITS_RECIPES
from .digits import (
    SHIPPED_SUBSET,
    ClassifierRecipe,
    DigitsDDPM,
    DigitsProxy,
    DigitsRecipe,
    MemorizedDigits,
    digits_classifier,
    digits_ddpm,
    digits_ddpm_memorized,
    digits_noisy_classifier,
    digits_split,
    real_digits,
    train_digits,
    verify_digits,
)
from .memorization import (
    AUDIT_SETTING,
    RECIPE,
    MemorizationRecipe,
    MemorizationTestbed,
    load_memorization_testbed,
    train_memorization_testbed,
)
from .memorization_data import TestbedRecord, build_memorization_data

__all__ = [
    "AUDIT_SETTING",
    "DIGITS_RECIPES",
    "RECIPE",
    "SHIPPED_SUBSET",
    "ClassifierRecipe",
    "DigitsDDPM",
    "DigitsProxy",
    "DigitsRecipe",
    "MemorizationRecipe",
    "MemorizationTestbed",
    "MemorizedDigits",
    "TestbedRecord",
    "build_memorization_data",
    "digits_classifier",
    "digits_ddpm",
    "digits_ddpm_memorized",
    "digits_noisy_classifier",
    "digits_split",
    "load_memorization_testbed",
    "real_digits",
    "train_digits",
    "train_memorization_testbed",
    "verify_digits",
]
