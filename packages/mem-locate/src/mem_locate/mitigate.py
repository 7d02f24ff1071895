"""Mitigation (spec §2.6): Wen's prompt-embedding optimisation, unmasked (PE) or BE-masked (BE-PE), and PRSS.

Step-0 loss, at t = timesteps[0] and x_T from the seed:  L = ‖Δε ⊙ M̂‖/mean(M̂) (BE) or ‖Δε‖ (Wen), with
Δε = ε(x_T, e_c) − ε(x_T, e_∅) (ε units; v-prediction is converted with √ᾱ_t).

- PE: AdamW on e_c (lr 0.05, weight decay 0.01, up to I = 10 steps) until L ≤ ℓ_target = 1; the BOS row is
  never changed. Then generate from x_T with e_c*.
- PRSS: SS picks the first candidate (original, then paraphrases) with L ≤ ℓ_SS = 1, else the arg-min; if the
  original fails (``triggered``), PR re-anchors every step: with mag = ‖ε* − ε_∅‖ > ℓ_PR = 3,
  s_PR = min(1 + (s−1)(mag−ℓ_PR)/(τ−ℓ_PR), s) and ε̂ = ε_p + s_PR(ε* − ε_p) + (s − s_PR)(ε* − ε_∅); else CFG on ε*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from difflab_core.tracking import cfg_sample

from .errors import MemLocateError, core_errors
from .localize import BrightEnding, check_pipeline, ddim_scheduler, draw_latents, upsample_map

__all__ = [
    "MitigationConfig",
    "MitigationResult",
    "PEResult",
    "mitigate",
    "optimize_prompt_embedding",
    "reanchored_cfg",
    "semantic_search",
    "step0_loss",
]

METHODS = ("be-pe", "pe", "prss", "be-prss")


@dataclass
class MitigationConfig:
    """Mitigation settings; defaults from the BE-PRSS README for SD1.4 [official code]."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_images_per_prompt: int = 1  # the BE README uses 1 for mitigation
    lr: float = 0.05
    iterations: int = 10  # I
    target_loss: float = 1.0  # ℓ_target (Wen's README: 3 on its fine-tuned model)
    ss_target: float = 1.0  # ℓ_SS
    pr_target: float = 3.0  # ℓ_PR
    pr_tau: float = 5.0  # τ
    weight_decay: float = 0.01  # torch AdamW default
    loss_reduce: str = "mean"  # "mean" of per-image norms (default) or "joint" (norm of the stacked batch)
    pr_masked: bool = False  # the official PR gate is unmasked
    scheduler: str = "ddim"
    latent_rng_device: str = "cpu"

    def validate(self) -> MitigationConfig:
        if self.num_inference_steps < 1:
            raise MemLocateError(f"num_inference_steps must be ≥ 1, got {self.num_inference_steps}")
        if self.num_images_per_prompt < 1:
            raise MemLocateError(f"num_images_per_prompt must be ≥ 1, got {self.num_images_per_prompt}")
        if self.guidance_scale <= 1:
            raise MemLocateError(f"guidance_scale must be > 1 for mitigation, got {self.guidance_scale}")
        if self.iterations < 0:
            raise MemLocateError(f"iterations must be ≥ 0, got {self.iterations}")
        if self.loss_reduce not in ("mean", "joint"):
            raise MemLocateError(f"loss_reduce={self.loss_reduce!r}: use 'mean' or 'joint'")
        if not self.pr_tau > self.pr_target:
            raise MemLocateError(f"pr_tau ({self.pr_tau}) must exceed pr_target ({self.pr_target})")
        return self


# ---------------------------------------------------------------------------------------------- pure pieces
def auto_target_loss(records: Sequence[dict], *, masked: bool = True, quantile: float = 0.95) -> float:
    """``target_loss="auto"``: the ``quantile`` of the step-0 magnitudes of non-memorized prompts (label 0) in an
    audit's records [reconstruction]. ``masked`` reads BE's masked magnitude (for BE-PE), else Wen's (for PE);
    both are in the units of `step0_loss`."""
    if not 0 < quantile <= 1:
        raise MemLocateError(f"quantile must be in (0, 1], got {quantile}")
    field_name = "be" if masked else "wen"
    values = []
    for rec in records:
        if rec.get("label") != 0 or rec.get("nonfinite"):
            continue
        curves = rec.get(field_name)
        if curves is None:
            raise MemLocateError(
                f"auto target loss: audit record {rec.get('key')!r} has no {field_name!r} curves "
                f"(audit with methods including {'be' if masked else 'wen'})"
            )
        if 0 not in rec.get("steps", []):
            raise MemLocateError(f"auto target loss: audit record {rec.get('key')!r} did not track step 0")
        col = rec["steps"].index(0)
        values.extend(float(curve[col]) for curve in curves)
    if not values:
        raise MemLocateError("auto target loss needs an audit with non-memorized prompts (label 0)")
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), quantile))


def reanchored_cfg(
    eps_u: torch.Tensor,
    eps_star: torch.Tensor,
    eps_p: torch.Tensor,
    *,
    scale: float,
    l_pr: float = 3.0,
    tau: float = 5.0,
    mag: torch.Tensor | None = None,
) -> torch.Tensor:
    """PR's guidance per image (spec §2.6): CFG on ε* while mag ≤ ℓ_PR, re-anchored on ε_p above it.

    ``mag`` [B] defaults to ‖ε* − ε_u‖ per image. Exactly CFG at mag = ℓ_PR, pure ε_p + s(ε* − ε_p) at mag ≥ τ.
    """
    if mag is None:
        mag = (eps_star - eps_u).flatten(1).norm(dim=1)
    shape = (-1,) + (1,) * (eps_u.ndim - 1)
    mag = mag.reshape(shape).to(eps_u.dtype)
    s_pr = torch.clamp(1 + (scale - 1) * (mag - l_pr) / (tau - l_pr), max=scale)
    reanchored = eps_p + s_pr * (eps_star - eps_p) + (scale - s_pr) * (eps_star - eps_u)
    cfg = eps_u + scale * (eps_star - eps_u)
    return torch.where(mag > l_pr, reanchored, cfg)


def _eps_scale(scheduler, t) -> float:
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction == "epsilon":
        return 1.0
    if prediction == "v_prediction":
        return float(scheduler.alphas_cumprod[int(t)].double().sqrt())
    raise MemLocateError(f"prediction_type={prediction!r} is not supported by mitigation")


def step0_loss(
    pipe,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reduce: str = "mean",
    t=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, per-image L) at the first timestep. latents x_T [n, C, h, w] (unscaled); cond/uncond [1|n, L, D]."""
    scheduler, unet = pipe.scheduler, pipe.unet
    t = scheduler.timesteps[0] if t is None else t
    n = latents.shape[0]
    x = scheduler.scale_model_input(latents * scheduler.init_noise_sigma, t)
    context = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]).to(unet.dtype)
    out = unet(torch.cat([x, x]).to(unet.dtype), t, encoder_hidden_states=context).sample.float()
    eps_u, eps_c = out.chunk(2)
    delta = (eps_c - eps_u) * _eps_scale(scheduler, t)
    if mask is not None:
        m = upsample_map(mask.float().to(delta.device), tuple(delta.shape[-2:]))
        if m.shape[0] == 1:
            m = m.expand(n, -1, -1)
        delta = delta * m[:, None] / m.mean(dim=(-2, -1)).reshape(n, 1, 1, 1)
    per = delta.flatten(1).norm(dim=1)
    total = per.mean() if reduce == "mean" else delta.flatten().norm() / n**0.5
    return total, per


@dataclass
class PEResult:
    """Result of `optimize_prompt_embedding`: ``losses`` has the loss before each iteration and the final one."""

    prompt_embeds: torch.Tensor
    loss_before: float
    loss_after: float
    iterations: int
    triggered: bool
    losses: list[float] = field(default_factory=list)


def optimize_prompt_embedding(
    pipe,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    latents: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    lr: float = 0.05,
    iterations: int = 10,
    target_loss: float = 1.0,
    weight_decay: float = 0.01,
    reduce: str = "mean",
) -> PEResult:
    """Wen's step-0 prompt-embedding optimisation (masked by ``mask`` for BE); ``pipe.scheduler`` must have
    its timesteps set. The BOS row (token 0) is held fixed: it is not part of the optimised leaf."""
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1:
        raise MemLocateError(f"prompt_embeds must be [1, L, D], got {tuple(prompt_embeds.shape)}")
    bos = prompt_embeds[:, :1].detach().float()
    rest = prompt_embeds[:, 1:].detach().float().clone().requires_grad_(True)
    opt = torch.optim.AdamW([rest], lr=lr, weight_decay=weight_decay)
    uncond = negative_prompt_embeds.detach()
    losses: list[float] = []
    triggered = False
    done = 0
    for _ in range(iterations):
        loss, _ = step0_loss(pipe, latents, torch.cat([bos, rest], dim=1), uncond, mask=mask, reduce=reduce)
        losses.append(float(loss.detach()))
        if losses[-1] <= target_loss:
            break
        triggered = True
        (grad,) = torch.autograd.grad(loss, rest)
        rest.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += 1
    with torch.no_grad():
        final, _ = step0_loss(pipe, latents, torch.cat([bos, rest], dim=1), uncond, mask=mask, reduce=reduce)
    losses.append(float(final))
    embeds = torch.cat([bos, rest.detach()], dim=1).to(prompt_embeds.dtype)
    return PEResult(embeds, losses[0], float(final), done, triggered, losses)


def semantic_search(
    pipe,
    candidates: Sequence[str],
    latents: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    target: float = 1.0,
    reduce: str = "mean",
) -> tuple[int, list[float], bool]:
    """SS: (chosen index, step-0 losses, triggered). The first candidate with L ≤ ``target`` wins, else the
    arg-min over all; ``triggered`` = L(candidates[0]) > target. ``pipe.scheduler`` must have timesteps set."""
    if not candidates:
        raise MemLocateError("semantic_search: no candidates")
    device = pipe.unet.device
    losses = []
    with torch.no_grad():
        _, uncond = pipe.encode_prompt(candidates[0], device, 1, True, "")
        for c in candidates:
            cond, _ = pipe.encode_prompt(c, device, 1, False)
            loss, _ = step0_loss(pipe, latents, cond, uncond, mask=mask, reduce=reduce)
            losses.append(float(loss.detach()))
    chosen = next((i for i, v in enumerate(losses) if v <= target), None)
    if chosen is None:
        chosen = min(range(len(losses)), key=losses.__getitem__)
    return chosen, losses, losses[0] > target


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class MitigationResult:
    """``images`` [n, 3, H, W] in [0, 1]; ``prompt_embeds`` the conditional embedding used (PE) or chosen;
    ``mask`` the BE map used [n, h, w] (None for unmasked methods)."""

    images: torch.Tensor
    prompt_embeds: torch.Tensor | None
    loss_before: float
    loss_after: float
    iterations: int
    triggered: bool
    chosen_prompt: str
    mask: torch.Tensor | None
    losses: list[float] = field(default_factory=list)


def mitigate(
    pipe,
    prompt: str,
    *,
    method: str = "be-pe",
    config: MitigationConfig | None = None,
    paraphrases: Sequence[str] | None = None,
    mask: torch.Tensor | None = None,
    seed: int = 0,
) -> MitigationResult:
    """Generate ``prompt`` with mitigation: ``method`` ∈ {"be-pe", "pe", "prss", "be-prss"}.

    BE variants use ``mask`` (e.g. an audit's stored map for the same key and seed) or compute it with an
    unmitigated `BrightEnding` run at the same seed.
    """
    cfg = (config or MitigationConfig()).validate()
    if method not in METHODS:
        raise MemLocateError(f"method={method!r}: use one of {METHODS}")
    check_pipeline(pipe)
    n, s = cfg.num_images_per_prompt, cfg.guidance_scale
    masked = method.startswith("be-")
    if masked and mask is None:
        loc = BrightEnding(pipe, scheduler=cfg.scheduler)(
            prompt,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=s,
            num_images_per_prompt=n,
            seed=seed,
            output_type="latent",
            latent_rng_device=cfg.latent_rng_device,
        )
        mask = loc.maps
    if mask is not None:
        mask = torch.as_tensor(mask).float()
        mask = mask[None] if mask.ndim == 2 else mask
    latents, gens = draw_latents(pipe, [seed], n, rng_device=cfg.latent_rng_device)
    device = pipe.unet.device
    with ddim_scheduler(pipe, cfg.scheduler) as scheduler, core_errors("mitigate"):
        scheduler.set_timesteps(cfg.num_inference_steps, device=device)
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(prompt, device, 1, True, "")
        gen_kw = dict(
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=s,
            latents=latents,
            generator=gens,
            output_type="pt",
        )
        if method in ("pe", "be-pe"):
            pe = optimize_prompt_embedding(
                pipe,
                cond,
                uncond,
                latents,
                mask=mask if masked else None,
                lr=cfg.lr,
                iterations=cfg.iterations,
                target_loss=cfg.target_loss,
                weight_decay=cfg.weight_decay,
                reduce=cfg.loss_reduce,
            )
            with torch.no_grad():
                images = pipe(
                    prompt_embeds=pe.prompt_embeds.expand(n, -1, -1),
                    negative_prompt_embeds=uncond.expand(n, -1, -1),
                    **gen_kw,
                ).images
            return MitigationResult(
                images,
                pe.prompt_embeds,
                pe.loss_before,
                pe.loss_after,
                pe.iterations,
                pe.triggered,
                prompt,
                mask if masked else None,
                pe.losses,
            )
        candidates = [prompt, *(paraphrases or [])]
        chosen, losses, triggered = semantic_search(
            pipe,
            candidates,
            latents,
            mask=mask if masked else None,
            target=cfg.ss_target,
            reduce=cfg.loss_reduce,
        )
        with torch.no_grad():
            star, _ = pipe.encode_prompt(candidates[chosen], device, 1, False)
        if not triggered:
            with torch.no_grad():
                images = pipe(
                    prompt_embeds=star.expand(n, -1, -1),
                    negative_prompt_embeds=uncond.expand(n, -1, -1),
                    **gen_kw,
                ).images
        else:
            gate_mask = None
            if cfg.pr_masked and mask is not None:
                gate_mask = upsample_map(mask, tuple(latents.shape[-2:])).to(device)

            def guidance(step, t, preds):
                eps_u, eps_star, eps_p = preds["u"], preds["star"], preds["p"]
                diff = (eps_star - eps_u) * _eps_scale(scheduler, t)
                if gate_mask is not None:
                    diff = diff * gate_mask[:, None] / gate_mask.mean(dim=(-2, -1)).reshape(-1, 1, 1, 1)
                mag = diff.flatten(1).norm(dim=1)
                return reanchored_cfg(
                    eps_u, eps_star, eps_p, scale=s, l_pr=cfg.pr_target, tau=cfg.pr_tau, mag=mag
                )

            out = cfg_sample(
                pipe,
                latents,
                {"u": uncond.expand(n, -1, -1), "star": star.expand(n, -1, -1), "p": cond.expand(n, -1, -1)},
                guidance,
                num_inference_steps=cfg.num_inference_steps,
                output_type="pt",
            )
            images = out.images
    return MitigationResult(
        images,
        star,
        losses[0],
        losses[chosen],
        0,
        triggered,
        candidates[chosen],
        mask if masked else None,
        losses,
    )
