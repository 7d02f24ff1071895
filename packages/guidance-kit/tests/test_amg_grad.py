"""`grad="through_unet"`: G_sim's gradient through the denoiser, against autograd and finite differences."""

import pytest
import torch
from diffusers import DDIMScheduler

from difflab_core.tiny import sd_scheduler_config, tiny_unet_2d, tiny_unet_2d_condition
from difflab_core.tracking import DenoiserCall, DenoiserEditHook
from guidance_kit import AMGConfig, AntiMemorizationGuidance, GuidanceKitError
from guidance_kit.amg import Detection
from guidance_kit.noise import NoiseLevels

T = 500
G = 7.5


class SmoothSimilarity:
    """σ = base + 0.02·sin(⟨images, w⟩): smooth and never flat, so finite differences apply."""

    def __init__(self, shape, base=0.34, seed=0):
        self.w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.w /= self.w.norm()
        self.base = base

    def __call__(self, images, neighbours=0):
        sigma = self.base + 0.02 * torch.sin(images.double().flatten(1) @ self.w.flatten())
        rows = torch.zeros(images.shape[0], max(neighbours, 1), dtype=torch.long)
        return Detection(sigma, rows[:, 0], rows if neighbours else None)


class StubCaptions:
    def dup_caption(self, rows, min_count, mode):
        return ["a duplicated caption"] * len(rows)


def _decode(x0):
    return (x0 + 1) / 2


def _directional_derivative(f, x, v, h=1e-4):
    return float((f(x + h * v) - f(x - h * v)).detach() / (2 * h))


def _check_gradient(f, x, grad, seed=1):
    """``grad`` equals autograd of ``f`` at ``x``, which matches central finite differences."""
    xr = x.detach().clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(f(xr), xr)
    torch.testing.assert_close(grad.double(), reference, rtol=1e-4, atol=1e-7)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(2):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        assert float((reference * v).sum()) == pytest.approx(_directional_derivative(f, x, v), rel=1e-5)
    return reference


def test_through_unet_gradient_with_cfg_and_all_terms_matches_autograd_and_finite_differences():
    unet = tiny_unet_2d_condition("sd1").double()
    sched = DDIMScheduler(**sd_scheduler_config())
    levels = NoiseLevels(float(sched.alphas_cumprod[T]), "epsilon")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen, dtype=torch.float64)
    ctx_u, ctx_c, ctx_n = torch.randn(3, 1, 4, 32, generator=gen, dtype=torch.float64).unbind(0)
    t = torch.tensor(T)

    def eps(x, ctx):
        return unet(x, t, encoder_hidden_states=ctx).sample

    sample = torch.cat([x, x])
    kwargs = {"encoder_hidden_states": torch.cat([ctx_u, ctx_c])}
    with torch.no_grad():
        out = unet(sample, t, **kwargs).sample
    hook = DenoiserEditHook(unet, lambda call: None)
    call = DenoiserCall(0, 50, t, sample, (sample, t), kwargs, sched, True, hook, out)
    similarity = SmoothSimilarity((1, 4, 16, 16))
    engine = AntiMemorizationGuidance(
        AMGConfig(grad="through_unet", sim_scale=1000.0),
        None,
        captions=StubCaptions(),
        similarity=similarity,
        decoder=_decode,
        encode_prompt=lambda text: ctx_n,
    )
    result = engine.edit(call, G)
    record = engine.records[0]
    assert record.fired_spe and record.fired_dup and record.fired_sim
    assert hook.stats["extra_forwards"] == 3  # ε_N, then u, c and ε_N again with autograd
    s1, s2 = record.s1, record.s2

    def guided(x):
        u, c, n = eps(x, ctx_u), eps(x, ctx_c), eps(x, ctx_n)
        return u + (G - s1) * (c - u) - s2 * (n - u)

    def sigma2(x):
        return similarity(_decode(levels.x0(guided(x), x))).sigma.sum()

    u_new, c_new = result.double().chunk(2)
    final = u_new + G * (c_new - u_new)
    with torch.no_grad():
        first = guided(x)
    assert record.sigma2 == pytest.approx(float(sigma2(x).detach()), rel=1e-6)
    grad = (final - first) / (levels.s * record.c3)
    reference = _check_gradient(sigma2, x, grad)
    # the literal gradient is not the official one (through x̂₀ only, ∇_{x_t} = ∇_{x̂₀}/√ᾱ_t)
    x0 = levels.x0(first, x).requires_grad_(True)
    (official,) = torch.autograd.grad(similarity(_decode(x0)).sigma.sum(), x0)
    assert (official / levels.a - reference).norm() > 0.05 * reference.norm()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_through_unet_gradient_without_cfg(prediction):
    unet = tiny_unet_2d(16, 3, seed=0).double()
    sched = DDIMScheduler(prediction_type=prediction)
    levels = NoiseLevels(float(sched.alphas_cumprod[T]), prediction)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor(T)
    with torch.no_grad():
        out = unet(x, t).sample
    hook = DenoiserEditHook(unet, lambda call: None)
    call = DenoiserCall(0, 50, t, x, (x, t), {}, sched, False, hook, out)
    similarity = SmoothSimilarity((1, 3, 16, 16))
    engine = AntiMemorizationGuidance(
        AMGConfig(grad="through_unet", terms={"sim"}, sim_scale=1000.0),
        None,
        similarity=similarity,
        decoder=_decode,
    )
    result = engine.edit(call, 1.0).double()
    c3 = torch.tensor([r.c3 for r in engine.records], dtype=torch.float64)[:, None, None, None]
    delta_eps = levels.to_eps(result, x) - levels.to_eps(out, x)
    grad = delta_eps / (levels.s * c3)
    for b in range(2):

        def sigma2(xb, b=b):
            return similarity(_decode(levels.x0(unet(xb, t).sample, xb))).sigma.sum()

        _check_gradient(sigma2, x[b : b + 1], grad[b : b + 1])


def test_paper_preset_selects_through_unet_and_default_stays_x0():
    assert AMGConfig().grad == "x0"
    paper = AMGConfig.paper()
    assert (paper.grad, paper.dup_mode) == ("through_unet", "nearest")
    assert AMGConfig.paper(grad="x0").grad == "x0"
    with pytest.raises(GuidanceKitError, match="grad="):
        AMGConfig(grad="through_vae")


def test_through_unet_runs_inside_a_stable_diffusion_call(tiny_sd):
    from guidance_kit import NeighbourIndex, amg

    index = NeighbourIndex.build(torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    captions = [f"caption {i % 2}" for i in range(24)]
    images = {}
    for grad in ("x0", "through_unet"):
        config = AMGConfig.paper(grad=grad, lambda_floor=-1.0, dup_min_count=2, pixel_k=10)
        with amg(tiny_sd, index, config=config, captions=captions) as engine:
            gens = [torch.Generator().manual_seed(0) for _ in range(2)]
            images[grad] = tiny_sd(
                ["a red cat", "a dog"],
                num_inference_steps=4,
                guidance_scale=G,
                generator=gens,
                output_type="pt",
            ).images
        assert all(r.fired_spe and r.fired_dup and r.fired_sim for r in engine.records)
    assert torch.isfinite(images["through_unet"]).all()
    assert not torch.equal(images["x0"], images["through_unet"])
