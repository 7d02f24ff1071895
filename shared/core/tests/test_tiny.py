import gzip

import pytest
import torch

from difflab_core.errors import DifflabError
from difflab_core.tiny import (
    bpe_path,
    clip_tokenizer,
    tiny_ddpm_pipeline,
    tiny_noisy_classifier,
    tiny_unet_2d_condition,
    tiny_video_pipeline,
)


def test_tokenizer_matches_stable_diffusion_ids(tokenizer):
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    # Known ids of SD's tokenizer for this prompt ("a"=320, "photo"=1125, "of"=539, "cat"=2368).
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tokenizer_vocab_follows_bpe_file(tokenizer):
    with gzip.open(bpe_path(), "rt", encoding="utf-8") as fh:
        first_merge = fh.read().split("\n")[1]
    # The first merged token sits right after the 512 byte tokens.
    assert tokenizer.convert_ids_to_tokens(512) == first_merge.replace(" ", "")


def test_sd2_pad_is_exclamation():
    tok = clip_tokenizer(pad="!")
    ids = tok("hi", padding="max_length", max_length=6).input_ids
    assert ids[:3] == [49406, 1883, 49407] and ids[3:] == [0, 0, 0]
    with pytest.raises(DifflabError, match="pad"):
        clip_tokenizer(pad="x")


def test_factories_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_unet_2d_condition("sd1", seed=5)
    b = tiny_unet_2d_condition("sd1", seed=5)
    after = torch.rand(3)
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_unknown_layout_raises():
    with pytest.raises(DifflabError, match="layout"):
        tiny_unet_2d_condition("sd9")


@pytest.mark.parametrize("layout", ["diffusers-test", "sd1", "sd2"])
def test_sd_pipelines_generate(sd_pipes, layout):
    pipe = sd_pipes[layout]
    out = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(out.images).all()
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if layout == "sd2" else "epsilon")


def test_ddpm_video_and_classifier():
    ddpm = tiny_ddpm_pipeline(sample_size=8, in_channels=1)
    img = ddpm(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 8, 8, 1)
    video = tiny_video_pipeline()
    frames = video("a cat", num_inference_steps=2, num_frames=2, height=32, width=32, output_type="pt").frames
    assert tuple(frames.shape) == (1, 2, 3, 32, 32)
    clf = tiny_noisy_classifier(1, 10, 16)
    assert clf(torch.randn(4, 1, 16, 16), torch.tensor([1, 10, 100, 999])).shape == (4, 10)
