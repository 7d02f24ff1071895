"""A plain unconditional sampling loop (`sample`) used by the benchmark and the CLI.

Equivalent to `DDPMPipeline.__call__` without the PIL conversion: x_T ~ N(0, I), then ``scheduler.step`` over
``scheduler.timesteps``. Runs in batches so memory stays bounded.
"""

from __future__ import annotations

import torch

from .errors import AdamSamplerError

__all__ = ["sample"]


@torch.no_grad()
def sample(
    unet,
    scheduler,
    n: int,
    num_inference_steps: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    class_labels: torch.Tensor | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """``n`` samples ``[n, C, H, W]`` in the model's space ([−1, 1] for pixel models), float32 on the CPU.

    ``scheduler`` is reset with ``set_timesteps`` before every batch; the initial noise is drawn on the CPU
    from ``generator`` (so results do not depend on the device). ``eta`` is passed to ``step`` when given.
    """
    if n < 1 or num_inference_steps < 1 or batch_size < 1:
        raise AdamSamplerError(
            f"sample: n={n}, num_inference_steps={num_inference_steps}, batch_size={batch_size} must be >= 1"
        )
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    hw = (size, size) if isinstance(size, int) else size
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    noise = torch.randn(n, cfg.in_channels, *hw, generator=generator)
    step_kwargs = {} if eta is None else {"eta": eta}
    outs = []
    for start in range(0, n, batch_size):
        x = noise[start : start + batch_size].to(device, dtype)
        labels = None if class_labels is None else class_labels[start : start + batch_size].to(device)
        scheduler.set_timesteps(num_inference_steps)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            eps = unet(model_input, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        outs.append(x.float().cpu())
    return torch.cat(outs)
