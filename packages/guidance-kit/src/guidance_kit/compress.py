"""Compress Guidance (arXiv 2408.11194) and the guidance-interval peer, inside users' own ``pipe(...)`` calls.

Each context manager installs a core `DenoiserEditHook` on the pipeline's denoiser and removes it on exit
(also on error). The schedule is built at the first call of each run, with n = the run's denoiser calls.

- `compress_cfg`: CFG only on guided steps; elsewhere the unconditional forward is skipped.
- `classifier_guidance`: a noisy classifier's gradient on guided steps only, weighted by w(j).
- `interval_cfg`: CFG only while σ_j ∈ [σ_lo, σ_hi] (Kynkäänniemi et al., 2024).
- `sample`: the reference DDIM/DDPM loop for `UNet2DModel` (unconditional, class-conditional, or CFG).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from difflab_core.tracking import DenoiserCall, DenoiserEditHook

from .denoiser import GuidanceRun, resolve_denoiser
from .errors import GuidanceKitError
from .noise import NoiseLevels, alpha_bar, mean_shift_factor, prediction_type
from .schedules import StepSchedule, check_compress_args, compress_schedule, interval_schedule, sigmas_at

__all__ = [
    "COMPRESS_FORMS",
    "classifier_guidance",
    "compress_cfg",
    "increment_uncond",
    "interval_cfg",
    "sample",
]

COMPRESS_FORMS = ("increment", "edm2")
ScheduleFactory = Callable[[DenoiserCall], StepSchedule]


def increment_uncond(
    u: torch.Tensor, c: torch.Tensor, w: float, g: float, form: str = "increment"
) -> torch.Tensor:
    """u′ such that the pipeline's own u′ + g(c − u′) yields the weighted guided output.

    ``"increment"``: c + w(g−1)(c−u), from u′ = c − w(c−u). ``"edm2"``: u + g·w(c−u), from
    u′ = c − a(c−u) with a = (g·w − 1)/(g − 1).
    """
    if form == "increment":
        a = w
    elif form == "edm2":
        if g == 1:
            raise GuidanceKitError("compress_form='edm2' needs guidance_scale ≠ 1")
        a = (g * w - 1) / (g - 1)
    else:
        raise GuidanceKitError(f"compress_form={form!r}: use one of {COMPRESS_FORMS}")
    return c - a * (c - u)


class _Scheduled:
    """Shared part of the handlers: build the schedule at each run's first call and count calls."""

    def __init__(self, run: GuidanceRun, factory: ScheduleFactory, fixed: StepSchedule | None) -> None:
        self.run = run
        self.factory = factory
        self.fixed = fixed
        self.schedule: StepSchedule | None = None

    def current(self, call: DenoiserCall) -> StepSchedule:
        if call.j == 0 or self.schedule is None:
            if self.fixed is not None:
                self.schedule = self.fixed
                if call.n is not None and call.n != self.fixed.n:
                    self.run.stats["schedule_mismatch"] = True
            else:
                if call.n is None:
                    raise GuidanceKitError(
                        "the number of steps is unknown: pass a scheduler (or a pipeline), or schedule="
                    )
                self.schedule = self.factory(call)
            self.run.step(call, self.schedule)
        else:
            self.run.step(call, self.schedule)
        return self.schedule

    def guided(self, call: DenoiserCall) -> tuple[bool, float]:
        schedule = self.current(call)
        if call.j >= schedule.n:
            self.run.stats["schedule_mismatch"] = True
            return True, 1.0
        return schedule.is_guided(call.j), schedule.weight(call.j)


class _CfgHandler(_Scheduled):
    def __init__(self, run, factory, fixed, *, form: str, weighted: bool, scale: Callable[[], float]) -> None:
        super().__init__(run, factory, fixed)
        self.form = form
        self.weighted = weighted
        self.scale = scale
        self._now: tuple[bool, float] = (True, 1.0)

    def before(self, call: DenoiserCall) -> bool:
        if not call.cfg:
            raise GuidanceKitError(
                f"compress/interval CFG needs CFG batched as [uncond; cond] (the UNet got batch "
                f"{call.sample.shape[0]} without CFG): sample with guidance_scale > 1, use the diffusers guider "
                "guidance_kit.CompressGuidance, or guidance_kit.sample(..., null_class=...)"
            )
        self._now = self.guided(call)
        guided, _ = self._now
        if guided:
            self.run.stats["uncond_forwards"] += 1
        self.run.stats["records"].append({"j": call.j, "t": call.t, "cfg": guided, "w": self._now[1]})
        return not guided

    def after(self, call: DenoiserCall) -> torch.Tensor | None:
        guided, w = self._now
        if call.cond_only or not guided or not self.weighted or w == 1:
            return None
        u, c = call.halves
        return torch.cat([increment_uncond(u, c, w, self.scale(), self.form), c])


def _pipe_cfg(pipe) -> Callable[[DenoiserCall], bool]:
    if hasattr(type(pipe), "do_classifier_free_guidance"):
        return lambda call: bool(pipe.do_classifier_free_guidance)
    return lambda call: call.sample.shape[0] % 2 == 0


def _pipe_scale(pipe, guidance_scale: float | None) -> Callable[[], float]:
    if guidance_scale is not None:
        return lambda: float(guidance_scale)
    return lambda: float(getattr(pipe, "guidance_scale", getattr(pipe, "_guidance_scale", 1.0)))


@contextmanager
def _installed(module: nn.Module, handler, scheduler, cfg) -> Iterator[DenoiserEditHook]:
    hook = DenoiserEditHook(module, handler, scheduler=scheduler, cfg=cfg)
    try:
        with hook:
            yield hook
    finally:
        handler.run.finish()


@contextmanager
def compress_cfg(
    pipe,
    *,
    skip: int = 5,
    k: float = 2.0,
    weight_mode: str = "none",
    compress_form: str = "increment",
    max_weight: float | None = None,
    schedule: StepSchedule | None = None,
    scheduler=None,
    guidance_scale: float | None = None,
) -> Iterator[GuidanceRun]:
    """Compress CFG: the unconditional forward runs only on the guided steps G; elsewhere the denoiser sees
    the conditional half and the pipeline gets [c; c] (so its CFG yields c).

    ``pipe``: a pipeline batching CFG as [uncond; cond] (or a bare denoiser with ``scheduler=`` and
    ``guidance_scale=``, as `sample` calls it). On guided steps with w ≠ 1 the pipeline's unconditional half
    is replaced by u′ = c − w(c−u) (``"increment"``) or the ``"edm2"`` equivalent.
    """
    if compress_form not in COMPRESS_FORMS:
        raise GuidanceKitError(f"compress_form={compress_form!r}: use one of {COMPRESS_FORMS}")
    check_compress_args(skip, k, weight_mode=weight_mode, max_weight=max_weight)
    module, sched = resolve_denoiser(pipe, scheduler)
    run = GuidanceRun()

    def factory(call: DenoiserCall) -> StepSchedule:
        return compress_schedule(call.n, skip, k, weight_mode=weight_mode, max_weight=max_weight)

    handler = _CfgHandler(
        run,
        factory,
        schedule,
        form=compress_form,
        weighted=weight_mode != "none",
        scale=_pipe_scale(pipe, guidance_scale),
    )
    cfg = True if module is pipe else _pipe_cfg(pipe)
    with _installed(module, handler, sched, cfg):
        yield run


@contextmanager
def interval_cfg(
    pipe, *, sigma_lo: float = 0.28, sigma_hi: float = 5.42, scheduler=None
) -> Iterator[GuidanceRun]:
    """Guidance interval: CFG only while σ_j ∈ [σ_lo, σ_hi]; other steps run the conditional branch alone.
    σ_j is ``scheduler.sigmas[j]`` where present, else √((1−ᾱ_t)/ᾱ_t)."""
    if not 0 <= sigma_lo <= sigma_hi:
        raise GuidanceKitError(f"need 0 ≤ sigma_lo ≤ sigma_hi, got sigma_lo={sigma_lo}, sigma_hi={sigma_hi}")
    module, sched = resolve_denoiser(pipe, scheduler)
    run = GuidanceRun()

    def factory(call: DenoiserCall) -> StepSchedule:
        ts = call.scheduler.timesteps
        start = len(ts) - call.n
        sigmas = getattr(call.scheduler, "sigmas", None)
        if sigmas is not None and getattr(call.scheduler, "alphas_cumprod", None) is None:
            values = [float(s) for s in sigmas[start : start + call.n]]
        else:
            values = sigmas_at(call.scheduler, ts[start:])
        return interval_schedule(values, sigma_lo, sigma_hi)

    handler = _CfgHandler(run, factory, None, form="increment", weighted=False, scale=_pipe_scale(pipe, None))
    cfg = True if module is pipe else _pipe_cfg(pipe)
    with _installed(module, handler, sched, cfg):
        yield run


class _ClassifierHandler(_Scheduled):
    def __init__(self, run, factory, fixed, *, classifier, labels, scale: float, form: str) -> None:
        super().__init__(run, factory, fixed)
        self.classifier = classifier
        self.labels = labels
        self.scale = scale
        self.form = form
        self.last_grad: torch.Tensor | None = None

    def _gradient(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = self.labels.to(x_t.device)
        if labels.numel() != x_t.shape[0]:
            raise GuidanceKitError(f"labels: {labels.numel()} labels for a batch of {x_t.shape[0]} samples")
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            logits = self.classifier(x, t)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise GuidanceKitError(f"classifier: logits must be [B={x.shape[0]}, K], got {shape}")
            if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                raise GuidanceKitError(
                    f"labels: values must be in 0..{logits.shape[1] - 1} (the classifier's K)"
                )
            chosen = torch.log_softmax(logits.float(), dim=1)[torch.arange(len(labels)), labels].sum()
            (grad,) = torch.autograd.grad(chosen, x)
        self.run.stats["classifier_calls"] += 1
        return grad

    def after(self, call: DenoiserCall) -> torch.Tensor | None:
        guided, w = self.guided(call)
        schedule = self.schedule
        self.run.stats["records"].append({"j": call.j, "t": call.t, "guided": guided, "w": w})
        if not guided and not (schedule.reuse and self.last_grad is not None):
            return None
        batch = call.sample.shape[0] // 2 if call.cfg else call.sample.shape[0]
        x_t = call.sample[-batch:]
        t = torch.full((batch,), round(call.t), dtype=torch.long, device=x_t.device)
        if guided:
            self.last_grad = self._gradient(x_t, t)
        else:
            w = 1.0
        abar = alpha_bar(call.scheduler, call.timestep)
        levels = NoiseLevels(abar, prediction_type(call.scheduler))
        if self.form == "eps":
            delta_eps = -levels.s * self.scale * w * self.last_grad
        else:
            delta_eps = mean_shift_factor(call, abar) * self.scale * w * self.last_grad
        out = call.output.clone()
        channels = x_t.shape[1]
        delta = levels.delta_from_eps(delta_eps).to(out.dtype)
        if call.cfg:
            delta = torch.cat([delta, delta])
        out[:, :channels] = out[:, :channels] + delta
        return out


@contextmanager
def classifier_guidance(
    pipe_or_unet,
    classifier: nn.Module | Callable,
    labels,
    *,
    scale: float = 1.0,
    skip: int = 5,
    k: float = 2.0,
    weight_mode: str = "compress",
    form: str = "eps",
    schedule: StepSchedule | None = None,
    scheduler=None,
) -> Iterator[GuidanceRun]:
    """Compress classifier guidance: on guided steps ε̂ = ε − √(1−ᾱ_t)·s·w(j)·∇_{x_t} log p(y | x_t, t).

    ``classifier(x_t [B,C,H,W], t [B] long) -> logits [B,K]``; ``labels`` [B]. ``form="mean_shift"`` applies
    μ + s·w·Σ_t·∇ (the ADM/DDPM form) through its ε equivalent. ``skip=1`` (or ``schedule=full_schedule(n)``)
    is full guidance. Works with `DDPMPipeline`, `DDIMPipeline`, `sample` and CFG pipelines (both halves get
    the same shift). Learned-variance outputs: only the ε channels are edited.
    """
    if form not in ("eps", "mean_shift"):
        raise GuidanceKitError(f"form={form!r}: use 'eps' or 'mean_shift'")
    if not callable(classifier):
        raise GuidanceKitError(
            f"classifier must be callable as f(x_t, t) -> logits, got {type(classifier).__name__}"
        )
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_compress_args(skip, k, weight_mode=weight_mode)
    module, sched = resolve_denoiser(pipe_or_unet, scheduler)
    if sched is None:
        raise GuidanceKitError(
            "classifier_guidance: pass scheduler= with a bare denoiser (ᾱ_t is read from it)"
        )
    run = GuidanceRun()

    def factory(call: DenoiserCall) -> StepSchedule:
        return compress_schedule(call.n, skip, k, weight_mode=weight_mode)

    handler = _ClassifierHandler(
        run, factory, schedule, classifier=classifier, labels=labels, scale=float(scale), form=form
    )
    cfg = False if module is pipe_or_unet else _pipe_cfg_or_false(pipe_or_unet)
    with _installed(module, handler, sched, cfg):
        yield run


def _pipe_cfg_or_false(pipe) -> Callable[[DenoiserCall], bool]:
    if hasattr(type(pipe), "do_classifier_free_guidance"):
        return lambda call: bool(pipe.do_classifier_free_guidance)
    return lambda call: False


def _step_kwargs(scheduler, eta: float, generator) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def sample(
    unet: nn.Module,
    scheduler,
    *,
    num_inference_steps: int = 50,
    batch_size: int | None = None,
    class_labels=None,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference sampling loop for `UNet2DModel`, in `DDIMPipeline`'s order of operations.

    Unconditional (``class_labels=None``, ``batch_size`` samples), class-conditional, or CFG on
    ``null_class`` as one [null; y] batch when ``guidance_scale`` ≠ 1. Returns x₀ [B, C, H, W] in [−1, 1].
    Noise is drawn on the CPU from ``generator``.
    """
    if num_inference_steps < 1:
        raise GuidanceKitError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
    labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if labels is None and batch_size is None:
        raise GuidanceKitError("sample: give batch_size (unconditional) or class_labels")
    batch = len(labels) if labels is not None else int(batch_size)
    cfg = guidance_scale != 1.0
    if cfg and (labels is None or null_class is None):
        raise GuidanceKitError(
            "sample: guidance_scale ≠ 1 needs class_labels and null_class (the CFG null label)"
        )
    device = next(unet.parameters()).device
    config = unet.config
    shape = (batch, config.in_channels, config.sample_size, config.sample_size)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    scheduler.set_timesteps(num_inference_steps)
    x = x * scheduler.init_noise_sigma
    if labels is not None:
        labels = labels.to(device)
        both = torch.cat([torch.full_like(labels, int(null_class)), labels]) if cfg else labels
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
        out = unet(model_in, t).sample if labels is None else unet(model_in, t, class_labels=both).sample
        if cfg:
            u, c = out.chunk(2)
            out = u + guidance_scale * (c - u)
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x.clamp(-1, 1)
