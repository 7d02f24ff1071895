"""CUDA checks (skipped without a GPU): RAFT and the detector run on the device."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_raft_on_cuda():
    from mem_video import RAFTFlow

    raft = RAFTFlow(None, "small", device="cuda")
    out = raft.estimate(torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128))
    assert out.shape == (2, 2, 128, 128) and out.device.type == "cpu"


def test_detector_on_cuda():
    from difflab_core.tiny import tiny_video_pipeline
    from mem_video import MemorizationDetector

    pipe = tiny_video_pipeline().to("cuda")
    recs = MemorizationDetector(pipe, num_inference_steps=4, guidance_scale=7.5).score(
        ["a cat"], num_videos_per_prompt=2, num_frames=4
    )
    assert len(recs) == 2 and len(recs[0].steps[0]["content_per_frame"]) == 4
