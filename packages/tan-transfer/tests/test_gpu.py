"""Spec §5 test 13 (CUDA only): one ANT iteration on the 256-px church DDPM config at batch 1 under fp16."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_church_config_one_iteration_fp16(tmp_path, capsys):
    from diffusers import UNet2DModel

    from tan_transfer import DPMBundle, SmallNoisyClassifier, TANConfig, train_tan

    config = {
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    }
    unet = UNet2DModel(**config).cuda().eval().requires_grad_(False)
    bundle = DPMBundle.from_unet(unet)
    clf = SmallNoisyClassifier(3, 256).cuda().eval()
    cfg = TANConfig(iterations=1, batch_size=1, micro_batch=1, mixed_precision="fp16", checkpoint_every=0)
    torch.cuda.reset_peak_memory_stats()
    result = train_tan(bundle, torch.rand(2, 3, 256, 256) * 2 - 1, cfg, classifier=clf, output_dir=tmp_path)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    with capsys.disabled():
        print(f"church config, ANT, batch 1, fp16: peak {peak_mb:.0f} MB, {result.sec_per_iter:.2f} s/iter")
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.last_loss))
