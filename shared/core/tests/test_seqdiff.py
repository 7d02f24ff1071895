"""difflab_core.seqdiff: layers against loop re-implementations, DDIM against a float64 re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab_core.data import class_features, segment_labels
from difflab_core.errors import DifflabError
from difflab_core.seqdiff import (
    MixedConvAttention,
    MixedStack,
    SequenceEncoder,
    TimeMLP,
    ddim_sample_x0,
    from_signal,
    make_ddim_scheduler,
    noisy_input,
    timestep_embedding,
    to_signal,
)

torch.set_num_threads(1)


def loop_attention(layer: MixedConvAttention, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Frame-by-frame windowed attention with the 1e-6 mask leak, as §2.1 describes it."""
    qk_in = h if cond is None else torch.cat([h, cond], 1)
    q, k, v = layer.att_linear_q(qk_in)[0], layer.att_linear_k(qk_in)[0], layer.att_linear_v(h)[0]
    d, length = q.shape
    half = (layer.kernel_size - 1) // 2
    offsets = range(-(layer.kernel_size - 1), 1) if layer.causal else range(-half, half + 1)
    out = torch.zeros_like(q)
    for t in range(length):
        scores, vals, masks = [], [], []
        for j in offsets:
            s = t + j * layer.dilation
            inside = 0 <= s < length
            key = k[:, s] if inside else torch.zeros(d)
            scores.append(float((q[:, t] @ key).detach()) / math.sqrt(d))
            vals.append(v[:, s] if inside else torch.zeros(d))
            masks.append(1.0 if inside else 0.0)
        logits = torch.tensor(scores) + torch.log(torch.tensor(masks) + 1e-6)
        weights = torch.softmax(logits, 0) * torch.tensor(masks)
        out[:, t] = sum(w * val for w, val in zip(weights, vals, strict=True))
    return out[None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cond_dim", [0, 3])
def test_attention_matches_loop(causal: bool, cond_dim: int) -> None:
    torch.manual_seed(0)
    layer = MixedConvAttention(4, 5, 2, 0.0, cond_dim=cond_dim, causal=causal).eval()
    h = torch.randn(1, 4, 11)
    cond = torch.randn(1, cond_dim, 11) if cond_dim else None
    torch.testing.assert_close(layer.attention(h, cond), loop_attention(layer, h, cond), atol=1e-5, rtol=1e-5)


def test_layer_is_residual_ffn_of_norm() -> None:
    torch.manual_seed(1)
    layer = MixedConvAttention(6, 3, 4, 0.0).eval()
    h = torch.randn(2, 6, 9)
    conv = torch.nn.functional.conv1d(
        h, layer.conv_block[0].weight, layer.conv_block[0].bias, padding=4, dilation=4
    )
    mixed = conv + layer.attention(h, None)
    normed = (mixed - mixed.mean(-1, keepdim=True)) / torch.sqrt(
        mixed.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(layer(h), h + layer.ffn_block(normed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_stack_receptive_field(causal: bool) -> None:
    """Frame 40 ignores frames beyond the half-width ((k-1)/2)(2^N - 1) = 14 (2x that when causal).

    InstanceNorm normalises over the whole sequence, so locality holds for the conv + attention
    branches only: the norms are swapped for identities here.
    """
    torch.manual_seed(2)
    stack = MixedStack(3, 8, 5, 0.1, causal=causal).eval()
    for layer in stack.layers:
        layer.norm = torch.nn.Identity()
    x = torch.randn(1, 8, 80)
    reach = 14 if not causal else 28
    y = x.clone()
    y[..., 40 + reach + 1 :] += 5.0
    if not causal:
        y[..., : 40 - reach] -= 5.0
    with torch.no_grad():
        assert torch.allclose(stack(x)[..., 40], stack(y)[..., 40], atol=1e-5)
        changed = x.clone()
        changed[..., 40 + (reach if not causal else 1)] += 5.0
        same = torch.allclose(stack(x)[..., 40], stack(changed)[..., 40], atol=1e-5)
    assert same is causal


def test_encoder_condition_layout() -> None:
    torch.manual_seed(3)
    enc = SequenceEncoder(5, 4, 8, 3, 3, 0.5, 0.5, 0.5, (-1, 1, 3, -2)).eval()
    assert enc.cond_dim == 5 + 8 + 8 + 3
    feats = torch.randn(1, 5, 17)
    logits, cond = enc(feats)
    assert logits.shape == (1, 3, 17) and cond.shape == (1, 24, 17)
    torch.testing.assert_close(cond[:, :5], feats)
    torch.testing.assert_close(cond[:, -3:], torch.softmax(logits, 1))
    with pytest.raises(DifflabError, match="feature_layer_indices"):
        SequenceEncoder(5, 4, 8, 3, 3, 0.5, 0.5, 0.5, (4,))
    with pytest.raises(DifflabError, match="odd"):
        MixedConvAttention(4, 4, 1, 0.0)


def test_timestep_embedding_formula() -> None:
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 512)
    k = torch.arange(256, dtype=torch.float64)
    freqs = torch.exp(-k * math.log(1e4) / 255)
    ref = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    torch.testing.assert_close(emb, ref.float(), atol=2e-4, rtol=0)
    mlp = TimeMLP(64)
    assert [name for name, _ in mlp.named_children()] == ["0", "1"]
    assert mlp(t).shape == (3, 64)


def test_signal_round_trip_and_noisy_input_range() -> None:
    y = torch.rand(2, 4, 9)
    torch.testing.assert_close(from_signal(to_signal(y, 0.5), 0.5), y)
    sched = make_ddim_scheduler()
    u = noisy_input(to_signal(y, 0.5), torch.tensor([0, 999]), torch.randn(2, 4, 9) * 10, sched, 0.5)
    assert u.min() >= 0 and u.max() <= 1


def official_list(steps: int) -> list[int]:
    """[code]'s expression, verbatim: float32 ``linspace`` truncated (at S=26 it gives 498, not 499)."""
    return list(reversed(torch.linspace(-1, 999, steps=steps + 1).int().tolist()))


def float64_alphas() -> list[float]:
    f = [math.cos(((t / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(1001)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(1000)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1 - b
        out.append(acc)
    return out


def test_timesteps_equal_official_list() -> None:
    sched = make_ddim_scheduler()
    for steps in range(1, 51):
        sched.set_timesteps(steps)
        expected = official_list(steps)
        assert sched.timesteps.tolist() == expected[:-1], steps
        assert [sched.previous_timestep(t) for t in sched.timesteps] == expected[1:], steps
    with pytest.raises(DifflabError):
        sched.set_timesteps(0)


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 8, 10, 20, 25, 50])
def test_divisors_equal_stock_trailing_ddim(steps: int) -> None:
    """For S dividing 1000 the list is exact, ``999 - 1000 i / S``, and equals diffusers' trailing DDIM."""
    from diffusers import DDIMScheduler

    stock = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", prediction_type="sample"
    )
    stock.set_timesteps(steps)
    sched = make_ddim_scheduler()
    sched.set_timesteps(steps)
    exact = [999 - 1000 * i // steps for i in range(steps)]
    assert sched.timesteps.tolist() == stock.timesteps.tolist() == exact


def test_schedule_is_float64_cosine() -> None:
    sched = make_ddim_scheduler()
    assert sched.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), float64_alphas(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [5, 7, 25])
def test_trajectory_matches_float64_reimplementation(steps: int) -> None:
    """Injected noise: each step equals §2.4's formulas evaluated in float64, within 1e-5."""
    alphas = float64_alphas()
    sched = make_ddim_scheduler()
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(1, 3, 6, generator=gen)
    ref = x.double()
    for t, t_next in zip(official_list(steps)[:-1], official_list(steps)[1:], strict=True):
        x0 = torch.rand(1, 3, 6, generator=gen) - 0.5
        z = torch.randn(1, 3, 6, generator=gen)
        x = sched.step(x0, t, x, eta=1.0, variance_noise=z).prev_sample
        a, a_next = alphas[t], (alphas[t_next] if t_next >= 0 else 1.0)
        eps = (ref - math.sqrt(a) * x0.double()) / math.sqrt(1 - a)
        sigma = math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        c = math.sqrt(max(1 - a_next - sigma**2, 0.0))
        ref = math.sqrt(a_next) * x0.double() + c * eps + sigma * z.double()
        torch.testing.assert_close(x.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, x0)  # the last step returns x̂0


def test_sampler_finite_for_every_step_count_and_deterministic() -> None:
    sched = make_ddim_scheduler()
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def predict(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        assert u.min() >= 0 and u.max() <= 1
        return torch.softmax(torch.einsum("ij,bjl->bil", weights, u) * 4, 1)

    for steps in range(1, 51):
        p = ddim_sample_x0(
            predict, (1, 3, 10), sched, steps, generator=torch.Generator().manual_seed(1), scale=0.5
        )
        assert torch.isfinite(p).all(), steps
    a = ddim_sample_x0(predict, (1, 3, 10), sched, 8, generator=torch.Generator().manual_seed(4), scale=0.5)
    b = ddim_sample_x0(predict, (1, 3, 10), sched, 8, generator=torch.Generator().manual_seed(4), scale=0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_prob_hook_sees_every_prediction() -> None:
    seen = []

    def hook(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return torch.full_like(p, 0.25)

    def predict(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.softmax(u, 1)

    out = ddim_sample_x0(
        predict, (1, 4, 5), make_ddim_scheduler(), 4, generator=torch.Generator(), prob_hook=hook
    )
    assert seen == [999, 749, 499, 249]
    torch.testing.assert_close(out, torch.full((1, 4, 5), 0.25))


def test_segment_labels_and_class_features() -> None:
    labels = segment_labels(300, 4, seed=0, min_len=8, max_len=25)
    assert labels.shape == (300,) and set(np.unique(labels)) <= {0, 1, 2, 3}
    change = np.flatnonzero(np.diff(labels)) + 1
    lengths = np.diff(np.r_[0, change, 300])
    assert (lengths[:-1] >= 8).all() and (lengths[:-1] <= 25).all() and lengths[-1] <= 25
    np.testing.assert_array_equal(labels, segment_labels(300, 4, seed=0, min_len=8, max_len=25))
    protos = np.eye(4, 6) * 3
    feats = class_features(labels, protos, seed=1, noise_std=0.8)
    assert feats.shape == (6, 300) and feats.dtype == np.float32
    resid = feats - protos[labels].T
    assert abs(resid.std() - 0.8) < 0.05
    with pytest.raises(DifflabError):
        class_features(labels + 4, protos)


def test_scheduler_config_round_trip() -> None:
    from difflab_core.seqdiff import SeqDDIMScheduler

    sched = make_ddim_scheduler()
    again = SeqDDIMScheduler.from_config(sched.config)
    assert again.alphas_cumprod.dtype == torch.float64
    assert torch.equal(again.alphas_cumprod, sched.alphas_cumprod)
    assert again.config.timestep_spacing == "trailing" and again.config.clip_sample is False
    with pytest.raises(DifflabError, match="cosine"):
        SeqDDIMScheduler(beta_schedule="linear")
