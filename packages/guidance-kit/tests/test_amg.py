import math

import pytest
import torch

from difflab_core.tracking import DenoiserCall
from guidance_kit import (
    AMGConfig,
    AntiMemorizationGuidance,
    GuidanceKitError,
    NeighbourIndex,
    amg,
    generate_with_amg,
)
from guidance_kit.amg import Detection

OFF = AMGConfig(terms=frozenset())
DETECT_ONLY = AMGConfig(lambda_floor=math.inf)


def _random_index(size, n=24, seed=0):
    return NeighbourIndex.build(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def _sd(pipe, seed=0, n=6):
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    return pipe(
        ["a red cat", "a dog"], num_inference_steps=n, guidance_scale=7.5, generator=gens, output_type="pt"
    ).images


def test_off_and_never_firing_are_bit_identical_on_sd(tiny_sd):
    index = _random_index(32)
    plain = _sd(tiny_sd)
    for config in (OFF, DETECT_ONLY):
        with amg(tiny_sd, index, config=config) as engine:
            assert torch.equal(_sd(tiny_sd), plain)
        assert len(engine.records) == 12 and not any(r.fired for r in engine.records)
    assert all(r.sigma1 is not None for r in engine.records)
    assert not tiny_sd.unet._forward_hooks and not tiny_sd.unet._forward_pre_hooks


def test_off_and_never_firing_are_bit_identical_on_ddim(ddim_pipe):
    index = _random_index(16)

    def run():
        return ddim_pipe(
            batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="np"
        ).images

    plain = run()
    for config in (OFF, DETECT_ONLY):
        with amg(ddim_pipe, index, config=config) as engine:
            assert (run() == plain).all()
        assert len(engine.records) == 10 and not any(r.fired for r in engine.records)
    assert all(r.sigma1 is not None for r in engine.records)  # detection ran on every step


class ConstantSimilarity:
    """A stub detector: σ = the given value per call (differentiable, zero gradient)."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, images, neighbours=0):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        sigma = torch.full((images.shape[0],), value) + 0 * images.sum()
        rows = torch.zeros(images.shape[0], max(neighbours, 1), dtype=torch.long)
        return Detection(sigma, rows[:, 0], rows if neighbours else None)


class StubCaptions:
    def dup_caption(self, rows, min_count, mode):
        return ["a duplicated caption"] * len(rows)


class StubHook:
    def __init__(self):
        self.calls = 0

    def forward_bypass(self, *args, **kwargs):
        self.calls += 1
        return torch.zeros_like(args[0])


def _call(j, t=500, batch=1, seed=0, hook=None):
    from diffusers import DDIMScheduler

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=gen)
    out = torch.randn(2 * batch, 3, 8, 8, generator=gen)
    sample = torch.cat([x, x])
    return DenoiserCall(
        j,
        50,
        torch.tensor(t),
        sample,
        (sample, torch.tensor(t)),
        {"encoder_hidden_states": torch.zeros(2 * batch, 2, 4)},
        DDIMScheduler(),
        True,
        hook,
        out,
    )


def test_despecification_scale():
    engine = AntiMemorizationGuidance(AMGConfig(terms={"spe"}), None, similarity=ConstantSimilarity([0.4]))
    call = _call(0)
    result = engine.edit(call, 7.5)
    u, c = call.output.chunk(2)
    u1, c1 = result.chunk(2)
    assert torch.equal(c1, c)
    torch.testing.assert_close(u1 + 7.5 * (c1 - u1), u + (7.5 - 5.2) * (c - u), rtol=1e-5, atol=1e-5)
    assert engine.records[0].fired_spe and engine.records[0].s1 == pytest.approx(5.2)


def test_dup_hold_lasts_ten_steps():
    hook = StubHook()
    engine = AntiMemorizationGuidance(
        AMGConfig(terms={"dup"}),
        None,
        captions=StubCaptions(),
        similarity=ConstantSimilarity([0.4] + [0.2] * 20),
        encode_prompt=lambda text: torch.ones(1, 2, 4),
    )
    for j in range(15):
        engine.edit(_call(j, t=900 - 40 * j, hook=hook), 7.5)
    assert [r.fired_dup for r in engine.records] == [True] * 10 + [False] * 5
    assert hook.calls == 10 and engine.records[3].dup_caption == "a duplicated caption"


def test_dissimilarity_scale_and_lambda():
    config = AMGConfig(terms={"sim"}, sim_scale=100.0)
    engine = AntiMemorizationGuidance(config, None, similarity=ConstantSimilarity([0.4]))
    engine.edit(_call(0, t=500), 7.5)
    assert engine.records[0].c3 == pytest.approx(100 * 0.1 * 18.94, rel=1e-3)
    for t, lam in ((981, 0.3007), (500, 0.3082), (100, 0.3607), (1, 0.3995)):
        assert config.lambda_t(t) == pytest.approx(lam, abs=1e-4)
    assert config.sim_exponent(0) == pytest.approx(358.7, rel=1e-3)


def test_official_gating_fires_despecification_whenever_sigma_is_positive():
    for gating, fired in (("paper", False), ("official", True)):
        engine = AntiMemorizationGuidance(
            AMGConfig(terms={"spe"}, gating=gating), None, similarity=ConstantSimilarity([0.1])
        )
        assert (engine.edit(_call(0), 7.5) is not None) == fired
        assert engine.records[0].fired_spe == fired


def test_dissimilarity_lowers_sigma_against_an_index_holding_x0():
    from diffusers import DDIMScheduler

    from guidance_kit.noise import NoiseLevels

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 8, 8, generator=gen)
    index = NeighbourIndex.build(torch.cat([target, torch.rand(30, 3, 8, 8, generator=gen)]))
    config = AMGConfig(terms={"sim"}, sim_scale=1000.0, pixel_k=10)
    engine = AntiMemorizationGuidance(config, index)
    sched = DDIMScheduler()
    t = 400
    levels = NoiseLevels(float(sched.alphas_cumprod[t]), "epsilon")
    x0 = (target * 2 - 1) + 0.02 * torch.randn(1, 3, 8, 8, generator=gen)
    eps = torch.randn(1, 3, 8, 8, generator=gen)
    x_t = levels.a * x0 + levels.s * eps
    call = DenoiserCall(5, 50, torch.tensor(t), x_t, (x_t, t), {}, sched, False, None, eps)
    new = engine.edit(call, 1.0)
    before = engine.similarity(((levels.x0(eps, x_t) + 1) / 2).clamp(0, 1)).sigma
    after = engine.similarity(((levels.x0(new, x_t) + 1) / 2).clamp(0, 1)).sigma
    assert engine.records[0].fired_sim and float(after) < float(before)


def test_testbed_memorization_is_halved(testbed, testbed_index, copied):
    index, captions = testbed_index
    prompts, seeds = testbed.prompts("global"), (0, 1)
    kw = {"num_inference_steps": 20, "guidance_scale": testbed.audit.guidance_scale}
    before = generate_with_amg(testbed.pipe, prompts, index=index, seeds=seeds, config=OFF, **kw)
    after = generate_with_amg(testbed.pipe, prompts, index=index, seeds=seeds, captions=captions, **kw)
    frac_before = copied(before.images, testbed.train_images).float().mean()
    frac_after = copied(after.images, testbed.train_images).float().mean()
    assert frac_before >= 0.25 and frac_after <= 0.5 * frac_before
    # the images stay images: same overall contrast within 10%
    assert abs(float(after.images.std() / before.images.std()) - 1) < 0.1
    assert after.summary["samples_fired"] == len(prompts) * len(seeds)


def test_clean_prompts_keep_their_quality(testbed, testbed_index):
    from difflab_core.testbed.memorization_data import COLOURS

    index, captions = testbed_index
    prompts = testbed.prompts("none")[:6]
    kw = {"num_inference_steps": 20, "guidance_scale": testbed.audit.guidance_scale}
    palette = torch.tensor(list(COLOURS.values()))
    names = list(COLOURS)

    def background_right(images):
        border = torch.cat([images[:, :, :2].flatten(2), images[:, :, -2:].flatten(2)], dim=2).mean(2)
        guess = [names[int(i)] for i in torch.cdist(border, palette).argmin(1)]
        return sum(g == p.split(" on ")[-1] for g, p in zip(guess, prompts, strict=True)) / len(prompts)

    before = generate_with_amg(testbed.pipe, prompts, index=index, config=OFF, **kw).images
    after = generate_with_amg(testbed.pipe, prompts, index=index, captions=captions, **kw).images
    assert background_right(after) >= background_right(before) - 0.1


def test_class_conditional_digits_memorization_drops_with_dissimilarity_only():
    from difflab_core.testbed import digits_ddpm_memorized
    from guidance_kit import sample

    mem = digits_ddpm_memorized()
    index = NeighbourIndex.build(mem.train_images)
    labels = mem.planted_labels.repeat(4)
    kw = dict(num_inference_steps=20, class_labels=labels, guidance_scale=3.0, null_class=mem.null_class)

    def run(config):
        with amg(mem.unet, index, config=config, scheduler=mem.scheduler, guidance_scale=3.0) as engine:
            x = sample(mem.unet, mem.scheduler, generator=torch.Generator().manual_seed(0), **kw)
        return mem.is_memorized((x + 1) / 2).float().mean(), engine

    before, _ = run(OFF)
    after, engine = run(AMGConfig(terms={"sim"}))
    assert before > 0 and after < before
    assert any(r.fired_sim for r in engine.records) and not any(r.fired_spe for r in engine.records)


def test_bad_amg_inputs(tiny_sd):
    with pytest.raises(GuidanceKitError, match="terms"):
        AMGConfig(terms={"bogus"})
    with pytest.raises(GuidanceKitError, match="gating"):
        AMGConfig(gating="sometimes")
    with (
        pytest.raises(GuidanceKitError, match="sscd_path"),
        amg(tiny_sd, _random_index(32), config=AMGConfig(backend="sscd")),
    ):
        pass
    with pytest.raises(GuidanceKitError, match="sscd_path"):
        NeighbourIndex.build(torch.rand(2, 3, 8, 8), backends=("sscd",), sscd_path="/nonexistent/sscd.pt")
