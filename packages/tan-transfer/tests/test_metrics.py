"""Spec §5 test 11: diversity, copying, Fréchet distance, and the optional real metrics' errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from difflab_core.metrics import frechet_distance
from tan_transfer import TanTransferError, copy_rate, fid, intra_cluster_distance, lpips_distance


def test_intra_cluster_distance_zero_for_copies_and_hand_example():
    g = torch.Generator().manual_seed(0)
    shots = torch.rand(4, 1, 6, 6, generator=g)
    copies = shots.repeat(3, 1, 1, 1)
    assert intra_cluster_distance(copies, shots) == 0.0
    assert copy_rate(copies, shots) == 1.0
    # hand example: 1-pixel images; shots at 0 and 10; samples 1, 2, 4 → shot 0; 9 → shot 1 (singleton)
    shots1 = torch.tensor([0.0, 10.0]).view(2, 1, 1, 1)
    samples = torch.tensor([1.0, 2.0, 4.0, 9.0]).view(4, 1, 1, 1)
    assert intra_cluster_distance(samples, shots1) == pytest.approx((1 + 3 + 2) / 3)
    # copy threshold = 0.5 × median shot distance = 5: distances 1, 3, 4.9 count, 5 does not
    assert copy_rate(torch.tensor([1.0, 3.0, 4.9, 5.0]).view(4, 1, 1, 1), shots1) == 0.75


def test_frechet_distance_zero_and_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = rng.normal(size=(400, 3)) @ np.diag([1.0, 2.0, 0.5]) + np.array([1.0, -1.0, 0.0])
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    closed = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-6)


def test_real_metrics_name_the_missing_weights(tmp_path):
    with pytest.raises(TanTransferError, match=r"inception\.pt"):
        fid(torch.rand(2, 3, 8, 8), tmp_path, tmp_path / "inception.pt")
    with pytest.raises(TanTransferError, match=r"alexnet\.pth"):
        lpips_distance(tmp_path / "alexnet.pth")


def test_real_metrics_name_the_missing_package(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    try:
        import lpips  # noqa: F401

        pytest.skip("lpips is installed")
    except ImportError:
        pass
    with pytest.raises(TanTransferError, match=r"lpips.*tan-transfer\[eval\]"):
        lpips_distance(weights)
