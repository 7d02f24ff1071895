import numpy as np
import pytest
import torch

from guidance_kit import (
    GuidanceKitError,
    classifier_guidance,
    compress_cfg,
    compress_schedule,
    full_schedule,
    increment_uncond,
    interval_cfg,
    sample,
)


class CountingClassifier(torch.nn.Module):
    """A tiny noisy classifier that counts its forward and backward passes."""

    def __init__(self, channels=3):
        super().__init__()
        from difflab_core.tiny import tiny_noisy_classifier

        self.net = tiny_noisy_classifier(channels, 10, 16, seed=1)
        self.forwards = 0
        self.backwards = 0

    def forward(self, x, t):
        self.forwards += 1
        if x.requires_grad:
            x.register_hook(self._count)
        return self.net(x, t)

    def _count(self, grad):
        self.backwards += 1


def _ddim(pipe, n, seed=0):
    return pipe(
        batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=n, output_type="np"
    ).images


@pytest.mark.parametrize(("n", "skip", "k"), [(50, 5, 2), (25, 5, 2), (20, 4, 2), (20, 1, 2)])
def test_classifier_called_only_on_scheduled_steps(ddim_pipe, n, skip, k):
    clf = CountingClassifier()
    with classifier_guidance(ddim_pipe, clf, [1, 2], scale=2.0, skip=skip, k=k) as run:
        _ddim(ddim_pipe, n)
    expected = compress_schedule(n, skip, k).num_guided
    assert clf.forwards == clf.backwards == run.stats["classifier_calls"] == expected
    assert (expected == n) == (skip == 1)
    assert run.stats["denoiser_calls"] == n and not run.stats["schedule_mismatch"]


def test_skip_one_equals_full_guidance_and_a_naive_loop(ddim_pipe):
    clf, labels, scale, n = CountingClassifier(), torch.tensor([3, 7]), 5.0, 12
    with classifier_guidance(ddim_pipe, clf, labels, scale=scale, skip=1):
        skip_one = _ddim(ddim_pipe, n)
    with classifier_guidance(ddim_pipe, clf, labels, scale=scale, schedule=full_schedule(n)):
        full = _ddim(ddim_pipe, n)
    assert np.array_equal(skip_one, full)

    unet, sched = ddim_pipe.unet, ddim_pipe.scheduler
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3, 16, 16), generator=gen)
    sched.set_timesteps(n)
    for t in sched.timesteps:
        with torch.no_grad():
            eps = unet(x, t).sample
        xg = x.clone().requires_grad_(True)
        logp = torch.log_softmax(clf(xg, torch.full((2,), int(t))), dim=1)[torch.arange(2), labels].sum()
        (grad,) = torch.autograd.grad(logp, xg)
        eps = eps - (1 - sched.alphas_cumprod[t]).sqrt() * scale * grad
        x = sched.step(eps, t, x, eta=0.0, generator=gen).prev_sample
    naive = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(full, naive, atol=1e-4)
    assert not np.allclose(full, _ddim(ddim_pipe, n), atol=1e-3)  # guidance did something


def test_mean_shift_form_moves_samples(ddim_pipe):
    with classifier_guidance(ddim_pipe, CountingClassifier(), [1, 2], scale=3.0, form="mean_shift", skip=2):
        shifted = _ddim(ddim_pipe, 10)
    assert np.isfinite(shifted).all() and not np.allclose(shifted, _ddim(ddim_pipe, 10), atol=1e-4)


def _sd(pipe, n=10, g=5.0):
    gen = torch.Generator().manual_seed(0)
    return pipe(
        ["a red cat", "a blue dog"], num_inference_steps=n, guidance_scale=g, generator=gen, output_type="pt"
    ).images


def test_compress_cfg_skip_one_is_bit_identical(tiny_sd):
    with compress_cfg(tiny_sd, skip=1) as run:
        hooked = _sd(tiny_sd)
    assert torch.equal(hooked, _sd(tiny_sd)) and run.stats["uncond_forwards"] == 10


def _naive_compress(pipe, n, g, guided):
    """Independent reference: full CFG on guided steps, a conditional-only forward elsewhere."""
    cond, uncond = pipe.encode_prompt(["a red cat", "a blue dog"], "cpu", 1, True)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, 16, 16), generator=gen)
    sched = pipe.scheduler
    sched.set_timesteps(n)
    latents = latents * sched.init_noise_sigma
    for j, t in enumerate(sched.timesteps):
        with torch.no_grad():
            if j in guided:
                out = pipe.unet(
                    torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])
                ).sample
                u, c = out.chunk(2)
                eps = u + g * (c - u)
            else:
                eps = pipe.unet(latents, t, encoder_hidden_states=cond).sample
        latents = sched.step(eps, t, latents, eta=0.0, generator=gen).prev_sample
    with torch.no_grad():
        return (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


def test_compress_cfg_skips_the_unconditional_forward(tiny_sd):
    from difflab_core.tracking import DenoiserEditHook

    n, schedule = 10, compress_schedule(10, 5, 2, weight_mode="none")
    sizes = DenoiserEditHook(tiny_sd.unet, lambda call: None)
    with compress_cfg(tiny_sd, skip=5) as run, sizes:
        out = _sd(tiny_sd, n)
    batches = [4 if schedule.is_guided(j) else 2 for j in range(n)]
    assert sizes.stats["batch_sizes"] == batches
    assert run.stats["uncond_forwards"] == schedule.num_guided == 4
    torch.testing.assert_close(
        out, _naive_compress(tiny_sd, n, 5.0, set(schedule.guided_steps)), atol=1e-5, rtol=0
    )


def test_increment_and_edm2_formulas():
    gen = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    g, w = 7.5, 3.0
    u1 = increment_uncond(u, c, w, g, "increment")
    torch.testing.assert_close(u1 + g * (c - u1), c + w * (g - 1) * (c - u))
    u2 = increment_uncond(u, c, w, g, "edm2")
    torch.testing.assert_close(u2 + g * (c - u2), u + g * w * (c - u))


def test_weighted_compress_cfg_uses_the_increment(tiny_sd):
    with compress_cfg(tiny_sd, skip=5, weight_mode="compress") as run:
        weighted = _sd(tiny_sd)
    with compress_cfg(tiny_sd, skip=5) as plain_run:
        unweighted = _sd(tiny_sd)
    assert run.stats["uncond_forwards"] == plain_run.stats["uncond_forwards"]
    assert not torch.allclose(weighted, unweighted)


def test_interval_cfg_runs_cfg_inside_the_interval_only(tiny_sd):
    with interval_cfg(tiny_sd, sigma_lo=0.5, sigma_hi=3.0) as run:
        _sd(tiny_sd, 10)
    acp = tiny_sd.scheduler.alphas_cumprod
    sig = [float(((1 - acp[t]) / acp[t]).sqrt()) for t in tiny_sd.scheduler.timesteps]
    assert [r["cfg"] for r in run.stats["records"]] == [0.5 <= s <= 3.0 for s in sig]


def test_no_hooks_remain(tiny_sd, ddim_pipe):
    with compress_cfg(tiny_sd, skip=5):
        _sd(tiny_sd, 5)
    with pytest.raises(GuidanceKitError, match="skip"), compress_cfg(tiny_sd, skip=5):
        _sd(tiny_sd, 3)  # skip > n
    with pytest.raises(RuntimeError, match="stop"), compress_cfg(tiny_sd, skip=2):
        raise RuntimeError("stop")
    with pytest.raises(GuidanceKitError), classifier_guidance(ddim_pipe, CountingClassifier(), [1]):
        _ddim(ddim_pipe, 5)  # batch 2 but one label
    for unet in (tiny_sd.unet, ddim_pipe.unet):
        assert not unet._forward_hooks and not unet._forward_pre_hooks


def test_sample_matches_ddim_pipeline_and_supports_cfg(ddim_pipe):
    from diffusers import DDIMScheduler

    from difflab_core.tiny import tiny_unet_2d

    ref = ddim_pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="np"
    )
    mine = sample(
        ddim_pipe.unet,
        ddim_pipe.scheduler,
        num_inference_steps=6,
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose((mine / 2 + 0.5).permute(0, 2, 3, 1).numpy(), ref.images, atol=1e-6)
    unet = tiny_unet_2d(16, 3, num_class_embeds=4)
    kwargs = dict(num_inference_steps=10, class_labels=[0, 1], guidance_scale=3.0, null_class=3)
    full = sample(unet, DDIMScheduler(), generator=torch.Generator().manual_seed(0), **kwargs)
    sched = DDIMScheduler()
    with compress_cfg(unet, skip=5, scheduler=sched, guidance_scale=3.0) as run:
        compressed = sample(unet, sched, generator=torch.Generator().manual_seed(0), **kwargs)
    assert run.stats["uncond_forwards"] == compress_schedule(10, 5, 2).num_guided
    assert full.shape == compressed.shape == (2, 3, 16, 16) and not torch.equal(full, compressed)
    with pytest.raises(GuidanceKitError, match="null_class"):
        sample(unet, sched, class_labels=[0], guidance_scale=2.0)
