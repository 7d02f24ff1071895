import pytest
import torch

from difflab_core.errors import DifflabError
from difflab_core.tracking import DenoiserCall, DenoiserEditHook


class Recorder:
    """Keeps every call; optionally asks for conditional-only forwards or replaces the output."""

    def __init__(self, cond_only=lambda call: False, replace=None):
        self.calls: list[DenoiserCall] = []
        self.cond_only = cond_only
        self.replace = replace

    def before(self, call):
        return self.cond_only(call)

    def after(self, call):
        self.calls.append(call)
        return None if self.replace is None else self.replace(call)


@pytest.fixture(scope="module")
def unet():
    from difflab_core.tiny import tiny_unet_2d

    return tiny_unet_2d(sample_size=8, in_channels=3, num_class_embeds=3)


def _sd(pipe, prompts, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return pipe(
        prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gen, output_type="pt"
    ).images


def test_pass_through_is_bit_identical_and_counts_steps(sd_pipes):
    pipe = sd_pipes["sd1"]
    plain = _sd(pipe, ["a cat", "a dog"])
    rec = Recorder()
    with DenoiserEditHook(pipe.unet, rec, scheduler=pipe.scheduler, cfg=True) as hook:
        hooked = _sd(pipe, ["a cat", "a dog"])
        assert [c.j for c in rec.calls] == [0, 1, 2] and {c.n for c in rec.calls} == {3}
        assert hook.stats["calls"] == 3 and hook.stats["batch_sizes"] == [4, 4, 4]
        _sd(pipe, ["a cat", "a dog"])  # a new pipeline call is a new run
        assert [c.j for c in rec.calls[3:]] == [0, 1, 2]
    assert torch.equal(plain, hooked)
    assert rec.calls[0].halves is not None and rec.calls[0].halves[0].shape[0] == 2
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_conditional_only_forward_equals_a_separate_conditional_call(unet):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 2, 0, 1])  # [null; y]
    rec = Recorder(cond_only=lambda call: True)
    with DenoiserEditHook(unet, rec, cfg=True) as hook:
        out = unet(torch.cat([x, x]), torch.tensor([10, 10]), class_labels=labels).sample
    direct = unet(x, torch.tensor([10]), class_labels=labels[2:]).sample
    assert hook.stats["batch_sizes"] == [2] and hook.stats["cond_only_calls"] == 1
    assert out.shape[0] == 4 and rec.calls[0].cond_only
    torch.testing.assert_close(out[:2], direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2:], direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("return_dict", [True, False])
def test_replaced_output_keeps_the_output_type(unet, return_dict):
    x = torch.randn(1, 3, 8, 8)
    rec = Recorder(replace=lambda call: torch.full_like(call.output, 0.5))
    with DenoiserEditHook(unet, rec):
        out = unet(x, 5, class_labels=torch.tensor([1]), return_dict=return_dict)
    pred = out.sample if return_dict else out[0]
    assert torch.equal(pred, torch.full_like(x, 0.5))
    assert isinstance(out, tuple) != return_dict


def test_extra_forward_bypasses_the_handler(unet):
    x = torch.randn(1, 3, 8, 8)
    extra = {}

    def handler(call):
        extra["other"] = call.forward(class_labels=torch.tensor([0]))
        return None

    with DenoiserEditHook(unet, handler) as hook:
        unet(x, 5, class_labels=torch.tensor([1]))
    assert hook.stats["calls"] == 1 and hook.stats["extra_forwards"] == 1
    torch.testing.assert_close(extra["other"], unet(x, 5, class_labels=torch.tensor([0])).sample)


def test_n_counts_from_the_first_timestep_used(unet):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler()
    sched.set_timesteps(10)
    rec = Recorder()
    with DenoiserEditHook(unet, rec, scheduler=sched):
        for t in sched.timesteps[4:]:  # img2img with strength 0.6 starts at position 4
            unet(torch.randn(1, 3, 8, 8), t, class_labels=torch.tensor([0]))
    assert [c.j for c in rec.calls] == list(range(6)) and {c.n for c in rec.calls} == {6}
    assert rec.calls[2].t == float(sched.timesteps[6])


def test_hooks_are_removed_on_error(unet):
    def broken(call):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), DenoiserEditHook(unet, broken):
        unet(torch.randn(1, 3, 8, 8), 5, class_labels=torch.tensor([0]))
    assert not unet._forward_hooks and not unet._forward_pre_hooks


def test_conditional_only_needs_a_cfg_batch(unet):
    rec = Recorder(cond_only=lambda call: True)
    with pytest.raises(DifflabError, match="CFG batch"), DenoiserEditHook(unet, rec, cfg=False):
        unet(torch.randn(2, 3, 8, 8), 5, class_labels=torch.tensor([0, 1]))
    with pytest.raises(DifflabError, match=r"nn\.Module"):
        DenoiserEditHook(lambda x: x, rec)
