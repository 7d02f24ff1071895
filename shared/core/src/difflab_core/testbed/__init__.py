"""Small diffusion models whose behaviour is known and measured, trained by the repo's own recipes.

- `load_memorization_testbed()` — text-to-image with planted global and local memorization.

Trained weights ship in ``weights/`` with a card each (recipe, data fingerprint, sha256). Retrain with
``python -m difflab_core.testbed train NAME``; measure with ``python -m difflab_core.testbed verify NAME``.
"""

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
    "RECIPE",
    "MemorizationRecipe",
    "MemorizationTestbed",
    "TestbedRecord",
    "build_memorization_data",
    "load_memorization_testbed",
    "train_memorization_testbed",
]
