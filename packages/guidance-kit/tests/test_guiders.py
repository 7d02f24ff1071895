import pytest
import torch

from guidance_kit import compress_schedule
from guidance_kit.guiders import HAS_GUIDERS

pytestmark = pytest.mark.skipif(not HAS_GUIDERS, reason="installed diffusers has no diffusers.guiders")


def _at(guider, j, n=50):
    guider.set_state(step=j, num_inference_steps=n, timestep=torch.tensor(0))
    return guider


def test_num_conditions_follows_the_schedule():
    from guidance_kit.guiders import CompressGuidance

    guider = CompressGuidance(guidance_scale=5.0)
    schedule = compress_schedule(50, 5, 2, weight_mode="none")
    assert [_at(guider, j).num_conditions for j in range(50)] == [
        2 if schedule.is_guided(j) else 1 for j in range(50)
    ]


@pytest.mark.parametrize("original", [False, True])
def test_forward_algebra(original):
    from guidance_kit.guiders import CompressGuidance

    gen = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    g = 5.0
    guider = CompressGuidance(guidance_scale=g, weight_mode="compress", use_original_formulation=original)
    w = compress_schedule(50, 5, 2).weight(8)
    pred = _at(guider, 8).forward(c, u).pred
    expected = c + w * (g if original else g - 1) * (c - u)
    torch.testing.assert_close(pred, expected)
    assert torch.equal(_at(guider, 9).forward(c, None).pred, c)  # unguided step: conditional only


def test_save_load_round_trip(tmp_path):
    from guidance_kit.guiders import CompressGuidance

    guider = CompressGuidance(guidance_scale=4.0, skip=10, k=3.0, weight_mode="compress")
    guider.save_pretrained(tmp_path)
    loaded = CompressGuidance.from_pretrained(tmp_path)
    assert (loaded.skip, loaded.k, loaded.weight_mode, loaded.guidance_scale) == (10, 3.0, "compress", 4.0)
    assert [_at(loaded, j).num_conditions for j in range(50)] == [
        _at(guider, j).num_conditions for j in range(50)
    ]


def test_start_stop_still_apply():
    from guidance_kit.guiders import CompressGuidance

    guider = CompressGuidance(guidance_scale=5.0, start=0.1)
    assert _at(guider, 0).num_conditions == 1  # guided by the schedule but before start
    assert _at(guider, 8).num_conditions == 2


def test_interval_guider():
    from diffusers import EulerDiscreteScheduler

    from guidance_kit import interval_schedule, step_sigmas
    from guidance_kit.guiders import IntervalGuidance

    sched = EulerDiscreteScheduler()
    guider = IntervalGuidance(sigma_lo=0.5, sigma_hi=3.0).bind_scheduler(sched)
    expected = interval_schedule(step_sigmas(sched, 20), 0.5, 3.0)
    assert [_at(guider, j, 20).num_conditions == 2 for j in range(20)] == list(expected.guided)
