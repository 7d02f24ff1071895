"""Spec §5 test 8: the domain classifier separates digits 0–4 from inverted digits at low noise."""

from __future__ import annotations

import pytest
import torch

from tan_transfer import TANConfig, UNetEncoderClassifier, target_logprob_grad, train_domain_classifier


def test_unet_encoder_classifier_sanity(digits_bundle):
    from difflab_core.testbed.digits import real_digits

    images, _ = real_digits((0, 1, 2, 3, 4))
    x = images * 2 - 1
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    source, target = x[perm[:300]], -x[perm[300:400]]  # inverted digits
    cfg = TANConfig(classifier_steps=100, seed=0)
    clf, report = train_domain_classifier(digits_bundle, source, target, cfg)
    assert isinstance(clf, UNetEncoderClassifier)
    assert report["heldout_accuracy_by_t"]["0-199"] >= 0.9
    assert set(report["heldout_accuracy_by_t"]) == {"0-199", "200-399", "400-599", "600-799", "800-999"}
    # the source UNet is untouched (the encoder is a copy) and g leaves φ's .grad alone
    assert all(not p.requires_grad for p in digits_bundle.unet.parameters())
    g = target_logprob_grad(clf, source[:4], torch.tensor([5, 50, 100, 150]))
    assert g.shape == source[:4].shape and torch.isfinite(g).all()
    assert all(p.grad is None for p in clf.parameters())


def test_classifier_input_errors(digits_bundle):
    from tan_transfer import TanTransferError

    with pytest.raises(TanTransferError, match="classifier data"):
        train_domain_classifier(
            digits_bundle, torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), TANConfig()
        )
