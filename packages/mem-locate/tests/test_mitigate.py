import pytest
import torch

from mem_locate.errors import MemLocateError
from mem_locate.localize import draw_latents
from mem_locate.mitigate import (
    MitigationConfig,
    auto_target_loss,
    mitigate,
    optimize_prompt_embedding,
    reanchored_cfg,
    semantic_search,
    step0_loss,
)


@pytest.fixture(scope="module")
def setup(pipes):
    pipe = pipes["sd1"]
    pipe.scheduler.set_timesteps(3)
    latents, _ = draw_latents(pipe, [0], 2)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "")
    return pipe, latents, cond, uncond


def test_pe_lowers_loss_and_keeps_bos(setup):
    pipe, latents, cond, uncond = setup
    res = optimize_prompt_embedding(pipe, cond, uncond, latents, lr=0.05, iterations=3, target_loss=0.0)
    assert res.iterations == 3 and res.triggered
    assert res.loss_after < res.loss_before
    assert torch.equal(res.prompt_embeds[:, 0], cond[:, 0])
    assert not torch.equal(res.prompt_embeds[:, 1:], cond[:, 1:])
    none = optimize_prompt_embedding(pipe, cond, uncond, latents, target_loss=float("inf"))
    assert none.iterations == 0 and not none.triggered and torch.equal(none.prompt_embeds, cond)


def test_all_ones_mask_reproduces_unmasked(setup):
    pipe, latents, cond, uncond = setup
    a = optimize_prompt_embedding(pipe, cond, uncond, latents, lr=0.5, iterations=2, target_loss=0.0)
    b = optimize_prompt_embedding(
        pipe, cond, uncond, latents, lr=0.5, iterations=2, target_loss=0.0, mask=torch.ones(2, 16, 16)
    )
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    torch.testing.assert_close(a.prompt_embeds, b.prompt_embeds, atol=1e-5, rtol=1e-5)


def test_step0_loss_is_the_first_tracked_magnitude(setup):
    from mem_locate.detect import AuditConfig, Auditor

    pipe, latents, cond, uncond = setup
    with torch.no_grad():
        _, per = step0_loss(pipe, latents, cond, uncond)
    scores, _ = Auditor(pipe, AuditConfig(num_inference_steps=3, num_images_per_prompt=2)).score_prompts(
        ["a photo of a cat"], [0]
    )
    torch.testing.assert_close(per, torch.tensor(scores[0].wen)[:, 0], rtol=1e-5, atol=1e-6)


def test_reanchored_cfg():
    torch.manual_seed(0)
    u, star, p = torch.randn(3, 2, 4, 4, 4).unbind(0)
    s, l_pr, tau = 7.5, 3.0, 5.0
    cfg = u + s * (star - u)
    torch.testing.assert_close(reanchored_cfg(u, star, p, scale=s, mag=torch.full((2,), l_pr)), cfg)
    torch.testing.assert_close(
        reanchored_cfg(u, star, p, scale=s, mag=torch.full((2,), tau)), p + s * (star - p)
    )
    torch.testing.assert_close(
        reanchored_cfg(u, star, p, scale=s, mag=torch.full((2,), 9.0)), p + s * (star - p)
    )
    mag = torch.tensor([3.5, 4.2])
    scaler = (s * l_pr - tau) / (s - 1)  # the official code's form
    s_pr = (s * (mag - scaler) / (tau - scaler)).reshape(-1, 1, 1, 1)
    official = p + s_pr * (star - p) + (s - s_pr) * (star - u)
    torch.testing.assert_close(reanchored_cfg(u, star, p, scale=s, mag=mag), official, rtol=1e-5, atol=1e-5)


def test_semantic_search_picks_first_passing_else_argmin(setup):
    pipe, latents, _, _ = setup
    cands = ["a photo of a cat", "a dog", "a red square", "blue"]
    _, losses, _ = semantic_search(pipe, cands, latents, target=-1.0)
    order = sorted(range(4), key=losses.__getitem__)
    idx, _, trig = semantic_search(pipe, cands, latents, target=-1.0)
    assert idx == order[0] and trig
    # a target between the 2nd and 3rd smallest: the first candidate (in order) under it wins
    target = (losses[order[1]] + losses[order[2]]) / 2
    idx, _, _ = semantic_search(pipe, cands, latents, target=target)
    assert idx == min(order[:2])
    idx, _, trig = semantic_search(pipe, cands, latents, target=float("inf"))
    assert idx == 0 and not trig


@pytest.mark.parametrize("method", ["be-pe", "be-prss"])
def test_mitigate_runs(pipes, method):
    cfg = MitigationConfig(
        num_inference_steps=2,
        guidance_scale=3.0,
        iterations=2,
        target_loss=0.0,
        ss_target=0.0,
        pr_target=0.0,
        pr_tau=1e-3,
    )
    res = mitigate(pipes["sd1"], "a photo of a cat", method=method, config=cfg, paraphrases=["a dog"])
    assert res.images.shape == (1, 3, 32, 32) and res.triggered
    assert res.mask is not None and res.mask.shape == (1, 16, 16)


def test_auto_target_loss_is_the_quantile_of_clean_step0_magnitudes(setup, tmp_path):
    import numpy as np

    from mem_locate.data import PromptRecord
    from mem_locate.detect import AuditConfig, Auditor

    pipe = setup[0]
    recs = [
        PromptRecord(key="a", caption="a photo of a cat", label=0),
        PromptRecord(key="b", caption="a red bicycle", label=0),
        PromptRecord(key="c", caption="a painting", label=1),
    ]
    cfg = AuditConfig(num_inference_steps=3, num_images_per_prompt=2, methods=("be", "wen"))
    records = Auditor(pipe, cfg).run(recs, tmp_path).records
    clean = [r for r in records if r["label"] == 0]
    for masked, name in ((True, "be"), (False, "wen")):
        step0 = [curve[0] for r in clean for curve in r[name]]
        expected = float(np.quantile(np.asarray(step0, dtype=np.float64), 0.95))
        assert auto_target_loss(records, masked=masked) == pytest.approx(expected, rel=1e-12)
    assert auto_target_loss(records, quantile=1.0) == pytest.approx(max(c[0] for r in clean for c in r["be"]))
    with pytest.raises(MemLocateError, match="non-memorized"):
        auto_target_loss([r for r in records if r["label"] == 1])
    with pytest.raises(MemLocateError, match="quantile"):
        auto_target_loss(records, quantile=0)
