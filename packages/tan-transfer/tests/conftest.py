"""Session fixtures: tiny UNets (8×8 pixel, tiny SD), the shipped digits DDPM, and a tiny training setup."""

from __future__ import annotations

import copy

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def unet8():
    from difflab_core.tiny import tiny_unet_2d

    return tiny_unet_2d(8, 1, seed=0).requires_grad_(False)


@pytest.fixture(scope="session")
def sd_pipe():
    from difflab_core.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline("sd1", seed=0)


@pytest.fixture(scope="session")
def bundle8(unet8):
    from tan_transfer import DPMBundle

    return DPMBundle.from_unet(copy.deepcopy(unet8))


@pytest.fixture(scope="session")
def digits_bundle():
    from difflab_core.testbed import digits_ddpm
    from tan_transfer import DPMBundle

    d = digits_ddpm((0, 1, 2, 3, 4))
    return DPMBundle.from_unet(d.unet, d.scheduler)


@pytest.fixture(scope="session")
def shots8():
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 1, 8, 8, generator=g) * 2 - 1


@pytest.fixture(scope="session")
def clf8():
    """A fixed (untrained, seeded) small noisy classifier for 1×8×8 inputs."""
    from difflab_core.tiny import seeded
    from tan_transfer import SmallNoisyClassifier

    with seeded(5):
        return SmallNoisyClassifier(1, 8, width=8).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def small_cfg():
    """A few-second TAN config for the 8×8 UNet (micro-batches accumulated)."""
    from tan_transfer import TANConfig

    def make(**kw):
        base = dict(
            iterations=3,
            batch_size=2,
            micro_batch=1,
            ascent_steps=1,
            classifier="small_cnn",
            classifier_steps=5,
            checkpoint_every=0,
            ant_dropout=0.1,
            monitor_every=0,  # the monitor's own tests turn it on
        )
        return TANConfig(**(base | kw))

    return make
