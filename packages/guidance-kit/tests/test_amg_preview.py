"""AMG with ``preview_decoder``: a local `AutoencoderTiny` decodes x̂₀ for detection; final images stay the
pipeline VAE's."""

import math

import pytest
import torch

from difflab_core.tiny import seeded, tiny_vae
from guidance_kit import AMGConfig, GuidanceKitError, NeighbourIndex, amg
from guidance_kit.amg import vae_decoder

PROMPTS = ["a red cat", "a dog"]
STEPS = 5


def _tiny_autoencoder(latent_channels=4):
    """A random 2×-upsampling `AutoencoderTiny` (two 8-channel blocks)."""
    from diffusers import AutoencoderTiny

    with seeded(3):
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=latent_channels,
        ).eval()


@pytest.fixture(scope="module")
def preview_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("taesd")
    _tiny_autoencoder().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def index():
    return NeighbourIndex.build(torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def _run(pipe):
    gens = [torch.Generator().manual_seed(0) for _ in PROMPTS]
    return pipe(
        PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, generator=gens, output_type="pt"
    ).images


class Counter:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_preview_decoder_detects_and_the_pipeline_vae_makes_the_images(
    tiny_sd, index, preview_dir, monkeypatch
):
    from diffusers import AutoencoderTiny

    preview_decode = Counter(AutoencoderTiny.decode)
    monkeypatch.setattr(AutoencoderTiny, "decode", lambda self, *a, **k: preview_decode(self, *a, **k))
    pipe_decode = Counter(tiny_sd.vae.decode)
    monkeypatch.setattr(tiny_sd.vae, "decode", pipe_decode)
    plain = _run(tiny_sd)
    assert (pipe_decode.calls, preview_decode.calls) == (1, 0)

    detect_only = AMGConfig(lambda_floor=math.inf, preview_decoder=str(preview_dir))
    with amg(tiny_sd, index, config=detect_only) as engine:
        images = _run(tiny_sd)
    assert torch.equal(images, plain)  # nothing fired: the pipeline's own VAE decoded the same latents
    assert (pipe_decode.calls, preview_decode.calls) == (2, STEPS)  # one final decode; one preview per step

    # the same σ₁ and neighbours as detection through an independently loaded AutoencoderTiny
    by_hand = AutoencoderTiny.from_pretrained(preview_dir).eval()
    with amg(
        tiny_sd, index, config=detect_only.replace(preview_decoder=None), decoder=vae_decoder(by_hand)
    ) as ref:
        _run(tiny_sd)
    assert [(r.sigma1, r.neighbour_row) for r in engine.records] == [
        (r.sigma1, r.neighbour_row) for r in ref.records
    ]
    with amg(tiny_sd, index, config=detect_only.replace(preview_decoder=None)) as full:
        _run(tiny_sd)
    assert [r.sigma1 for r in full.records] != [r.sigma1 for r in engine.records]

    # firing (G_spe and G_sim, whose gradient also runs through the preview): still one pipeline decode per call
    pipe_decode.calls = preview_decode.calls = 0
    with amg(tiny_sd, index, config=detect_only.replace(lambda_floor=-5.0)) as firing:
        guided = _run(tiny_sd)
    assert firing.summary()["steps_sim"] == STEPS * len(PROMPTS)
    assert pipe_decode.calls == 1 and preview_decode.calls == 2 * STEPS
    assert not torch.equal(guided, plain)


def test_preview_decoder_errors(tiny_sd, index, tmp_path):
    with (
        pytest.raises(GuidanceKitError, match="missing-taesd"),
        amg(tiny_sd, index, config=AMGConfig(preview_decoder=str(tmp_path / "missing-taesd"))),
    ):
        pass
    wrong_channels = tmp_path / "taesd3"
    _tiny_autoencoder(latent_channels=3).save_pretrained(wrong_channels)
    with (
        pytest.raises(GuidanceKitError, match="3-channel latents but the pipeline's latents have 4"),
        amg(tiny_sd, index, config=AMGConfig(preview_decoder=str(wrong_channels))),
    ):
        pass
    kl = tmp_path / "kl"
    tiny_vae().save_pretrained(kl)
    with (
        pytest.raises(GuidanceKitError, match="not an AutoencoderTiny"),
        amg(tiny_sd, index, config=AMGConfig(preview_decoder=str(kl))),
    ):
        pass
    assert not tiny_sd.unet._forward_hooks
