"""Benchmark adam-sampler (AMS) against DDIM and DPM-Solver++ on the shipped digits DDPM; prints one JSON object.

    python benchmarks/adam_sampler.py [--quick] [--device auto] [--seeds 3] [--n 899] [--spacing leading]

Model: ``difflab_core.testbed.digits_ddpm()`` (unconditional ε-prediction UNet2DModel, 16×16×1, 1000-step cosine
schedule; shipped weights, no training). Base config: that model's scheduler config with ``clip_sample=False``
(the official AMS code does not clip; ``--clip-sample`` turns it on for every sampler). Every sampler is built
with ``from_config`` from it and the same ``timestep_spacing``.

Proxy: Fréchet distance in the 128-d penultimate features of ``digits_classifier()`` — a proxy, not FID.
Matched sizes: a fixed permutation splits the 1797 real digits into halves A (899) and B (898); every cell
compares ``n`` generated samples with A; ``real_vs_real_fid`` = FD(B, A) is the floor at that size.

Overhead: wall time of a full sampling loop (UNet + step) at ``--overhead-batch``, median over repeats after a
warm-up, as a ratio to DDIM; the samplers are interleaved step by step (lock-step) so load drift cancels; ``scheduler_only_ratio`` is the same loop with a fixed model_output.

``--quick`` (< 60 s on 2 CPU cores): 128 samples, 1 seed, NFE 10 only, samplers DDIM / AMS momentum /
AMS adam (b2 0.9) / DPM-Solver++, no sweep, η = 0 only; overhead on a 10-step loop at batch 32 with 7 repeats;
quality values carry ``"quality_meaningful": false`` and only overhead and equivalence targets are checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# this file is named like the package: keep its folder off sys.path so `import adam_sampler` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

TARGETS = {
    "overhead.ratio_momentum": "<= 1.03",
    "overhead.ratio_adam": "<= 1.05",
    "equivalence.bit_identical_b1max0": "== true",
    "equivalence.first_step_identical": "== true",
    "equivalence.rel_diff_vs_official_form": "<= 1e-5",
    "ratios.ams_vs_ddim[nfe]": "<= 1.10 (full mode only)",
}


def _samplers(base: dict, spacing: str, quick: bool) -> dict:
    """name -> (factory, eta passed to step or None)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from adam_sampler import AdaptiveMomentumScheduler as AMS

    cfg = {**base, "timestep_spacing": spacing}

    def ams(**kw):
        return lambda: AMS.from_config(cfg, **kw)

    out = {
        "ddim": (lambda: DDIMScheduler.from_config(cfg), 0.0),
        "ams_momentum": (ams(), 0.0),
        "ams_adam_b2_09": (ams(method="adam", second_moment_norm="image", b2=0.9), 0.0),
        "dpmsolverpp": (
            lambda: DPMSolverMultistepScheduler.from_config(
                cfg, algorithm_type="dpmsolver++", solver_order=2
            ),
            None,
        ),
    }
    if not quick:
        out |= {
            "ams_adam_b2_0999": (ams(method="adam", second_moment_norm="image", b2=0.999), 0.0),
            "ddpm_small_eta1": (lambda: DDIMScheduler.from_config(cfg), 1.0),
            "ams_eta1": (ams(), 1.0),
            "ams_sweep_0.3": (ams(b1_max=0.3), 0.0),
            "ams_sweep_0.5": (ams(b1_max=0.5), 0.0),
        }
    return out


@torch.no_grad()
def _loop(unet, sched, x, steps, eta, fixed_output=None):
    sched.set_timesteps(steps)
    kw = {} if eta is None else {"eta": eta}
    for t in sched.timesteps:
        out = unet(x, t).sample if fixed_output is None else fixed_output
        x = sched.step(out, t, x, **kw).prev_sample
    return x


def _overhead(unet, base, device, steps, batch, repeats) -> dict:
    from diffusers import DDIMScheduler

    from adam_sampler import AdaptiveMomentumScheduler as AMS

    scheds = {
        "ddim": DDIMScheduler.from_config(base),
        "ams": AMS.from_config(base),
        "adam": AMS.from_config(base, method="adam", second_moment_norm="image"),
    }
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    fixed = 0.1 * torch.randn_like(x)

    def timed(name, fixed_output=None):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _loop(unet, scheds[name], x, steps, 0.0, fixed_output)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in scheds:  # warm-up
        timed(name)
    # lock-step interleaving: at every step index the three samplers run UNet + step back to back (order rotated),
    # so machine-load drift hits all of them alike; each repeat sums a full loop's wall time per sampler
    names = list(scheds)
    full = {name: [] for name in scheds}
    with torch.no_grad():
        for r in range(repeats):
            xs = dict.fromkeys(names, x)
            spent = dict.fromkeys(names, 0.0)
            for sched in scheds.values():
                sched.set_timesteps(steps)
            for i in range(steps):
                rot = (r + i) % len(names)
                for name in names[rot:] + names[:rot]:
                    t = scheds[name].timesteps[i]
                    t0 = time.perf_counter()
                    xs[name] = scheds[name].step(unet(xs[name], t).sample, t, xs[name], eta=0.0).prev_sample
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    spent[name] += time.perf_counter() - t0
            for name in names:
                full[name].append(spent[name])
    sched_only = {"ddim": [], "ams": []}
    for _ in range(max(repeats, 5)):
        for name in sched_only:
            sched_only[name].append(timed(name, fixed))
    med = {k: statistics.median(v) for k, v in full.items()}
    return {
        "nfe": steps,
        "batch": batch,
        "repeats": repeats,
        "ddim_ms_per_step": 1000 * med["ddim"] / steps,
        "ams_ms_per_step": 1000 * med["ams"] / steps,
        "adam_ms_per_step": 1000 * med["adam"] / steps,
        "ratio_momentum": med["ams"] / med["ddim"],
        "ratio_adam": med["adam"] / med["ddim"],
        "paired_median_ratio_momentum": statistics.median(
            a / d for a, d in zip(full["ams"], full["ddim"], strict=True)
        ),
        "paired_median_ratio_adam": statistics.median(
            a / d for a, d in zip(full["adam"], full["ddim"], strict=True)
        ),
        "scheduler_only_ratio": statistics.median(sched_only["ams"]) / statistics.median(sched_only["ddim"]),
    }


@torch.no_grad()
def _equivalence(unet, base, device) -> dict:
    """b1_max = 0 vs DDIM (η 0 and 1, 10 steps), first step at the default, and the literal official form."""
    from diffusers import DDIMScheduler

    from adam_sampler import AdaptiveMomentumScheduler as AMS

    def run(sched, eta, seed=0, steps=10, trace=None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(16, 1, 16, 16, generator=g).to(device)
        noises = [torch.randn(16, 1, 16, 16, generator=g).to(device) for _ in range(steps)]
        sched.set_timesteps(steps)
        for i, t in enumerate(sched.timesteps):
            out = unet(x, t).sample
            x_new = sched.step(out, t, x, eta=eta, variance_noise=noises[i] if eta > 0 else None).prev_sample
            if trace is not None:
                trace.append((x, out, int(t), x_new, noises[i]))
            x = x_new
        return x

    max_diff, identical = 0.0, True
    for eta in (0.0, 1.0):
        a = run(DDIMScheduler.from_config(base), eta)
        b = run(AMS.from_config(base, b1_max=0.0), eta)
        identical &= bool(torch.equal(a, b))
        max_diff = max(max_diff, float((a - b).abs().max()))
    first = run(DDIMScheduler.from_config(base), 0.0, steps=10, trace=(t_ddim := []))
    run(AMS.from_config(base), 0.0, steps=10, trace=(t_ams := []))
    del first
    first_identical = bool(torch.equal(t_ddim[0][3], t_ams[0][3]))

    # literal official form x_s = √ᾱ_s (x̄_t + m) with closed-form p₁, p₂, b1_max = 0.3, η = 1, one step at a time
    sched = AMS.from_config(base, b1_max=0.3, clip_sample=False)
    trace: list = []
    run(sched, 1.0, steps=10, trace=trace)
    ac = sched.alphas_cumprod.to(device)
    grid = [int(t) for t in sched.timesteps]
    lams = torch.linspace(0.0, 0.3, len(grid)).tolist()
    m = torch.zeros_like(trace[0][0])
    rel = 0.0
    for k, (x, e, t, x_s, z) in enumerate(trace):
        a_t = ac[t]
        a_s = ac[grid[k + 1]] if k + 1 < len(grid) else torch.tensor(1.0, device=device)
        sigma = torch.sqrt((1 - a_t / a_s) * (1 - a_s) / (1 - a_t))
        p1 = torch.sqrt(1 - a_s - sigma**2) / a_s.sqrt() - torch.sqrt((1 - a_t) / a_t)
        d = p1 * e + sigma / a_s.sqrt() * z
        b1 = math.sin(lams[k] * math.pi / 2) ** 2
        m = b1 * m + (1 - b1) * d
        lit = a_s.sqrt() * (x / a_t.sqrt() + m)
        rel = max(rel, float((x_s - lit).norm() / lit.norm()))
    return {
        "bit_identical_b1max0": identical,
        "max_abs_diff_b1max0": max_diff,
        "first_step_identical": first_identical,
        "rel_diff_vs_official_form": rel,
    }


def _mean_std(values):
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=899)
    parser.add_argument("--nfe", default="10,20,50")
    parser.add_argument("--spacing", default="leading")
    parser.add_argument("--clip-sample", action="store_true")
    parser.add_argument("--overhead-batch", type=int, default=64)
    parser.add_argument("--overhead-nfe", type=int, default=50)
    parser.add_argument("--overhead-repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    start = time.perf_counter()

    import adam_sampler
    from adam_sampler.compare import sample
    from difflab_core.device import resolve_device
    from difflab_core.testbed import digits_classifier, digits_ddpm, real_digits

    device = resolve_device(args.device)
    quick = args.quick
    n = 128 if quick else args.n
    seeds = [0] if quick else list(range(args.seeds))
    nfes = (10,) if quick else tuple(int(v) for v in args.nfe.split(","))
    ov_nfe, ov_batch, ov_rep = (
        (10, 32, 7) if quick else (args.overhead_nfe, args.overhead_batch, args.overhead_repeats)
    )

    model = digits_ddpm(device=device)
    unet = model.unet
    proxy = digits_classifier(device=device)
    base = {**dict(model.scheduler.config), "clip_sample": bool(args.clip_sample)}
    base = {k: v for k, v in base.items() if not k.startswith("_")}

    real, _ = real_digits()
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = real[perm[:899]], real[perm[899:]]
    feats_a = proxy.features(half_a)
    from difflab_core.metrics import frechet_distance

    def fd(images):
        return frechet_distance(proxy.features(images).double().numpy(), feats_a.double().numpy())

    floor = fd(half_b)
    samplers = _samplers(base, args.spacing, quick)
    fid: dict = {}
    for name, (factory, eta) in samplers.items():
        cells = {}
        for nfe in nfes:
            values = []
            for seed in seeds:
                g = torch.Generator().manual_seed(1000 + seed)
                x = sample(unet, factory(), n, nfe, generator=g, batch_size=256, eta=eta)
                values.append(fd(((x + 1) / 2).clamp(0, 1)))
            cells[str(nfe)] = _mean_std(values)
        fid[name] = cells
    fid["ams_sweep"] = {
        "0.1": fid["ams_momentum"],
        **{b: fid.pop(f"ams_sweep_{b}") for b in ("0.3", "0.5") if f"ams_sweep_{b}" in fid},
    }

    def ratio(a, b):
        return {k: fid[a][k]["mean"] / fid[b][k]["mean"] for k in fid[b]}

    ratios = {
        "ams_vs_ddim": ratio("ams_momentum", "ddim"),
        "adam_vs_ddim": ratio("ams_adam_b2_09", "ddim"),
        "dpmsolverpp_vs_ddim": ratio("dpmsolverpp", "ddim"),
    }
    if not quick:
        ratios["adam_b2_0999_vs_ddim"] = ratio("ams_adam_b2_0999", "ddim")
        ratios["ams_eta1_vs_ddpm_small"] = ratio("ams_eta1", "ddpm_small_eta1")
        ratios["ams_sweep_vs_ddim"] = {
            b: {k: fid["ams_sweep"][b][k]["mean"] / fid["ddim"][k]["mean"] for k in fid["ddim"]}
            for b in fid["ams_sweep"]
        }

    overhead = _overhead(unet, base, device, ov_nfe, ov_batch, ov_rep)
    equivalence = _equivalence(unet, base, device)
    passed = {
        "overhead.ratio_momentum": overhead["ratio_momentum"] <= 1.03,
        "overhead.ratio_adam": overhead["ratio_adam"] <= 1.05,
        "equivalence.bit_identical_b1max0": equivalence["bit_identical_b1max0"],
        "equivalence.first_step_identical": equivalence["first_step_identical"],
        "equivalence.rel_diff_vs_official_form": equivalence["rel_diff_vs_official_form"] <= 1e-5,
    }
    if not quick:
        passed["ratios.ams_vs_ddim"] = all(v <= 1.10 for v in ratios["ams_vs_ddim"].values())
    result = {
        "package": "adam-sampler",
        "version": adam_sampler.__version__,
        "quick": quick,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seeds": seeds,
        "spacing": args.spacing,
        "base_config": {
            k: base[k] for k in ("beta_schedule", "num_train_timesteps", "prediction_type", "clip_sample")
        },
        "model": {
            "source": "difflab_core.testbed.digits_ddpm()",
            "train_steps": model.card.get("recipe", {}).get("max_steps"),
            "params": sum(p.numel() for p in unet.parameters()),
            "cached": True,
        },
        "proxy": {
            "name": "digits_classifier penultimate-feature Fréchet distance (not FID)",
            "classifier_acc": proxy.card.get("heldout_accuracy"),
            "feature_dim": int(feats_a.shape[1]),
            "n_samples": n,
            "n_reference": len(half_a),
            "real_vs_real_fid": floor,
            "quality_meaningful": not quick,
        },
        "fid": fid,
        "ratios": ratios,
        "overhead": overhead,
        "equivalence": equivalence,
        "targets": TARGETS,
        "pass": passed,
        "elapsed_s": time.perf_counter() - start,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
