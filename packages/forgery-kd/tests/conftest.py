"""Shared fixtures: a tiny synthetic forgery set and tiny timm configurations (CPU, offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)

TEACHER_BACKBONE = "test_resnet"
STUDENT_BACKBONE = "test_efficientnet"
IMG = 32


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from forgery_kd.synthetic import make_synthetic_forgeries

    return make_synthetic_forgeries(
        tmp_path_factory.mktemp("synthetic"), {"train": 8, "val": 4, "test": 6}, frames=2, size=IMG, seed=3
    )


@pytest.fixture(scope="session")
def data_config(synthetic):
    from forgery_kd.train import DataConfig

    return DataConfig(str(synthetic.json_dir), ("Synthetic",), str(synthetic.root), frame_num=2, img_size=IMG)


@pytest.fixture(scope="session")
def tiny_teacher():
    from forgery_kd.models import DualBranchTeacher

    torch.manual_seed(0)
    return DualBranchTeacher(TEACHER_BACKBONE, TEACHER_BACKBONE, "fad", IMG).eval()
