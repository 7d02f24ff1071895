"""Shared fixtures: a synthetic MS-TCN dataset written once per session, and the tiny config."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """6 train + 2 test videos of 60–120 frames, 4 actions + background, F = 16."""
    from diffact.synthetic import make_mstcn_dataset

    root = tmp_path_factory.mktemp("mstcn")
    make_mstcn_dataset(root, num_videos=8, num_classes=4, feature_dim=16, seed=0, num_test=2)
    return root


@pytest.fixture(scope="session")
def tiny_cfg():
    from diffact.config import preset

    return preset("tiny")
