import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

MEM_RMSE = 0.10  # the testbed's copy threshold (difflab_core.testbed.verify)


@pytest.fixture(scope="session")
def tiny_sd():
    from difflab_core.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline("sd1")


@pytest.fixture(scope="session")
def ddim_pipe():
    """A tiny 3-channel 16×16 `DDIMPipeline` (random weights)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from difflab_core.tiny import tiny_unet_2d

    pipe = DDIMPipeline(unet=tiny_unet_2d(16, 3, seed=0), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def testbed():
    from difflab_core.testbed import load_memorization_testbed

    return load_memorization_testbed(device="cpu")


@pytest.fixture(scope="session")
def testbed_index(testbed):
    from guidance_kit import CaptionStats, NeighbourIndex

    index = NeighbourIndex.build(testbed.train_images)
    return index, CaptionStats.build(testbed.captions, index)


@pytest.fixture(scope="session")
def copied():
    """``copied(images, train) -> bool [N]``: the nearest training image is within RMSE 0.10 on [0, 1] pixels
    (the testbed's copy rule, as in ``difflab_core.testbed.verify``)."""
    from difflab_core.metrics import knn

    def rule(images: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        dist, _ = knn(images.flatten(1).double(), train.flatten(1).double(), metric="l2")
        return dist[:, 0] / images[0].numel() ** 0.5 < MEM_RMSE

    return rule
