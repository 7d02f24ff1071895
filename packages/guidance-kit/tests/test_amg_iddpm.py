"""`AMGConfig.official_iddpm()`: the CIFAR-10 code path (noised-distance G_sim, armed, paused, mean shift)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from difflab_core.tracking import DenoiserCall
from guidance_kit import AMGConfig, AntiMemorizationGuidance, GuidanceKitError, NeighbourIndex, amg, sample
from guidance_kit.amg import NoisedPixelDistance


def test_preset_values():
    config = AMGConfig.official_iddpm()
    assert config.terms == {"sim"} and config.detection == "noised" and config.backend == "pixel"
    assert (config.noised_arm, config.noised_scale) == (1.5, 8e4)
    assert (config.noised_pause_after, config.noised_pause_steps) == (3, 10)
    assert (config.pixel_alpha, config.pixel_k) == (0.5, 50)
    assert config.noised_lambda_at(0.0) == pytest.approx(1.5)
    assert config.noised_lambda_at(1.0) == pytest.approx(1.9491, abs=1e-4)
    assert AMGConfig().detection == "x0"
    with pytest.raises(GuidanceKitError, match="noised"):
        AMGConfig.official_iddpm(terms={"sim", "spe"})
    with pytest.raises(GuidanceKitError, match="detection"):
        AMGConfig(detection="latent")


def test_noised_distance_matches_brute_force_and_the_noise_expectation():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(60, 3, 8, 8, generator=gen)
    index = NeighbourIndex.build(train)
    pixels = index.pixels(range(60)).double() * 2 - 1  # the stored (uint8-rounded) images on [−1, 1]
    abar = 0.6
    x = math.sqrt(abar) * pixels[:2] + math.sqrt(1 - abar) * torch.randn(2, 3, 8, 8, generator=gen).double()
    r, nearest = NoisedPixelDistance(index)(x.float(), abar)
    for b in range(2):
        mse = ((x[b] - math.sqrt(abar) * pixels) ** 2).flatten(1).mean(1)
        ell = (mse + 1 - abar).sqrt() / 2
        expected = ell.min() / (0.5 * ell.sort().values[:50].mean())
        assert float(r[b]) == pytest.approx(float(expected), rel=1e-5)
        assert int(nearest[b]) == int(ell.argmin())
        # the expectation over the training image's noise z: E mean((x − √ᾱn − √(1−ᾱ)z)²)
        z = torch.randn(4000, 3, 8, 8, generator=gen).double()
        noised = math.sqrt(abar) * pixels[int(nearest[b])] + math.sqrt(1 - abar) * z
        monte_carlo = ((x[b] - noised) ** 2).flatten(1).mean(1).mean()
        assert float(monte_carlo) == pytest.approx(float(mse[int(nearest[b])] + 1 - abar), rel=5e-3)


class ScriptedDistance:
    """A stub r: the scripted value per call (all samples), with gradient ``w`` in x_t."""

    def __init__(self, values, w):
        self.values = list(values)
        self.w = w
        self.calls = 0

    def __call__(self, x_t, abar):
        value = self.values[self.calls]
        self.calls += 1
        r = value + ((x_t - x_t.detach()) * self.w).flatten(1).sum(1)
        return r, torch.zeros(x_t.shape[0], dtype=torch.long)


def test_armed_firing_pause_and_the_ddpm_mean_shift():
    sched = DDPMScheduler(clip_sample=False)
    sched.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 4, 4, generator=gen)
    # 1.6: not armed; 1.4: arms (no firing); 1.0 ×2: fire; 1.99 ×3: misses → pause 10; then 1.0: fires again
    values = [1.6, 1.4, 1.0, 1.0, 1.99, 1.99, 1.99, 1.0]
    similarity = ScriptedDistance(values, w)
    engine = AntiMemorizationGuidance(AMGConfig.official_iddpm(), None, similarity=similarity)
    for j, t in enumerate(sched.timesteps[:18]):
        x = torch.randn(1, 3, 4, 4, generator=gen)
        eps = torch.randn(1, 3, 4, 4, generator=gen)
        call = DenoiserCall(j, 50, t, x, (x, t), {}, sched, False, None, eps)
        result = engine.edit(call)
        record = engine.records[-1]
        lam = AMGConfig.official_iddpm().noised_lambda_at(int(t) / 1000)
        if not record.fired_sim:
            assert result is None
            continue
        assert record.c3 == pytest.approx(8e4 * (lam - record.r), rel=1e-6)
        # the DDPM step with the edited ε moves the mean by Σ_t·scale·∇r (same noise draw)
        prev = [
            sched.step(out, t, x, generator=torch.Generator().manual_seed(j)).prev_sample
            for out in (eps, result)
        ]
        variance = sched._get_variance(int(t))
        torch.testing.assert_close(prev[1] - prev[0], variance * record.c3 * w, rtol=1e-4, atol=1e-5)
    fired = [r.fired_sim for r in engine.records]
    paused = [r.paused for r in engine.records]
    assert fired == [False, False, True, True, False, False, False] + [False] * 10 + [True]
    assert paused == [False] * 7 + [True] * 10 + [False]
    assert all(r.r is None for r in engine.records[7:17]) and similarity.calls == len(values)


def test_official_iddpm_lowers_memorization_on_the_digits_ddpm():
    from difflab_core.testbed import digits_ddpm_memorized

    mem = digits_ddpm_memorized()
    index = NeighbourIndex.build(mem.train_images)
    labels = mem.planted_labels.repeat(4)
    kw = dict(num_inference_steps=20, class_labels=labels, guidance_scale=3.0, null_class=mem.null_class)

    def run(config):
        with amg(mem.unet, index, config=config, scheduler=mem.scheduler, guidance_scale=3.0) as engine:
            x = sample(mem.unet, mem.scheduler, generator=torch.Generator().manual_seed(0), **kw)
        return mem.is_memorized((x + 1) / 2).float().mean(), engine

    before, _ = run(AMGConfig(terms=frozenset()))
    after, engine = run(AMGConfig.official_iddpm())
    assert before > 0 and after <= 0.5 * before
    assert all(r.r is not None or r.paused for r in engine.records)
    assert any(r.fired_sim for r in engine.records)


def test_noised_detection_needs_an_index_at_the_model_resolution():
    index = NeighbourIndex.build(torch.rand(4, 3, 8, 8))
    with pytest.raises(GuidanceKitError, match="pixel_size"):
        NoisedPixelDistance(index)(torch.randn(1, 3, 16, 16), 0.5)
