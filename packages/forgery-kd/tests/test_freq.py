"""Spec §5 test 1–2: DCT, FAD bands, SRM, block DCT and phase transforms."""

import numpy as np
import pytest
import torch
from scipy.fft import dct, dctn

from forgery_kd import ForgeryKDError
from forgery_kd.freq import (
    BlockDCTTransform,
    FADTransform,
    PhaseTransform,
    SRMTransform,
    dct_matrix,
    fad_band_masks,
    make_freq_transform,
)


@pytest.mark.parametrize("n", [1, 8, 17, 64])
def test_dct_matrix_is_orthonormal_and_matches_scipy(n):
    d = dct_matrix(n, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-6)
    x = np.random.default_rng(n).normal(size=n)
    np.testing.assert_allclose(d.numpy() @ x, dct(x, norm="ortho"), atol=1e-10)


def test_fad_all_band_reconstructs_and_bands_cover_every_index():
    fad = FADTransform(16, learnable=False)
    x = torch.randn(2, 3, 16, 16)
    y = fad(x)
    assert y.shape == (2, 12, 16, 16)
    torch.testing.assert_close(y[:, 9:12], x, atol=1e-5, rtol=0)  # band 4 ("all")
    masks = fad_band_masks(16)
    assert bool(((masks[0] + masks[1] + masks[2]) > 0).all())
    assert bool((masks[3] == 1).all())
    # the low band of the DCT agrees with scipy's 2-D DCT restricted to i + j <= floor(16 / 2.82)
    coeffs = dctn(x[0, 0].numpy().astype(np.float64), norm="ortho")
    i, j = np.indices((16, 16))
    low = np.where(i + j <= 16 // 2.82, coeffs, 0.0)
    d = dct_matrix(16, dtype=torch.float64).numpy()
    np.testing.assert_allclose(y[0, 0].numpy(), d.T @ low @ d, atol=1e-5)


def test_fad_learnable_masks_get_gradients_and_wrong_size_errors():
    fad = FADTransform(8)
    fad(torch.randn(2, 3, 8, 8)).sum().backward()
    assert fad.logits.grad is not None
    with pytest.raises(ForgeryKDError, match="size=8"):
        fad(torch.randn(1, 3, 16, 16))


def test_srm_constant_image_is_zero_and_output_is_clipped():
    srm = SRMTransform()
    assert srm(torch.full((1, 3, 12, 12), 0.3)).abs().max() < 1e-6
    y = SRMTransform(scale=127.5)(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert y.shape == (2, 3, 16, 16) and y.min() >= -3 and y.max() <= 3
    assert y.abs().max() == 3  # pixel-unit residuals of noise are clipped


def test_block_dct_matches_scipy_on_each_block():
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    y = BlockDCTTransform().double()(x)
    assert y.shape == (1, 64, 2, 3)
    luma = (x[0] * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]).sum(0).numpy()
    block = dctn(luma[8:16, 16:24], norm="ortho")
    np.testing.assert_allclose(y[0, :, 1, 2].numpy(), np.log(np.abs(block) + 1).reshape(-1), atol=1e-6)
    with pytest.raises(ForgeryKDError, match="divisible by 8"):
        BlockDCTTransform()(torch.rand(1, 3, 12, 16))


def test_phase_transform_and_factory():
    x = torch.rand(2, 3, 16, 16)
    y = PhaseTransform()(x)
    assert y.shape == (2, 4, 16, 16)
    torch.testing.assert_close(y[:, :3], x)
    assert make_freq_transform("srm", 16).out_channels == 3
    with pytest.raises(ForgeryKDError, match="unknown"):
        make_freq_transform("wavelet", 16)
