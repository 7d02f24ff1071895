"""`AntiMemorizationGuidance`: AMG's per-step state machine (Chen et al., CVPR 2024; spec §2.2–2.3).

Per denoiser call, per sample: x̂₀ from the post-CFG prediction ε̂ = u + g(c−u), σ₁ against the index,
λ_t = 0.3 + 0.1·exp(−0.005·t′). Where gated on:

- G_spe: ε̂′ = u + (g − s₁)(c−u), s₁ = clip(σ₁(g−1)/0.5, 0, g−1);
- G_dup: − s₂(ε(x_t, y_N) − u), s₂ = clip(σ₁(g−1−s₁)/0.3, 0, g−1−s₁), held 10 steps from a trigger;
- G_sim: + √(1−ᾱ_t)·c₃·∇_{x_t}σ₂, c₃ = c_sim(σ₂ − 0.3)·exp((1000−t′)/170), σ₂ on x̂₀′ of ε̂′, the gradient
  through x̂₀ only (∇_{x_t} = ∇_{x̂₀}/√ᾱ_t; ``grad="x0"``) or through the denoiser (``grad="through_unet"``);
  the implied x̂₀ shift is capped (`AMGConfig.sim_max_noise_ratio`).

`edit` returns None when nothing fires, so the pipeline's own output is used untouched (bit-identical).
All algebra happens in the model's prediction space (ε, v or x₀), which is affine in ε at fixed x_t.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from difflab_core.tracking import DenoiserCall

from ..errors import GuidanceKitError
from ..noise import NoiseLevels, alpha_bar, mean_shift_factor, prediction_type
from .config import AMGConfig
from .noised import NoisedPixelDistance
from .similarity import make_similarity

__all__ = ["AMGStepRecord", "AntiMemorizationGuidance"]


@dataclass
class AMGStepRecord:
    """One sample at one step. ``sigma1``/``sigma2`` are None on steps without detection."""

    run: int
    sample: int
    j: int
    t: float
    sigma1: float | None
    lambda_t: float
    fired_spe: bool = False
    fired_dup: bool = False
    fired_sim: bool = False
    s1: float = 0.0
    s2: float = 0.0
    c3: float = 0.0
    sigma2: float | None = None
    neighbour_row: int | None = None
    dup_caption: str | None = None
    cfg_on: bool = False
    nan: bool = False
    ms: float = 0.0
    r: float | None = None
    paused: bool = False

    @property
    def fired(self) -> bool:
        return self.fired_spe or self.fired_dup or self.fired_sim

    def to_dict(self) -> dict:
        return asdict(self)


def _identity(x0: Tensor) -> Tensor:
    return x0


def _select(value, full: int, rows: Tensor):
    """Rows ``rows`` of every tensor with batch ``full`` (also inside dicts, lists, tuples)."""
    if isinstance(value, Tensor):
        return value[rows.to(value.device)] if value.ndim and value.shape[0] == full else value
    if isinstance(value, dict):
        return {k: _select(v, full, rows) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_select(v, full, rows) for v in value)
    return value


class AntiMemorizationGuidance:
    """AMG's state machine over one sampling run at a time (a call with j = 0 starts a new run).

    Args:
        config: `AMGConfig`.
        index: the `NeighbourIndex` of training images.
        captions: `CaptionStats` for G_dup (without it G_dup never fires).
        similarity: a detector ``f(images [B,3,H,W] in [0,1], neighbours) -> Detection``; default from config.
            With ``detection="noised"``: ``f(x_t [B,C,H,W], ᾱ_t) -> (r [B], nearest [B])``, default
            `NoisedPixelDistance`.
        decoder: x̂₀ (the denoiser's space) → images [B,3,H,W] in [0,1], differentiable (none with
            ``pixel_space="latent"``: x̂₀ itself is compared with the index's latents).
        encode_prompt: text → conditioning [1, L, D] for G_dup's extra forward (None: G_dup unavailable).
    """

    def __init__(
        self,
        config: AMGConfig,
        index,
        *,
        captions=None,
        similarity=None,
        decoder: Callable[[Tensor], Tensor] | None = None,
        encode_prompt: Callable[[str], Tensor] | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.captions = captions
        if similarity is None:
            noised = config.detection == "noised"
            similarity = (
                NoisedPixelDistance(index, alpha=config.pixel_alpha, k=config.pixel_k)
                if noised
                else make_similarity(config, index)
            )
        self.similarity = similarity
        if config.pixel_space == "latent":
            if decoder is not None:
                raise GuidanceKitError("decoder: pixel_space='latent' compares x̂₀ itself, without a decoder")
            decoder = _identity
        self.decoder = decoder or (lambda x0: ((x0 + 1) / 2).clamp(0, 1))
        self.encode_prompt = encode_prompt
        self.records: list[AMGStepRecord] = []
        self.notes: set[str] = set()
        self.run = -1
        self._hold = torch.zeros(0, dtype=torch.long)
        self._dup: list[str | None] = []
        self._encoded: dict[str, Tensor] = {}

    def _new_run(self, batch: int) -> None:
        self.run += 1
        self._hold = torch.zeros(batch, dtype=torch.long)
        self._dup = [None] * batch
        self._armed = torch.zeros(batch, dtype=torch.bool)
        self._misses = torch.zeros(batch, dtype=torch.long)
        self._paused = torch.zeros(batch, dtype=torch.long)

    def wants_cfg(self) -> bool:
        """True while a G_dup hold is active (compress schedules promote such steps to full CFG)."""
        return bool((self._hold > 0).any())

    def _encode(self, text: str, device) -> Tensor:
        if text not in self._encoded:
            self._encoded[text] = self.encode_prompt(text).detach()
        return self._encoded[text].to(device)

    def edit(self, call: DenoiserCall, guidance_scale: float = 1.0) -> Tensor | None:
        """The replacement prediction for ``call`` (same shape as ``call.output``), or None if nothing fired."""
        start = time.perf_counter()
        cfg = self.config
        out = call.output
        cfg_on = call.cfg and not call.cond_only
        batch = out.shape[0] // 2 if call.cfg else out.shape[0]
        if call.j == 0 or len(self._hold) != batch:
            self._new_run(batch)
        x_t = call.sample[-batch:].float()
        levels = NoiseLevels(alpha_bar(call.scheduler, call.timestep), prediction_type(call.scheduler))
        t_total = int(getattr(call.scheduler.config, "num_train_timesteps", 1000))
        t_prime = 1000.0 * call.t / t_total
        lam = cfg.lambda_t(t_prime)
        g = float(guidance_scale) if cfg_on else 1.0
        pred = out.float()
        if cfg_on:
            u, c = pred.chunk(2)
            hat = u + g * (c - u)
        else:
            u = c = None
            hat = pred[:batch]
        if cfg.detection == "noised":
            return self._edit_noised(call, x_t, levels, t_total, (g, cfg_on, batch, c, hat), start)
        active_before = self._hold > 0
        if call.j % cfg.detect_every and not bool(active_before.any()):
            self._log(call, batch, lam, None, cfg_on, start)
            return None
        use_dup = (
            "dup" in cfg.terms
            and cfg_on
            and g > 1
            and self.captions is not None
            and self.encode_prompt is not None
        )
        if "dup" in cfg.terms and not use_dup:
            self.notes.add("G_dup unavailable: needs CFG with g > 1, caption statistics and a text encoder")
        if "spe" in cfg.terms and cfg_on and g <= 1:
            self.notes.add("G_spe disabled: guidance scale ≤ 1")
        with torch.no_grad():
            det = self.similarity(self.decoder(levels.x0(hat, x_t)), cfg.dup_neighbours if use_dup else 0)
        sigma1 = det.sigma.detach().float().cpu()
        nan = ~torch.isfinite(sigma1)
        sigma1 = torch.nan_to_num(sigma1, nan=-math.inf)
        above = sigma1 > lam
        positive = sigma1 > 0
        if cfg.gating == "official":
            gate_spe, gate_other = positive, above & positive
        else:
            gate_spe, gate_other = above, above

        s1 = torch.zeros(batch)
        if "spe" in cfg.terms and cfg_on and g > 1:
            s1 = torch.where(gate_spe, (sigma1 * (g - 1) / cfg.spe_full).clamp(0, g - 1), s1)
        if use_dup and bool(gate_other.any()):
            rows = gate_other.nonzero().flatten()
            found = self.captions.dup_caption(det.neighbours[rows], cfg.dup_min_count, cfg.dup_mode)
            for row, text in zip(rows.tolist(), found, strict=True):
                if text is not None:
                    self._hold[row] = cfg.dup_hold
                    self._dup[row] = text
        active = (self._hold > 0) if use_dup else torch.zeros(batch, dtype=torch.bool)
        s2 = torch.zeros(batch)
        if bool(active.any()):
            room = (g - 1 - s1).clamp_min(0)
            s2 = torch.where(active, torch.minimum((sigma1.clamp_min(0) * room / cfg.dup_full), room), s2)
        device = pred.device
        new = hat.clone()
        if cfg_on:
            new = u + (g - s1.to(device))[:, None, None, None] * (c - u)
        if bool(active.any()):
            rows = active.nonzero().flatten()
            eps_n = self._dup_forward(call, rows, batch)
            new[rows] = new[rows] - s2[rows].to(device)[:, None, None, None] * (eps_n - u[rows])
        changed = (s1 > 0) | (s2 > 0)

        sigma2 = sigma1.clone()
        c3 = torch.zeros(batch)
        fired_sim = torch.zeros(batch, dtype=torch.bool)
        if "sim" in cfg.terms:
            cand = (changed | gate_other) & ~nan
            if bool(cand.any()):
                rows = cand.nonzero().flatten()
                if cfg.grad == "x0":
                    sigma2_rows, grad = self._sim_gradient(new[rows], x_t[rows], levels)
                else:
                    terms = (g, s1, s2, active, cfg_on)
                    sigma2_rows, grad = self._sim_gradient_through_unet(call, rows, batch, levels, terms)
                sigma2[rows] = torch.nan_to_num(sigma2_rows, nan=-math.inf)
                fire = sigma2[rows] > lam
                if cfg.gating == "official":
                    fire &= positive[rows]
                fire &= torch.isfinite(grad.flatten(1)).all(dim=1).cpu()
                c3[rows] = torch.where(
                    fire, cfg.c_sim * (sigma2[rows] - cfg.sim_offset) * cfg.sim_exponent(t_prime), 0.0
                )
                fired_sim[rows] = fire
                if bool(fire.any()):
                    f_rows = rows[fire]
                    scale = c3[f_rows].to(device)[:, None, None, None]
                    if cfg.grad == "x0":
                        delta_eps = self._x0_ratio(levels) * scale * grad[fire] * levels.a / levels.s
                    else:
                        delta_eps = self._xt_factor(levels) * scale * grad[fire]
                    new[f_rows] = new[f_rows] + levels.delta_from_eps(delta_eps)
        edited = changed | fired_sim
        self._log(call, batch, lam, sigma1, cfg_on, start, det, s1, s2, c3, sigma2, fired_sim, active, nan)
        self._hold = (self._hold - 1).clamp_min(0)
        return self._output(call, new, edited, (g, cfg_on, batch, c))

    def _output(self, call: DenoiserCall, new: Tensor, edited: Tensor, parts: tuple) -> Tensor | None:
        """The denoiser output that yields prediction ``new`` for the ``edited`` samples (None if none): under
        CFG the unconditional half u′ = (ε̂* − g·c)/(1 − g)."""
        g, cfg_on, batch, c = parts
        out = call.output
        device = out.device
        if not bool(edited.any()):
            return None
        result = out.clone()
        rows = edited.nonzero().flatten().to(device)
        if cfg_on:
            result[rows] = ((new[rows] - g * c[rows]) / (1 - g)).to(out.dtype)
        else:
            result[rows] = new[rows].to(out.dtype)
            if call.cfg:
                result[rows + batch] = new[rows].to(out.dtype)
        return result

    def _edit_noised(
        self, call: DenoiserCall, x_t: Tensor, levels: NoiseLevels, t_total: int, parts: tuple, start: float
    ) -> Tensor | None:
        """The iDDPM path (``detection="noised"``): r of x_t against the noised training set; armed at
        r < ``noised_arm``; then fires while r < λ(t/T), δε = mean-shift factor·``noised_scale``·(λ − r)·∇_{x_t}r;
        ``noised_pause_after`` armed misses in a row pause detection for ``noised_pause_steps`` steps."""
        cfg = self.config
        g, cfg_on, batch, c, hat = parts
        lam = cfg.noised_lambda_at(call.t / t_total)
        paused = self._paused > 0
        self._paused = (self._paused - 1).clamp_min(0)
        detect = ~paused & (call.j % cfg.detect_every == 0)
        r = torch.full((batch,), math.nan)
        nearest = torch.full((batch,), -1, dtype=torch.long)
        scale = torch.zeros(batch)
        fire = torch.zeros(batch, dtype=torch.bool)
        new = hat.clone()
        if bool(detect.any()):
            rows = detect.nonzero().flatten()
            with torch.enable_grad():
                x = x_t[rows.to(x_t.device)].detach().requires_grad_(True)
                r_rows, nearest_rows = self.similarity(x, levels.abar)
                r[rows] = r_rows.detach().float().cpu()
                nearest[rows] = nearest_rows.cpu()
                fire[rows] = self._armed[rows] & (r[rows] < lam)
                if bool(fire.any()):
                    (grad,) = torch.autograd.grad(r_rows.sum(), x)
            for row in rows.tolist():
                if not self._armed[row]:
                    self._armed[row] = bool(r[row] < cfg.noised_arm)
                    continue
                self._misses[row] = 0 if fire[row] else self._misses[row] + 1
                if self._misses[row] >= cfg.noised_pause_after:
                    self._misses[row] = 0
                    self._paused[row] = cfg.noised_pause_steps
            if bool(fire.any()):
                device = hat.device
                scale = torch.where(fire, cfg.noised_scale * (lam - r), 0.0)
                local = fire[rows].to(device)
                f_rows = rows[fire[rows]].to(device)
                factor = mean_shift_factor(call, levels.abar)
                delta_eps = factor * scale[fire].to(device)[:, None, None, None] * grad[local].float()
                new[f_rows] = new[f_rows] + levels.delta_from_eps(delta_eps)
        ms = (time.perf_counter() - start) * 1000 / max(batch, 1)
        for b in range(batch):
            seen = bool(torch.isfinite(r[b]))
            self.records.append(
                AMGStepRecord(
                    run=self.run,
                    sample=b,
                    j=call.j,
                    t=call.t,
                    sigma1=1 - float(r[b]) / 2 if seen else None,
                    lambda_t=1 - lam / 2,
                    fired_sim=bool(fire[b]),
                    c3=float(scale[b]),
                    neighbour_row=int(nearest[b]) if seen else None,
                    cfg_on=cfg_on,
                    nan=bool(detect[b]) and not seen,
                    ms=ms,
                    r=float(r[b]) if seen else None,
                    paused=bool(paused[b]),
                )
            )
        return self._output(call, new, fire, (g, cfg_on, batch, c))

    def _x0_ratio(self, levels: NoiseLevels) -> float:
        """(1−ᾱ)/ᾱ, capped by ``sim_max_noise_ratio``: δε = √ᾱ/√(1−ᾱ)·ratio·c₃·∇_{x̂₀}σ₂ equals the official
        √(1−ᾱ)·c₃·∇_{x_t}σ₂ (∇_{x_t} = ∇_{x̂₀}/√ᾱ) whenever the cap is not reached."""
        ratio = (1 - levels.abar) / max(levels.abar, 1e-30)
        cap = self.config.sim_max_noise_ratio
        return ratio if cap is None else min(ratio, cap)

    def _xt_factor(self, levels: NoiseLevels) -> float:
        """√(1−ᾱ), scaled down where the implied x̂₀ shift (1−ᾱ)/√ᾱ·c₃·∇_{x_t}σ₂ passes the same cap as
        `_x0_ratio` (so both gradients agree in scale whenever the cap is not reached)."""
        ratio = (1 - levels.abar) / max(levels.abar, 1e-30)
        cap = self.config.sim_max_noise_ratio
        return levels.s * (1.0 if cap is None or ratio <= cap else cap / ratio)

    def _forward_rows(self, call: DenoiserCall, pick: Tensor, full: int, sample=None, **overrides) -> Tensor:
        """The denoiser on the batch rows ``pick`` of ``call``'s inputs (batch ``full``), optionally with
        another x_t ``sample`` [len(pick), C, H, W] and substituted keywords; handlers bypassed, C channels."""
        args = _select(call.args, full, pick)
        kwargs = _select(call.kwargs, full, pick)
        given = args[0] if args else kwargs.pop("sample")
        sample = given if sample is None else sample.to(given.dtype)
        extra = call.hook.forward_bypass(sample, *args[1:], **(kwargs | overrides))
        return extra.float()[:, : call.sample.shape[1]]

    def _dup_forward(self, call: DenoiserCall, rows: Tensor, batch: int, sample=None) -> Tensor:
        """ε(x_t, y_N) − in the model's prediction space − for the samples ``rows`` in hold."""
        context = torch.cat([self._encode(self._dup[int(r)], call.sample.device) for r in rows])
        return self._forward_rows(call, rows + batch, 2 * batch, sample, encoder_hidden_states=context)

    def _sim_gradient(self, pred: Tensor, x_t: Tensor, levels: NoiseLevels) -> tuple[Tensor, Tensor]:
        """σ₂ on x̂₀′ = x̂₀(pred) and ∇_{x̂₀′}σ₂ (the prediction held constant)."""
        with torch.enable_grad():
            x0 = levels.x0(pred, x_t).detach().requires_grad_(True)
            sigma2 = self.similarity(self.decoder(x0)).sigma
            (grad,) = torch.autograd.grad(sigma2.sum(), x0)
        return sigma2.detach().float().cpu(), grad

    def _sim_gradient_through_unet(
        self, call: DenoiserCall, rows: Tensor, batch: int, levels: NoiseLevels, terms: tuple
    ) -> tuple[Tensor, Tensor]:
        """σ₂ and the paper's ∇_{x_t}σ₂ [len(rows), C, H, W] for the samples ``rows``: ε̂′(x_t) = u + (g − s₁)(c − u)
        − s₂(ε_N − u) is re-evaluated with autograd through every denoiser call in it (u, c and ε_N at the
        same x_t), with the scales s₁, s₂ held constant; x̂₀′ = x̂₀(ε̂′(x_t), x_t)."""
        g, s1, s2, active, cfg_on = terms
        device = call.output.device
        x = call.sample[-batch:][rows.to(call.sample.device)].detach().float().requires_grad_(True)
        with torch.enable_grad():
            if cfg_on:
                both = self._forward_rows(call, torch.cat([rows, rows + batch]), 2 * batch, torch.cat([x, x]))
                u, c = both.chunk(2)
                pred = u + (g - s1[rows].to(device))[:, None, None, None] * (c - u)
                held = active[rows] & (s2[rows] > 0)
                if bool(held.any()):
                    eps_n = self._dup_forward(call, rows[held], batch, x[held.to(x.device)])
                    scale = s2[rows[held]].to(device)[:, None, None, None]
                    shift = torch.zeros_like(pred)
                    shift[held.to(device)] = scale * (eps_n - u[held.to(device)])
                    pred = pred - shift
            elif call.cfg:
                pred = self._forward_rows(call, rows + batch, 2 * batch, x)
            else:
                pred = self._forward_rows(call, rows, batch, x)
            sigma2 = self.similarity(self.decoder(levels.x0(pred, x))).sigma
            (grad,) = torch.autograd.grad(sigma2.sum(), x)
        return sigma2.detach().float().cpu(), grad.to(device)

    def _log(
        self,
        call,
        batch,
        lam,
        sigma1,
        cfg_on,
        start,
        det=None,
        s1=None,
        s2=None,
        c3=None,
        sigma2=None,
        fired_sim=None,
        active=None,
        nan=None,
    ) -> None:
        ms = (time.perf_counter() - start) * 1000 / max(batch, 1)
        for b in range(batch):
            if sigma1 is None:
                self.records.append(
                    AMGStepRecord(self.run, b, call.j, call.t, None, lam, cfg_on=cfg_on, ms=ms)
                )
                continue
            isnan = bool(nan[b])
            self.records.append(
                AMGStepRecord(
                    run=self.run,
                    sample=b,
                    j=call.j,
                    t=call.t,
                    sigma1=None if isnan else float(sigma1[b]),
                    lambda_t=lam,
                    fired_spe=bool(s1[b] > 0),
                    fired_dup=bool(s2[b] > 0),
                    fired_sim=bool(fired_sim[b]),
                    s1=float(s1[b]),
                    s2=float(s2[b]),
                    c3=float(c3[b]),
                    sigma2=None if isnan or not math.isfinite(float(sigma2[b])) else float(sigma2[b]),
                    neighbour_row=int(det.nearest[b]),
                    dup_caption=self._dup[b] if bool(active[b]) else None,
                    cfg_on=cfg_on,
                    nan=isnan,
                    ms=ms,
                )
            )

    def summary(self) -> dict:
        """Counts over all records: samples, samples with any firing, the fired-step fraction, per-term steps."""
        samples = {(r.run, r.sample) for r in self.records}
        fired = {(r.run, r.sample) for r in self.records if r.fired}
        steps = max(len(self.records), 1)
        return {
            "samples": len(samples),
            "samples_fired": len(fired),
            "fired_step_fraction": sum(r.fired for r in self.records) / steps,
            "steps_spe": sum(r.fired_spe for r in self.records),
            "steps_dup": sum(r.fired_dup for r in self.records),
            "steps_sim": sum(r.fired_sim for r in self.records),
            "nan_steps": sum(r.nan for r in self.records),
            "notes": sorted(self.notes),
        }
