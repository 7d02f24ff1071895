"""Shared fixtures: synthetic CholecT50-format datasets written once per session, one torch thread."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TRAIN = ("VID79", "VID02", "VID51", "VID80")
TEST = ("VID32", "VID05")


@pytest.fixture(scope="session")
def space():
    from difftriplet.labels import TripletSpace

    return TripletSpace.from_ivtmetrics()


@pytest.fixture(scope="session")
def t50(tmp_path_factory):
    """6 videos (folds 1–2) of 60–120 frames with PNG frames, JSON labels and F = 32 features."""
    from difftriplet.synthetic import make_cholect50_dataset

    return make_cholect50_dataset(tmp_path_factory.mktemp("CholecT50"), videos=TRAIN + TEST, seed=0)


@pytest.fixture(scope="session")
def split():
    from difftriplet.splits import Split

    return Split(TRAIN[:3], TRAIN[3:], TEST)


@pytest.fixture(scope="session")
def tiny_cfg():
    from difftriplet.config import preset

    return preset("tiny")
