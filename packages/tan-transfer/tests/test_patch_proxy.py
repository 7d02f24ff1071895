"""The photo-patch proxy: a patch CNN trained on real scikit-image patches, its features, cache and proxy figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

import tan_transfer.patch_proxy as patch_module
from tan_transfer import (
    PATCH_CLASSES,
    PatchCNNConfig,
    TanTransferError,
    patch_cnn,
    patch_split,
    proxy_metrics,
)

SMALL = PatchCNNConfig(steps=60, batch_size=32, width=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patch_cnn")
    return folder, patch_cnn(folder, SMALL)


def test_beats_chance_on_heldout_patches(trained):
    _, proxy = trained
    _, _, x, y = patch_split(SMALL)
    assert set(y.tolist()) == set(range(len(PATCH_CLASSES))) and PATCH_CLASSES[-1] == "grass"
    pred = proxy.predict((x + 1) / 2)
    balanced = float(np.mean([(pred[y == k] == k).float().mean() for k in range(len(PATCH_CLASSES))]))
    assert balanced >= 0.3  # chance is 1/8 = 0.125 after 60 steps
    assert balanced == pytest.approx(proxy.card["heldout_balanced_accuracy"], abs=1e-4)


def test_features_shape_and_cache_reload_equal(trained, monkeypatch):
    folder, proxy = trained
    x = (patch_split(SMALL)[2][:7] + 1) / 2
    feats = proxy.features(x)
    assert feats.shape == (7, SMALL.feature_dim) and torch.isfinite(feats).all()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached patch CNN must only be loaded")

    monkeypatch.setattr(patch_module, "_train", no_training)
    again = patch_cnn(folder, SMALL)
    a, b = proxy.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(again.features(x), feats)
    with pytest.raises(TanTransferError, match="another patch-CNN config"):
        patch_cnn(folder, PatchCNNConfig(steps=61, batch_size=32, width=16))
    with pytest.raises(TanTransferError, match=r"\[N, 1, 16, 16\]"):
        proxy.features(torch.rand(2, 1, 8, 8))


def _frechet_closed_form(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_photo_proxy_metrics(trained):
    from tan_transfer import photo_patch_task

    _, proxy = trained
    task = photo_patch_task(shots=10, seed=0)
    grass01, source01 = (task.target_all + 1) / 2, (task.source[::4] + 1) / 2
    m_grass = proxy_metrics(grass01, task.shots, patch_features=proxy)
    m_source = proxy_metrics(source01, task.shots, patch_features=proxy)
    assert m_grass["proxy_fid"] == pytest.approx(0.0, abs=1e-6)  # the reference itself
    expected = _frechet_closed_form(
        proxy.features(source01).double().numpy(), proxy.reference_features().double().numpy()
    )
    assert m_source["proxy_fid"] == pytest.approx(expected, rel=1e-4)
    assert m_source["proxy_fid"] > 10 * m_grass["proxy_fid"] + 1e-3
    assert m_grass["target_class_rate"] == pytest.approx(float((proxy.predict(grass01) == 7).float().mean()))
    assert m_grass["target_class_rate"] > m_source["target_class_rate"]
    assert m_grass["copy_rate"] > 0  # the 10 shots are among the grass patches
    with pytest.raises(TanTransferError, match="not both"):
        proxy_metrics(grass01, task.shots, target_class=9, patch_features=proxy)
