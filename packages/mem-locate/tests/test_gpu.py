"""CUDA checks (spec §5 item 16): skipped without a GPU."""

import copy

import numpy as np
import pytest
import torch

from mem_locate.detect import AuditConfig, Auditor, two_pass_be
from mem_locate.localize import BrightEnding


@pytest.mark.gpu
def test_fp16_capture_matches_fp32(pipes):
    prompts = ["a photo of a cat", "a dog"]
    maps = {}
    for dtype in (torch.float32, torch.float16):
        pipe = copy.deepcopy(pipes["sd1"]).to("cuda", dtype)
        res = BrightEnding(pipe)(prompts, num_inference_steps=4, guidance_scale=3.0, seed=0)
        maps[dtype] = res.maps.float().cpu()
    torch.testing.assert_close(maps[torch.float16], maps[torch.float32], atol=1e-2, rtol=0)


@pytest.mark.gpu
def test_one_pass_equals_two_pass_on_cuda_fp16(pipes):
    pipe = copy.deepcopy(pipes["sd1"]).to("cuda", torch.float16)
    cfg = AuditConfig(num_inference_steps=4, guidance_scale=3.0, num_images_per_prompt=2)
    scores, _ = Auditor(pipe, cfg).score_prompts(["a photo of a cat"], [0])
    ref = two_pass_be(
        pipe, "a photo of a cat", num_inference_steps=4, guidance_scale=3.0, num_images_per_prompt=2
    )
    np.testing.assert_allclose(scores[0].be, ref.be, rtol=1e-3)
