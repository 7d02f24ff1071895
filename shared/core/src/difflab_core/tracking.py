"""Per-step capture of CFG noise predictions, and a thin CFG sampling loop.

`DenoiserEditHook` is the general edit point for inference-time guidance: forward pre/post hooks on a denoiser
that hand a handler each call (`DenoiserCall`) and let it run the conditional half only, replace the output,
or run extra forwards. `NoiseTracker` is a UNet forward hook: on a CFG-doubled batch [uncond | cond] it computes
Δε_t = ε(x_t, t, e_c) − ε(x_t, t, e_∅) in fp32 and stores, per step, ``norm`` [B] = ‖Δε_t‖₂ (Wen et al.'s
magnitude) and ``sqsum`` [B, h, w] = Σ_c Δε_t² (from which any spatially masked norm follows). For
v-prediction models Δε = √ᾱ_t · Δv at fixed x_t; ``raw=True`` keeps the raw difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .errors import DifflabError
from .steps import StepCounter

__all__ = [
    "CfgSampleOutput",
    "DenoiserCall",
    "DenoiserEditHook",
    "DenoiserHandler",
    "NoiseTrace",
    "NoiseTracker",
    "cfg_sample",
    "stop_after",
]

_KEEP = ("norm", "sqsum", "full", "uncond_norm")


@dataclass
class NoiseTrace:
    """Per-step records of a tracked run; tensors are fp32 on CPU, stacked over steps (dim 0).

    ``norm`` [T, B]; ``sqsum`` [T, B, h, w]; ``full`` [T, B, C, h, w]; ``uncond_norm`` [T, B] (each None
    unless kept). ``steps`` are indices into ``scheduler.timesteps``; ``timesteps`` the matching values.
    """

    steps: list[int]
    timesteps: list[float]
    norm: torch.Tensor | None = None
    sqsum: torch.Tensor | None = None
    full: torch.Tensor | None = None
    uncond_norm: torch.Tensor | None = None

    def masked_norm(self, mask: torch.Tensor) -> torch.Tensor:
        """‖Δε_t ⊙ M‖₂ / mean(M) per step and image, [T, B], from ``sqsum``; ``mask`` [B|1, h, w]."""
        if self.sqsum is None:
            raise DifflabError("NoiseTrace.masked_norm needs sqsum: track with keep=('sqsum', …)")
        m = mask.to(self.sqsum.dtype)
        if m.ndim == 2:
            m = m[None]
        num = (m[None] ** 2 * self.sqsum).sum(dim=(-2, -1)).sqrt()
        return num / m.mean(dim=(-2, -1))[None]


@dataclass
class _Buffer:
    steps: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def _sample_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise DifflabError(f"NoiseTracker: cannot read a noise prediction from a {type(output).__name__}")


class NoiseTracker:
    """Context manager recording Δε = cond − uncond at each tracked step of CFG sampling.

    Args:
        unet: the denoiser (its output ``.sample`` is [2B, C, h, w], batch [uncond | cond]).
        scheduler: defines step indices and ᾱ_t (and the prediction type).
        keep: any of "norm", "sqsum", "full", "uncond_norm".
        steps: "all" or a list of step indices.
        raw: keep the raw model-output difference (no v → ε conversion).
        batch_size: if given, the number of images B; a UNet batch other than 2B raises.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        scheduler,
        keep: Sequence[str] = ("norm", "sqsum"),
        steps: str | Sequence[int] = "all",
        raw: bool = False,
        batch_size: int | None = None,
    ) -> None:
        bad = [k for k in keep if k not in _KEEP]
        if bad:
            raise DifflabError(f"keep: unknown item {bad[0]!r}; use any of {_KEEP}")
        if isinstance(steps, str) and steps != "all":
            raise DifflabError(f"steps={steps!r}: use 'all' or a list of step indices")
        self.unet = unet
        self.scheduler = scheduler
        self.keep = tuple(keep)
        self.steps = steps if isinstance(steps, str) else {int(s) for s in steps}
        self.raw = raw
        self.batch_size = batch_size
        self.counter = StepCounter(unet, scheduler)
        self._buffer = _Buffer()
        self._handle = None

    def __enter__(self) -> NoiseTracker:
        self.counter.attach()
        self._handle = self.unet.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.counter.detach()

    def reset(self) -> None:
        """Forget everything recorded (before a new run)."""
        self._buffer = _Buffer()
        self.counter.reset()

    def paused(self):
        """Record nothing inside the block."""
        return self.counter.paused()

    def epsilon_scale(self, timestep) -> float:
        """Factor turning a model-output difference into an ε difference at ``timestep``: √ᾱ_t for v-pred."""
        prediction = getattr(self.scheduler.config, "prediction_type", "epsilon")
        if self.raw or prediction == "epsilon":
            return 1.0
        if prediction == "v_prediction":
            t = int(torch.as_tensor(timestep).reshape(-1)[0])
            return float(self.scheduler.alphas_cumprod[t].double().sqrt())
        raise DifflabError(f"NoiseTracker: prediction_type={prediction!r} has no ε conversion; pass raw=True")

    def _hook(self, module, args, kwargs, output) -> None:
        step = self.counter.index
        if step is None or (self.steps != "all" and step not in self.steps):
            return
        pred = _sample_of(output)
        batch = pred.shape[0]
        if batch % 2 or (self.batch_size is not None and batch != 2 * self.batch_size):
            expected = "an even batch" if self.batch_size is None else f"batch {2 * self.batch_size}"
            raise DifflabError(
                f"NoiseTracker needs a CFG-doubled batch [uncond | cond] ({expected}); the UNet got batch "
                f"{batch}. Sample with guidance_scale > 1."
            )
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        uncond, cond = pred.detach().float().chunk(2)
        delta = (cond - uncond) * self.epsilon_scale(timestep)
        values = self._buffer.values
        if "norm" in self.keep:
            values.setdefault("norm", []).append(delta.flatten(1).norm(dim=1).cpu())
        if "sqsum" in self.keep:
            values.setdefault("sqsum", []).append(delta.pow(2).sum(dim=1).cpu())
        if "full" in self.keep:
            values.setdefault("full", []).append(delta.cpu())
        if "uncond_norm" in self.keep:
            scaled = uncond * self.epsilon_scale(timestep)
            values.setdefault("uncond_norm", []).append(scaled.flatten(1).norm(dim=1).cpu())
        self._buffer.steps.append(step)
        self._buffer.timesteps.append(float(torch.as_tensor(timestep).reshape(-1)[0]))

    def trace(self) -> NoiseTrace:
        """Everything recorded so far, stacked over steps. For repeated step indices the last call wins."""
        buf = self._buffer
        last = {step: i for i, step in enumerate(buf.steps)}
        order = [last[s] for s in sorted(last)]
        stacked = {k: torch.stack([v[i] for i in order]) for k, v in buf.values.items()}
        return NoiseTrace(steps=sorted(last), timesteps=[buf.timesteps[i] for i in order], **stacked)


def _with_sample(output, sample: torch.Tensor):
    """``output`` (tensor, tuple/list or diffusers output dataclass) with its noise prediction replaced."""
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)):
        return type(output)([sample, *output[1:]])
    if dataclasses.is_dataclass(output) and hasattr(output, "sample"):
        return dataclasses.replace(output, sample=sample)
    raise DifflabError(f"DenoiserEditHook: cannot replace the prediction in a {type(output).__name__}")


def _slice_batch(value: Any, full: int, start: int) -> Any:
    """Tensors with batch ``full`` along dim 0 (also inside dicts, lists, tuples) cut to rows ``start:``."""
    if isinstance(value, torch.Tensor):
        return value[start:] if value.ndim and value.shape[0] == full else value
    if isinstance(value, dict):
        return {k: _slice_batch(v, full, start) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_slice_batch(v, full, start) for v in value)
    return value


@dataclass
class DenoiserCall:
    """One denoiser evaluation as a `DenoiserEditHook` handler sees it.

    ``j``: the call's position in the current sampling run (0 = noisiest; order-2 schedulers count each
    evaluation); ``n``: evaluations the run should make (``len(scheduler.timesteps)`` minus the first call's
    position, so img2img ``strength`` is covered; None without a scheduler); ``timestep``: the call's t;
    ``sample``: x_t as passed in [N, C, H, W]; ``args``/``kwargs``: the call's inputs; ``output``: the
    prediction [N, C, H, W] (None before the forward; the re-expanded [c; c] after a conditional-only forward);
    ``cfg``: whether the batch is [uncond; cond]; ``cond_only``: the forward ran on the conditional half only.
    """

    j: int
    n: int | None
    timestep: Any
    sample: torch.Tensor
    args: tuple
    kwargs: dict
    scheduler: Any
    cfg: bool
    hook: DenoiserEditHook
    output: torch.Tensor | None = None
    cond_only: bool = False

    @property
    def t(self) -> float:
        """The timestep as a float (first entry when it is a tensor)."""
        return float(torch.as_tensor(self.timestep).reshape(-1)[0])

    @property
    def halves(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(u, c)`` = the unconditional and conditional halves of ``output`` under CFG, else None."""
        if not self.cfg or self.output is None:
            return None
        return self.output.chunk(2)

    def forward(self, **overrides: Any) -> torch.Tensor:
        """Run the denoiser again with some inputs substituted (``sample=``, ``timestep=``, or any keyword),
        bypassing all handlers; returns the prediction tensor."""
        args = list(self.args)
        for position, name in enumerate(("sample", "timestep")):
            if name in overrides and len(args) > position:
                args[position] = overrides.pop(name)
        return self.hook.forward_bypass(*args, **(self.kwargs | overrides))


class DenoiserHandler(Protocol):
    """What a `DenoiserEditHook` calls: ``before`` may ask for a conditional-only forward (return True; the
    batch must be a CFG [uncond; cond] batch); ``after`` may return a replacement prediction (None = keep)."""

    def before(self, call: DenoiserCall) -> bool: ...

    def after(self, call: DenoiserCall) -> torch.Tensor | None: ...


class DenoiserEditHook:
    """Forward pre/post hooks on a denoiser that let a handler edit each call's noise prediction.

    Args:
        module: the denoiser (``pipe.unet``, ``pipe.transformer`` or a bare module); its first input is x_t
            [N, …] and its output a tensor, a tuple or a diffusers output with ``.sample``.
        handler: a `DenoiserHandler` (``before``/``after``); a plain callable is used as ``after``.
        scheduler: gives ``n`` and starts a new run when its ``timesteps`` tensor changes (each pipeline call
            runs ``set_timesteps``); without one, ``j`` counts calls since entry or `reset`.
        cfg: whether the batch is [uncond; cond]: a bool or ``callable(call) -> bool``.

    ``stats``: ``calls``, ``batch_sizes`` (as the module ran them), ``cond_only_calls``, ``extra_forwards``.
    Use as a context manager: the hooks are removed on exit, also on error.
    """

    def __init__(
        self,
        module: nn.Module,
        handler: DenoiserHandler | Callable[[DenoiserCall], torch.Tensor | None],
        *,
        scheduler=None,
        cfg: bool | Callable[[DenoiserCall], bool] = False,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise DifflabError(
                f"DenoiserEditHook: module must be a torch.nn.Module, got {type(module).__name__}"
            )
        self.module = module
        self.handler = handler
        self.scheduler = scheduler
        self.cfg = cfg
        self.stats: dict[str, Any] = {}
        self._handles: list = []
        self._bypass = False
        self._pending: list[DenoiserCall] = []
        self.reset()

    def reset(self) -> None:
        """Start a new run: ``j`` restarts at 0 and the counters at zero."""
        self.stats = {"calls": 0, "batch_sizes": [], "cond_only_calls": 0, "extra_forwards": 0}
        self._timesteps = None
        self._start: int | None = None
        self._j = 0

    def attach(self) -> DenoiserEditHook:
        if not self._handles:
            self._handles = [
                self.module.register_forward_pre_hook(self._pre, with_kwargs=True),
                self.module.register_forward_hook(self._post, with_kwargs=True),
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending = []

    def __enter__(self) -> DenoiserEditHook:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def forward_bypass(self, *args, **kwargs) -> torch.Tensor:
        """Call the module with no handler involved; returns the prediction tensor."""
        was, self._bypass = self._bypass, True
        try:
            self.stats["extra_forwards"] += 1
            return _sample_of(self.module(*args, **kwargs))
        finally:
            self._bypass = was

    def _position(self, timestep) -> int | None:
        ts = getattr(self.scheduler, "timesteps", None)
        if ts is None or timestep is None:
            return None
        t = torch.as_tensor(timestep).detach().reshape(-1)[0].to("cpu", torch.float64)
        hits = (torch.as_tensor(ts).detach().to("cpu", torch.float64) == t).nonzero()
        return int(hits[0]) if len(hits) else None

    def _step(self, timestep) -> tuple[int, int | None]:
        ts = getattr(self.scheduler, "timesteps", None)
        if ts is not None and ts is not self._timesteps:
            self._timesteps, self._start, self._j = ts, None, 0
        if self._start is None and ts is not None:
            self._start = self._position(timestep) or 0
        j, self._j = self._j, self._j + 1
        n = None if ts is None else len(ts) - (self._start or 0)
        return j, n

    def _pre(self, module, args, kwargs):
        if self._bypass:
            return None
        sample = args[0] if args else kwargs.get("sample")
        if not isinstance(sample, torch.Tensor):
            raise DifflabError("DenoiserEditHook: the denoiser's first input (sample) must be a tensor")
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        j, n = self._step(timestep)
        call = DenoiserCall(j, n, timestep, sample, tuple(args), dict(kwargs), self.scheduler, False, self)
        call.cfg = bool(self.cfg(call) if callable(self.cfg) else self.cfg)
        self.stats["calls"] += 1
        before = getattr(self.handler, "before", None)
        if before is not None and before(call):
            full = sample.shape[0]
            if not call.cfg or full % 2:
                raise DifflabError(
                    f"DenoiserEditHook: a conditional-only forward needs a CFG batch [uncond; cond]; got batch "
                    f"{full} (cfg={call.cfg})"
                )
            call.cond_only = True
            args = _slice_batch(tuple(args), full, full // 2)
            kwargs = _slice_batch(dict(kwargs), full, full // 2)
            self.stats["cond_only_calls"] += 1
        self.stats["batch_sizes"].append(int((args[0] if args else kwargs["sample"]).shape[0]))
        self._pending.append(call)
        return args, kwargs

    def _post(self, module, args, kwargs, output):
        if self._bypass or not self._pending:
            return None
        call = self._pending.pop()
        pred = _sample_of(output)
        changed = False
        if call.cond_only:
            pred, changed = torch.cat([pred, pred]), True
        call.output = pred
        after = getattr(self.handler, "after", None)
        if after is None and callable(self.handler) and not hasattr(self.handler, "before"):
            after = self.handler
        if after is not None:
            replaced = after(call)
            if replaced is not None:
                pred, changed = replaced, True
        return _with_sample(output, pred) if changed else None


def stop_after(k: int) -> Callable:
    """A diffusers ``callback_on_step_end`` that interrupts sampling after ``k`` steps (Wen's early mode)."""
    if k < 1:
        raise DifflabError(f"stop_after: k must be ≥ 1, got {k}")

    def callback(pipe, i, t, callback_kwargs):
        if i + 1 >= k:
            pipe._interrupt = True
        return callback_kwargs

    return callback


@dataclass
class CfgSampleOutput:
    """``images`` [B, 3, H, W] in [0, 1] (None for ``output_type="latent"``) and final ``latents``."""

    images: torch.Tensor | None
    latents: torch.Tensor


GuidanceFn = Callable[[int, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def cfg_sample(
    pipe,
    latents: torch.Tensor,
    embeds: dict[str, torch.Tensor],
    guidance: GuidanceFn,
    num_inference_steps: int = 50,
    output_type: str = "pt",
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> CfgSampleOutput:
    """A thin CFG loop: per step one batched UNet call over the named branches, the user's guidance, a step.

    ``latents`` [B, C, h, w] is x_T *before* scaling by ``init_noise_sigma``; ``embeds`` maps branch names to
    text embeddings [B, L, D]; ``guidance(step, t, preds)`` turns the per-branch predictions into one [B, …].
    """
    if not embeds:
        raise DifflabError("cfg_sample: embeds is empty; give at least one branch")
    if num_inference_steps < 1:
        raise DifflabError(f"cfg_sample: num_inference_steps must be ≥ 1, got {num_inference_steps}")
    batch = latents.shape[0]
    for name, e in embeds.items():
        if e.shape[0] != batch:
            raise DifflabError(f"cfg_sample: embeds[{name!r}] has batch {e.shape[0]}, latents {batch}")
    unet, scheduler = pipe.unet, pipe.scheduler
    device = latents.device
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    names = list(embeds)
    context = torch.cat([embeds[n] for n in names]).to(device=device, dtype=unet.dtype)
    step_kwargs = {}
    if "eta" in scheduler.step.__code__.co_varnames:
        step_kwargs = {"eta": eta, "generator": generator}
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(torch.cat([latents] * len(names)), t)
        with torch.no_grad():
            out = unet(model_in.to(unet.dtype), t, encoder_hidden_states=context).sample.float()
        preds = dict(zip(names, out.chunk(len(names)), strict=True))
        noise = guidance(i, t, preds)
        latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
    if output_type == "latent":
        return CfgSampleOutput(None, latents)
    vae = pipe.vae
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float()
    return CfgSampleOutput((decoded / 2 + 0.5).clamp(0, 1), latents)
