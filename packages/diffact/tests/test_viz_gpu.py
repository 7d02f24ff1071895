"""Segment plots, memory-mapped features, ignored labels in the losses, and the CUDA path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffact.data import IGNORE_INDEX, MSTCNDataset
from diffact.errors import DiffActError
from diffact.losses import training_losses
from diffact.model import DiffActModel
from diffact.viz import class_colors, render_segments


def test_render_segments_any_number_of_classes() -> None:
    names = [f"c{i}" for i in range(48)]
    rows = [("gt", ["c0"] * 30 + ["c47"] * 70), ("pred", ["c0"] * 50 + ["c5"] * 50)]
    image = render_segments(rows, names, fps=15)
    assert image.size[0] == 900
    colors = class_colors(48)
    assert len(set(colors)) == 48
    assert image.getpixel((115, 20)) == colors[0]  # the first bar starts with c0's colour
    assert image.getpixel((885, 20)) == colors[47]
    with pytest.raises(DiffActError, match="'zz'"):
        render_segments([("gt", ["zz"])], names)


def test_memory_mapped_features(data_root, tiny_cfg) -> None:
    cfg = tiny_cfg.with_updates(data={"mmap_threshold_gb": 0.0})
    ds = MSTCNDataset(data_root, "synthetic", 1, "train", cfg)
    assert isinstance(ds.videos[0].features, np.memmap)
    eager = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)
    assert torch.equal(ds[(0, 1)]["features"], eager[(0, 1)]["features"])


def test_ignored_frames_leave_the_losses(data_root, tiny_cfg) -> None:
    item = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)[(0, 0)]
    model = DiffActModel.from_diffact_config(tiny_cfg).eval()
    base = training_losses(model, item, tiny_cfg)
    item["labels"] = item["labels"].clone()
    item["labels"][:10] = IGNORE_INDEX
    parts = training_losses(model, item, tiny_cfg)
    assert all(torch.isfinite(v) for v in parts.values())
    assert parts["ce_enc"] != base["ce_enc"]
    weighted = tiny_cfg.with_updates(loss={"soft_label": None})
    assert torch.isfinite(training_losses(model, item, weighted, torch.ones(5))["loss"])


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_cfg) -> None:
    torch.manual_seed(0)
    model = DiffActModel.from_diffact_config(tiny_cfg).eval()
    feats = torch.randn(1, 16, 200)
    cpu = model.sample(feats, 8, torch.Generator().manual_seed(0))
    gpu = model.to("cuda").sample(feats.cuda(), 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
