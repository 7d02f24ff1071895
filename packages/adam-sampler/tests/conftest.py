"""Shared fixtures: tiny UNets (8×8, 1 and 3 channels) and a sampling loop that records what it did."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def unet3():
    from difflab_core.tiny import tiny_unet_2d

    return tiny_unet_2d(8, 3, seed=0).requires_grad_(False)


@pytest.fixture(scope="session")
def unet1():
    from difflab_core.tiny import tiny_unet_2d

    return tiny_unet_2d(8, 1, seed=1).requires_grad_(False)


@pytest.fixture(scope="session")
def run_loop():
    """``run_loop(scheduler, unet, steps, eta=0, seed=0, batch=2, noises=None) -> (x_final, trace)``.

    ``trace`` is a list of (x_t, model_output, t, x_s) per step. With ``noises`` (one tensor per step) they are
    passed as ``variance_noise``; otherwise one generator seeded with ``seed`` draws x_T and every z.
    """

    @torch.no_grad()
    def run(scheduler, unet, steps, eta=0.0, seed=0, batch=2, noises=None, set_steps=True):
        if set_steps:
            scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        c, s = unet.config.in_channels, unet.config.sample_size
        x = torch.randn(batch, c, s, s, generator=g)
        trace = []
        for i, t in enumerate(scheduler.timesteps):
            out = unet(x, t).sample
            kw = {"variance_noise": noises[i]} if noises is not None else {"generator": g}
            x_new = scheduler.step(out, t, x, eta=eta, **kw).prev_sample
            trace.append((x, out, int(t), x_new))
            x = x_new
        return x, trace

    return run
