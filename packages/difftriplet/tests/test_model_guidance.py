"""The joint denoiser (§2.2), its sampler (§2.3) and association guidance (§2.4)."""

from __future__ import annotations

import pytest
import torch

from difflab_core.seqdiff import make_ddim_scheduler
from difftriplet.errors import DiffTripletError
from difftriplet.guidance import AssociationGuidance
from difftriplet.labels import TripletSpace
from difftriplet.model import DiffTripletModel
from difftriplet.predict import TripletRecognizer, build_model


def tiny_model(tiny_cfg, **overrides) -> DiffTripletModel:
    cfg = tiny_cfg.with_updates(model=overrides) if overrides else tiny_cfg
    return build_model(cfg).eval()


def test_parameter_count_of_the_reconstruction():
    model = DiffTripletModel(input_dim=1600)
    assert sum(p.numel() for p in model.parameters()) == 5_903_110
    assert sum(p.numel() for p in model.encoder.parameters()) == 880_259
    assert sum(p.numel() for p in model.decoder.parameters()) == 5_022_851
    assert model.encoder.cond_dim == 384


def test_timesteps_for_eight_steps():
    scheduler = make_ddim_scheduler()
    scheduler.set_timesteps(8)
    assert scheduler.timesteps.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]
    assert scheduler.previous_timestep(124) == -1


@pytest.mark.parametrize("mode", ["decoder", "encoder", "ensemble"])
def test_output_shapes(tiny_cfg, mode):
    model = tiny_model(tiny_cfg)
    probs = model.sample(torch.randn(32, 40), generator=torch.Generator().manual_seed(0), mode=mode)
    assert probs.shape == (131, 40) and probs.min() >= 0 and probs.max() <= 1
    batch = model.sample(torch.randn(2, 32, 40), generator=torch.Generator().manual_seed(0), mode=mode)
    assert batch.shape == (2, 131, 40)


def test_zero_condition_is_exactly_zero(tiny_cfg):
    model = tiny_model(tiny_cfg)
    seen = {}

    def record(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    model.decoder.conv_in.register_forward_hook(record)
    feats, t, u = torch.randn(1, 32, 30), torch.tensor([500]), torch.rand(1, 131, 30)
    model(feats, t, u, zero_condition=True)
    cond = seen["x"][:, : model.encoder.cond_dim]
    assert torch.equal(cond, torch.zeros_like(cond))
    assert torch.equal(seen["x"][:, model.encoder.cond_dim :], u)


def test_fixed_generator_is_deterministic(tiny_cfg):
    model = tiny_model(tiny_cfg)
    feats = torch.randn(32, 50)
    a = model.sample(feats, generator=torch.Generator().manual_seed(3))
    b = model.sample(feats, generator=torch.Generator().manual_seed(3))
    c = model.sample(feats, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_causal_outputs_ignore_the_future(tiny_cfg):
    model = tiny_model(tiny_cfg, causal=True)
    feats = torch.randn(1, 32, 60)
    changed = feats.clone()
    changed[..., 40:] = torch.randn(1, 32, 20)
    t, u = torch.tensor([300]), torch.rand(1, 131, 60)
    u_changed = u.clone()
    u_changed[..., 40:] = torch.rand(1, 131, 20)
    enc_a, dec_a = model(feats, t, u)
    enc_b, dec_b = model(changed, t, u_changed)
    assert torch.equal(enc_a[..., :40], enc_b[..., :40]) and torch.equal(dec_a[..., :40], dec_b[..., :40])
    assert not torch.equal(dec_a[..., 40:], dec_b[..., 40:])
    noncausal = tiny_model(tiny_cfg)
    assert not torch.equal(noncausal(feats, t, u)[1][..., :40], noncausal(changed, t, u_changed)[1][..., :40])


def test_causal_refuses_input_instance_norm(tiny_cfg):
    with pytest.raises(DiffTripletError, match="use_instance_norm"):
        tiny_cfg.with_updates(model={"causal": True, "use_instance_norm": True})


def joint(space, values: dict[int, float], frames: int = 1) -> torch.Tensor:
    p = torch.full((131, frames), 0.3)
    for channel, value in values.items():
        p[channel] = value
    return p


def test_guidance_hand_example(space):
    i0, v2, t0 = space.slices["i"].start, space.slices["v"].start + 2, space.slices["t"].start
    p = joint(space, {1: 0.8, i0: 0.5, v2: 0.5, t0: 0.5})
    assert AssociationGuidance(space, 1.0)(p)[1, 0].item() == pytest.approx(0.4)
    assert AssociationGuidance(space, 0.5)(p)[1, 0].item() == pytest.approx(0.6)
    assert AssociationGuidance(space, 1.0, ("i", "v", "t"))(p)[1, 0].item() == pytest.approx(0.1)


def test_guidance_identity_components_and_monotone(space):
    p = torch.rand(2, 131, 25)
    assert torch.equal(AssociationGuidance(space, 0.0)(p), p)
    for scale in (0.25, 0.5, 1.0):
        for components in (("i",), ("i", "v", "t")):
            guided = AssociationGuidance(space, scale, components)(p)
            assert torch.equal(guided[:, 100:], p[:, 100:])
            assert (guided[:, :100] <= p[:, :100]).all()
    index = torch.from_numpy(space.index_of("i"))
    expected = p[:, :100] * p[:, 100:106][:, index]
    assert torch.allclose(AssociationGuidance(space)(p)[:, :100], expected)


def test_guidance_needs_the_default_layout():
    other = TripletSpace.from_ivtmetrics(("ivt", "iv", "it"))
    with pytest.raises(DiffTripletError, match="layout"):
        AssociationGuidance(other, 1.0)
    assert AssociationGuidance(other, 0.0).scale == 0.0


def test_guidance_runs_at_every_step(tiny_cfg, space):
    model = tiny_model(tiny_cfg)
    guidance = AssociationGuidance(space)
    unguided = model.sample(torch.randn(32, 30), num_steps=8, generator=torch.Generator().manual_seed(0))
    guided = model.sample(
        torch.randn(32, 30), num_steps=8, generator=torch.Generator().manual_seed(0), guidance=guidance
    )
    assert guidance.calls == 8
    assert guided.shape == unguided.shape
    counting = AssociationGuidance(space)
    model.sample(
        torch.randn(32, 30), num_steps=3, generator=torch.Generator().manual_seed(0), guidance=counting
    )
    assert counting.calls == 3


def test_sample_rate_interleaves_offsets(tiny_cfg, space):
    cfg = tiny_cfg.with_updates(train={"sample_rate": 2})
    model = tiny_model(cfg)
    feats = torch.randn(32, 11)
    probs = torch.from_numpy(TripletRecognizer(model, cfg, "cpu").predict(feats.numpy(), seed=5))
    assert probs.shape == (11, 131)
    generator = torch.Generator().manual_seed(5)  # offsets 0 then 1 share one generator, in order
    even = model.sample(feats[:, 0::2], generator=generator, guidance=AssociationGuidance(space))
    odd = model.sample(feats[:, 1::2], generator=generator, guidance=AssociationGuidance(space))
    assert torch.equal(probs[0::2].T, even) and torch.equal(probs[1::2].T, odd)
