import pytest
import torch

from difflab_core.errors import DifflabError
from difflab_core.tracking import NoiseTracker, cfg_sample, stop_after


def _embeds(pipe, prompts, n=1):
    cond, uncond = pipe.encode_prompt(prompts, "cpu", n, True, negative_prompt=None)
    return {"uncond": uncond, "cond": cond}


def _latents(pipe, batch, seed=0):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_cfg_sample_matches_the_diffusers_pipeline(sd_pipes):
    pipe = sd_pipes["sd1"]
    prompts, s = ["a photo of a cat", "a rocket"], 4.0
    latents = _latents(pipe, 2)
    ref = pipe(
        prompts, num_inference_steps=4, guidance_scale=s, latents=latents.clone(), output_type="pt"
    ).images
    out = cfg_sample(
        pipe,
        latents.clone(),
        _embeds(pipe, prompts),
        lambda i, t, p: p["uncond"] + s * (p["cond"] - p["uncond"]),
        num_inference_steps=4,
    )
    torch.testing.assert_close(out.images, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
def test_tracker_norms_equal_hand_written_cfg_loop(sd_pipes, layout):
    pipe = sd_pipes[layout]
    embeds = _embeds(pipe, ["a cat", "a dog"])
    hand_norm, hand_sqsum = [], []

    def guidance(i, t, preds):
        delta = preds["cond"] - preds["uncond"]
        if layout == "sd2":  # v-prediction: Δε = √ᾱ_t Δv
            delta = delta * pipe.scheduler.alphas_cumprod[int(t)].sqrt()
        hand_norm.append(delta.flatten(1).norm(dim=1))
        hand_sqsum.append((delta**2).sum(1))
        return preds["uncond"] + 3.0 * (preds["cond"] - preds["uncond"])

    with NoiseTracker(pipe.unet, scheduler=pipe.scheduler, batch_size=2) as tracker:
        cfg_sample(pipe, _latents(pipe, 2), embeds, guidance, num_inference_steps=3, output_type="latent")
    trace = tracker.trace()
    assert trace.steps == [0, 1, 2]
    assert trace.timesteps == [float(t) for t in pipe.scheduler.timesteps]
    torch.testing.assert_close(trace.norm, torch.stack(hand_norm), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trace.sqsum, torch.stack(hand_sqsum), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trace.norm, trace.sqsum.sum(dim=(-2, -1)).sqrt(), rtol=1e-5, atol=1e-6)


def test_v_prediction_conversion_is_sqrt_alpha_bar(sd_pipes):
    pipe = sd_pipes["sd2"]
    traces = {}
    for raw in (True, False):
        with NoiseTracker(pipe.unet, scheduler=pipe.scheduler, raw=raw) as tracker:
            pipe(
                "a cat", num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
            )
        traces[raw] = tracker.trace()
    alpha_bar = pipe.scheduler.alphas_cumprod[torch.tensor(traces[True].timesteps).long()]
    torch.testing.assert_close(
        traces[False].norm, traces[True].norm * alpha_bar.sqrt()[:, None], rtol=1e-5, atol=0
    )


def test_masked_norm_from_sqsum(sd_pipes):
    pipe = sd_pipes["sd1"]
    with NoiseTracker(pipe.unet, scheduler=pipe.scheduler, keep=("norm", "sqsum", "full")) as tracker:
        pipe("a cat", num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    trace = tracker.trace()
    torch.testing.assert_close(trace.masked_norm(torch.ones(16, 16)), trace.norm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trace.masked_norm(torch.full((16, 16), 0.3)), trace.norm, rtol=1e-5, atol=1e-6)
    mask = torch.zeros(16, 16)
    mask[:4] = 1  # fraction f = 1/4
    direct = (trace.full * mask).flatten(2).norm(dim=-1) / 0.25
    torch.testing.assert_close(trace.masked_norm(mask), direct, rtol=1e-5, atol=1e-6)


def test_tracker_rejects_batches_without_cfg(sd_pipes):
    pipe = sd_pipes["sd1"]
    with pytest.raises(DifflabError, match="CFG-doubled"), NoiseTracker(pipe.unet, scheduler=pipe.scheduler):
        pipe("a cat", num_inference_steps=2, guidance_scale=1.0)
    with (
        pytest.raises(DifflabError, match="batch 4"),
        NoiseTracker(pipe.unet, scheduler=pipe.scheduler, batch_size=2),
    ):
        pipe("a cat", num_inference_steps=2, guidance_scale=2.0, num_images_per_prompt=3)
    with pytest.raises(DifflabError, match="keep"):
        NoiseTracker(pipe.unet, scheduler=pipe.scheduler, keep=("bogus",))


def test_stop_after_interrupts_and_counter_pauses(sd_pipes):
    pipe = sd_pipes["sd1"]
    with NoiseTracker(pipe.unet, scheduler=pipe.scheduler) as tracker:
        pipe("a cat", num_inference_steps=5, guidance_scale=2.0, callback_on_step_end=stop_after(1))
        assert tracker.trace().steps == [0]
        tracker.reset()
        with tracker.paused():
            pipe("a cat", num_inference_steps=2, guidance_scale=2.0)
        assert tracker.trace().steps == []
    with pytest.raises(DifflabError):
        stop_after(0)
