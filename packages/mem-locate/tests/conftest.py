import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pipes():
    """The three tiny text-to-image layouts, built once per test session."""
    from difflab_core.tiny import tiny_sd_pipeline

    return {layout: tiny_sd_pipeline(layout) for layout in ("diffusers-test", "sd1", "sd2")}
