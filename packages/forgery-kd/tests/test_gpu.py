"""CUDA checks: skipped without a GPU."""

import math

import pytest
import torch

from forgery_kd.homogenize import GradientHomogenizer
from forgery_kd.models import DualBranchTeacher
from forgery_kd.train import distill, distill_variant, evaluate


@pytest.mark.gpu
def test_fp16_distillation_with_a_loss_scaler_on_cuda(data_config, tmp_path):
    teacher = DualBranchTeacher("test_resnet", "test_resnet", "fad", 32)
    cfg = distill_variant(
        "dedicated_rotograd",
        out_dir=str(tmp_path),
        data=data_config,
        student="test_efficientnet",
        steps=4,
        batch_size=4,
        mixed_precision="fp16",
    )
    out = distill(cfg, teacher)
    assert math.isfinite(out.result.last_loss) and math.isfinite(out.diagnostics["grad_norm_ratio"])
    metrics = evaluate(out.student, data_config.dataset("test"), device="cuda")
    assert 0.0 <= metrics["frame"]["auc"] <= 1.0


@pytest.mark.gpu
def test_homogenizer_on_cuda_matches_cpu():
    torch.manual_seed(0)
    h = torch.randn(4, 16, 3, 3)
    w = torch.randn(2, 16, 3, 3)
    grads = {}
    for device in ("cpu", "cuda"):
        hom = GradientHomogenizer(2, 16, mode="rotograd").to(device)
        with torch.no_grad():
            hom.rotations.skew.copy_(torch.randn(2, 16, 16) * 0.1)
        x = h.to(device).requires_grad_(True)
        views = hom.split(x)
        ((views[0] * w[0].to(device)).sum() + 3 * (views[1] * w[1].to(device)).pow(2).sum()).backward()
        grads[device] = (x.grad.cpu(), hom.rotations.skew.grad.cpu())
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
