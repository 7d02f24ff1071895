"""AMG with ``pixel_space="latent"``: detection against VAE latents stored in the index, with no decode."""

import math

import pytest
import torch

from guidance_kit import AMGConfig, AntiMemorizationGuidance, GuidanceKitError, NeighbourIndex, amg
from guidance_kit.amg import LatentPixelSimilarity

PROMPTS = ["a red cat", "a dog"]
STEPS = 5
SCALE = 7.5


def _images(n=24, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _encode_by_hand(vae, images):
    """The denoiser-space latents of ``images`` in [0, 1], rounded to fp16 as the index stores them."""
    mode = vae.encode(images * 2 - 1).latent_dist.mode()
    return (mode * vae.config.scaling_factor).half().float()


def _run(pipe, output_type="latent"):
    gens = [torch.Generator().manual_seed(0) for _ in PROMPTS]
    return pipe(
        PROMPTS, num_inference_steps=STEPS, guidance_scale=SCALE, generator=gens, output_type=output_type
    ).images


@pytest.fixture(scope="module")
def latent_index(tiny_sd):
    return NeighbourIndex.build(_images(), vae=tiny_sd.vae)


class DecodeCounter:
    def __init__(self, decode):
        self.decode = decode
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.decode(*args, **kwargs)


def test_index_stores_vae_latents_and_reloads_them(tiny_sd, tmp_path):
    images = _images(10)
    expected = _encode_by_hand(tiny_sd.vae, (images * 255).round() / 255)
    built = NeighbourIndex.build(images, tmp_path / "index", vae=tiny_sd.vae, batch_size=4, shard_size=4)
    assert built.latent_shape == (4, 16, 16)
    torch.testing.assert_close(built.latents(range(10)), expected, rtol=0, atol=2e-3)
    loaded = NeighbourIndex.load(tmp_path / "index")
    assert torch.equal(loaded.latents(range(10)), built.latents(range(10)))
    info = loaded.manifest["latents"]
    assert info["shape"] == [4, 16, 16] and info["dtype"] == "float16"
    assert info["scaling_factor"] == tiny_sd.vae.config.scaling_factor and info["image_size"] == [32, 32]
    assert not NeighbourIndex.build(images).has_latents


def test_latent_detection_matches_brute_force_on_latents(tiny_sd, latent_index):
    """σ₁ and n₀ on every step equal an independent computation from the UNet's raw outputs: x̂₀ from the
    post-CFG ε̂, then brute-force RMSE against latents encoded by hand."""
    refs = _encode_by_hand(tiny_sd.vae, (_images() * 255).round() / 255).flatten(1)
    seen = []
    handle = tiny_sd.unet.register_forward_hook(
        lambda m, args, out: seen.append((args[0].detach(), args[1], out[0].detach()))
    )
    try:
        with amg(
            tiny_sd, latent_index, config=AMGConfig(pixel_space="latent", lambda_floor=math.inf)
        ) as engine:
            _run(tiny_sd)
    finally:
        handle.remove()
    assert len(seen) == STEPS and len(engine.records) == STEPS * len(PROMPTS)
    acp = tiny_sd.scheduler.alphas_cumprod
    for j, (sample, t, out) in enumerate(seen):
        u, c = out.chunk(2)
        eps = u + SCALE * (c - u)
        abar = acp[int(t)].double()
        x0 = ((sample[len(PROMPTS) :].double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).flatten(1)
        dist = ((x0[:, None] - refs[None].double()) ** 2).mean(-1).sqrt()  # [B, 24]
        r = dist.min(dim=1).values / (0.5 * dist.mean(dim=1))  # k = 50 > 24 rows: all of them
        for b in range(len(PROMPTS)):
            record = engine.records[j * len(PROMPTS) + b]
            assert (record.j, record.sample) == (j, b) and not record.fired
            assert record.neighbour_row == int(dist[b].argmin())
            assert record.sigma1 == pytest.approx(1 - float(r[b]) / 2, abs=1e-4)


def test_latent_detection_and_guidance_never_decode(tiny_sd, latent_index, monkeypatch):
    counter = DecodeCounter(tiny_sd.vae.decode)
    monkeypatch.setattr(tiny_sd.vae, "decode", counter)
    plain = _run(tiny_sd)
    firing = AMGConfig(pixel_space="latent", lambda_floor=-5.0)
    with amg(tiny_sd, latent_index, config=firing) as engine:
        guided = _run(tiny_sd)
    assert counter.calls == 0
    summary = engine.summary()
    assert summary["steps_spe"] == summary["steps_sim"] == STEPS * len(PROMPTS)
    assert not torch.equal(guided, plain)
    with amg(tiny_sd, latent_index, config=firing.replace(pixel_space="image")):
        _run(tiny_sd)
    assert counter.calls >= 2 * STEPS  # the image-space path decodes (detection and G_sim) every step


def test_latent_similarity_lowers_under_its_own_gradient(latent_index):
    """G_sim's direction in latent space: a step along −∇σ moves x̂₀ away from a stored latent it sits near."""
    similarity = LatentPixelSimilarity(latent_index)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    x0 = (latent_index.latents([3]) + 0.05 * noise).requires_grad_(True)
    det = similarity(x0)
    (grad,) = torch.autograd.grad(det.sigma.sum(), x0)
    assert int(det.nearest[0]) == 3
    assert float(similarity(x0.detach() - 10 * grad).sigma[0]) < float(det.sigma[0].detach())


def test_latent_space_errors(tiny_sd, latent_index):
    plain_index = NeighbourIndex.build(_images(4))
    with (
        pytest.raises(GuidanceKitError, match="no VAE latents"),
        amg(tiny_sd, plain_index, config=AMGConfig(pixel_space="latent")),
    ):
        pass
    with pytest.raises(GuidanceKitError, match="no VAE latents"):
        AntiMemorizationGuidance(AMGConfig(pixel_space="latent"), plain_index)
    with pytest.raises(GuidanceKitError, match="pixel_space"):
        AMGConfig(pixel_space="pixels")
    with pytest.raises(GuidanceKitError, match="backend='pixel'"):
        AMGConfig(pixel_space="latent", backend="ssim")
    with pytest.raises(GuidanceKitError, match="preview_decoder"):
        AMGConfig(pixel_space="latent", preview_decoder="taesd")
    small = NeighbourIndex.build(_images(4, size=16), vae=tiny_sd.vae)  # latents [4, 8, 8]
    with (
        pytest.raises(GuidanceKitError, match=r"\[4, 8, 8\].*\[4, 16, 16\]"),
        amg(tiny_sd, small, config=AMGConfig(pixel_space="latent")),
    ):
        _run(tiny_sd)
    assert not tiny_sd.unet._forward_hooks
    other = NeighbourIndex.build(_images(4), vae=tiny_sd.vae)
    other.latent_info["scaling_factor"] = 0.5
    with (
        pytest.raises(GuidanceKitError, match="scaling_factor"),
        amg(tiny_sd, other, config=AMGConfig(pixel_space="latent")),
    ):
        pass


def test_latents_of_a_parameterless_vae_equal_its_closed_form():
    """Core's `PixelShuffleVAE` (buffers only, no parameters): latents = pixel_unshuffle(2x − 1)·scaling."""
    from difflab_core.testbed.pixel_vae import PixelShuffleVAE

    vae = PixelShuffleVAE(scaling_factor=0.5)
    images = (_images(5) * 255).round() / 255
    index = NeighbourIndex.build(images, vae=vae)
    expected = torch.nn.functional.pixel_unshuffle(images * 2 - 1, 2) * 0.5
    assert index.latent_shape == (12, 16, 16)
    torch.testing.assert_close(index.latents(range(5)), expected.half().float(), rtol=0, atol=0)
    assert index.latent_info["scaling_factor"] == 0.5 and index.latent_info["vae"] == "PixelShuffleVAE"
