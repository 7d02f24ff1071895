"""Benchmark adam-sampler (AMS) against DDIM and DPM-Solver++ on the shipped digits DDPM; prints one JSON object.

    python benchmarks/adam_sampler.py [--quick] [--device cpu] [--seeds 3] [--n 899] [--nfe 10,20,50]
        [--spacing leading] [--store DIR [--rank R] [--samplers a,b,...]]

Model: ``difflab_core.testbed.digits_ddpm()`` (unconditional ε-prediction UNet2DModel, 16×16×1, 1000-step cosine
schedule; shipped weights, no training). Base config: that model's scheduler config with ``clip_sample=False``
(the official AMS code does not clip; ``--clip-sample`` turns it on for every sampler). Every sampler is built
with ``from_config`` from it and the same ``timestep_spacing``.

Quality: `adam_sampler.compare_samplers`, Fréchet distance in the 128-d penultimate features of
``digits_classifier()`` — a proxy, not FID. Matched sizes: a fixed permutation splits the 1797 real digits into
halves A (899) and B (898); every cell compares ``n`` generated samples (x_T from seed 0, 1, ...) with A;
``real_vs_real_fid`` = FD(B, A) is the floor at that size. ``--store DIR`` keeps every (sampler, NFE, seed) cell in
a resumable JSONL; ``--samplers`` computes only those cells (and prints a partial JSON) and ``--rank R`` writes
shard R, so a full run can be split over processes that share one store and then assembled by a plain run.

Overhead: see `_overhead` (lock-step interleaved repeats after a warm-up, median of per-step paired ratios,
thread CPU time on the CPU so other processes on a shared machine do not count).

``--quick`` (< 60 s on 2 idle CPU cores): 128 samples, 1 seed, NFE 10 only, samplers DDIM / AMS momentum /
AMS adam (b2 0.9) / DPM-Solver++, no sweep, η = 0 only; overhead on a 10-step loop at batch 16 with 3 repeats (30 paired steps);
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


def _samplers(quick: bool) -> dict:
    """The benchmark's samplers (spec §6) as `SchedulerSpec`s, keyed by their JSON names."""
    from adam_sampler import SchedulerSpec

    adam = {"method": "adam", "second_moment_norm": "image"}
    out = {
        "ddim": SchedulerSpec("ddim", eta=0.0),
        "ams_momentum": SchedulerSpec("ams", eta=0.0),
        "ams_adam_b2_09": SchedulerSpec("ams", {**adam, "b2": 0.9}, eta=0.0),
        "dpmsolverpp": SchedulerSpec("dpmsolver++"),
    }
    if not quick:
        out |= {
            "ams_adam_b2_0999": SchedulerSpec("ams", {**adam, "b2": 0.999}, eta=0.0),
            "ddpm_small_eta1": SchedulerSpec("ddim", eta=1.0),
            "ams_eta1": SchedulerSpec("ams", eta=1.0),
            "ams_sweep_0.3": SchedulerSpec("ams", {"b1_max": 0.3}, eta=0.0),
            "ams_sweep_0.5": SchedulerSpec("ams", {"b1_max": 0.5}, eta=0.0),
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
    """Full-loop wall time (UNet + step) of DDIM, AMS momentum and AMS adam, robust to machine load.

    After one warm-up loop, every repeat runs the three samplers in lock-step: at each step index they do
    UNet + ``step`` back to back on their own trajectories (order rotated per step and repeat), so a burst of
    load from other processes hits one step of one sampler, not a whole loop. Each (repeat, step) gives paired
    ratios AMS / DDIM; ``ratio_*`` is their median (the loop cost ratio, as all steps cost the same).
    On the CPU the clock is this thread's CPU time (``time.thread_time``; torch runs on 1 thread), so time
    the OS gives to other processes on a shared machine is not counted; ``wall_ratio_*`` is the same median
    on wall time. On CUDA both are wall time after a synchronize. ``loop_ratio_*`` is the median over repeats
    of paired whole-loop ratios, ``*_ms_per_step`` medians of loop times (wall). ``scheduler_only_ratio`` is
    the same measurement of ``step`` alone (a fixed ``model_output``).
    """
    from diffusers import DDIMScheduler

    from adam_sampler import AdaptiveMomentumScheduler as AMS

    scheds = {
        "ddim": DDIMScheduler.from_config(base),
        "ams": AMS.from_config(base),
        "adam": AMS.from_config(base, method="adam", second_moment_norm="image"),
    }
    names = list(scheds)
    size = unet.config.sample_size
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    fixed = 0.1 * torch.randn_like(x)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    cpu_clock = time.thread_time if device.type == "cpu" else time.perf_counter

    @torch.no_grad()
    def lockstep(rep: int, fixed_output=None) -> list[dict]:
        """Per step: {name: CPU seconds, (name, "wall"): wall seconds} of UNet + step."""
        xs = dict.fromkeys(names, x)
        for sched in scheds.values():
            sched.set_timesteps(steps)
        per_step = []
        for i in range(steps):
            spent = {}
            rot = (rep + i) % len(names)
            for name in names[rot:] + names[:rot]:
                sched = scheds[name]
                t = sched.timesteps[i]
                sync()
                w0, c0 = time.perf_counter(), cpu_clock()
                out = unet(xs[name], t).sample if fixed_output is None else fixed_output
                xs[name] = sched.step(out, t, xs[name], eta=0.0).prev_sample
                sync()
                spent[name], spent[name, "wall"] = cpu_clock() - c0, time.perf_counter() - w0
            per_step.append(spent)
        return per_step

    lockstep(0)  # warm-up
    full = [lockstep(r) for r in range(repeats)]
    sched_only = [lockstep(r, fixed) for r in range(max(repeats, 7))]

    def step_ratio(runs, name, clock=None):
        a, b = (name, "ddim") if clock is None else ((name, clock), ("ddim", clock))
        return statistics.median(s[a] / s[b] for run in runs for s in run)

    def loop_ratio(runs, name):
        return statistics.median(sum(s[name] for s in run) / sum(s["ddim"] for s in run) for run in runs)

    def ms_per_step(runs, name):
        return 1000 * statistics.median(sum(s[name, "wall"] for s in run) for run in runs) / steps

    return {
        "nfe": steps,
        "batch": batch,
        "repeats": repeats,
        "method": "median of per-step paired ratios (lock-step interleaved repeats, 1 warm-up)",
        "clock": "thread CPU time" if device.type == "cpu" else "wall (synchronized)",
        "ddim_ms_per_step": ms_per_step(full, "ddim"),
        "ams_ms_per_step": ms_per_step(full, "ams"),
        "adam_ms_per_step": ms_per_step(full, "adam"),
        "ratio_momentum": step_ratio(full, "ams"),
        "ratio_adam": step_ratio(full, "adam"),
        "wall_ratio_momentum": step_ratio(full, "ams", "wall"),
        "wall_ratio_adam": step_ratio(full, "adam", "wall"),
        "loop_ratio_momentum": loop_ratio(full, "ams"),
        "loop_ratio_adam": loop_ratio(full, "adam"),
        "scheduler_only_ratio": step_ratio(sched_only, "ams"),
        "scheduler_only_extra_ms_per_step": 1000
        * statistics.median(s["ams"] - s["ddim"] for run in sched_only for s in run),
    }


@torch.no_grad()
def _equivalence(unet, base, device) -> dict:
    """b1_max = 0 vs DDIM (η 0 and 1, 10 steps), first step at the default, and the literal official form."""
    from diffusers import DDIMScheduler

    from adam_sampler import AdaptiveMomentumScheduler as AMS

    def run(sched, eta, seed=0, steps=10, trace=None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 1, 16, 16, generator=g).to(device)
        noises = [torch.randn(8, 1, 16, 16, generator=g).to(device) for _ in range(steps)]
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


def _quality(model, base, args, quick: bool, device) -> dict:
    """Proxy FD per (sampler, NFE) through `compare_samplers`, with the matched-halves floor (spec §6)."""
    from adam_sampler import compare_samplers
    from adam_sampler.compare import feature_stats, frechet_from_stats
    from adam_sampler.features import digits_features
    from difflab_core.testbed import real_digits

    samplers = _samplers(quick)
    if args.samplers:
        wanted = args.samplers.split(",")
        unknown = sorted(set(wanted) - set(samplers))
        if unknown:
            raise SystemExit(f"--samplers: unknown {unknown}; choose from {sorted(samplers)}")
        samplers = {k: v for k, v in samplers.items() if k in wanted}
    features = digits_features(device)
    real, _ = real_digits()
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    stats_a = feature_stats(features(real[perm[:899]]))
    floor = frechet_from_stats(*feature_stats(features(real[perm[899:]])), *stats_a)
    result = compare_samplers(
        model.unet,
        {**base, "timestep_spacing": args.spacing},
        samplers,
        (10,) if quick else tuple(int(v) for v in args.nfe.split(",")),
        n=128 if quick else args.n,
        seeds=(0,) if quick else tuple(range(args.seeds)),
        feature_fn=features,
        real_stats=stats_a,
        reference="ddim" if "ddim" in samplers else None,
        out_dir=args.store,
        rank=args.rank,
        run_tag=f"digits_ddpm/digits-proxy-halfA/spacing={args.spacing}",
    )
    return {"floor": floor, "n_reference": 899, **result}


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
    parser.add_argument("--store", default=None, help="folder for resumable quality cells (JSONL)")
    parser.add_argument("--rank", type=int, default=None, help="shard of --store this process writes")
    parser.add_argument("--samplers", default="", help="comma list: compute only these cells (partial JSON)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    start = time.perf_counter()

    import adam_sampler
    from difflab_core.device import resolve_device
    from difflab_core.testbed import digits_classifier, digits_ddpm

    device = resolve_device(args.device)
    quick = args.quick
    model = digits_ddpm(device=device)
    base = {**dict(model.scheduler.config), "clip_sample": bool(args.clip_sample)}
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    quality = _quality(model, base, args, quick, device)
    fid = quality["fid"]
    head = {
        "package": "adam-sampler",
        "version": adam_sampler.__version__,
        "quick": quick,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seeds": [0] if quick else list(range(args.seeds)),
        "spacing": args.spacing,
    }
    if args.samplers:
        partial = {"partial": True, "fid": fid, "resumed_cells": quality["resumed"]}
        print(json.dumps({**head, **partial, "elapsed_s": time.perf_counter() - start}, indent=1))
        return
    fid["ams_sweep"] = {
        "0.1": fid["ams_momentum"],
        **{b: fid.pop(f"ams_sweep_{b}") for b in ("0.3", "0.5") if f"ams_sweep_{b}" in fid},
    }
    rel = quality["ratios"]
    ratios = {
        "ams_vs_ddim": rel["ams_momentum"],
        "adam_vs_ddim": rel["ams_adam_b2_09"],
        "dpmsolverpp_vs_ddim": rel["dpmsolverpp"],
    }
    if not quick:
        ratios["adam_b2_0999_vs_ddim"] = rel["ams_adam_b2_0999"]
        ratios["ams_eta1_vs_ddpm_small"] = {
            k: fid["ams_eta1"][k]["mean"] / fid["ddpm_small_eta1"][k]["mean"] for k in fid["ams_eta1"]
        }
        ratios["ddpm_small_vs_ddim"] = rel["ddpm_small_eta1"]
        ratios["ams_sweep_vs_ddim"] = {
            "0.1": rel["ams_momentum"],
            **{b: rel[f"ams_sweep_{b}"] for b in ("0.3", "0.5")},
        }
    for cells in (*fid.values(), *fid["ams_sweep"].values()):
        for cell in cells.values():
            cell.pop("values", None)

    ov_nfe, ov_batch, ov_rep = (
        (10, 16, 3) if quick else (args.overhead_nfe, args.overhead_batch, args.overhead_repeats)
    )
    overhead = _overhead(model.unet, base, device, ov_nfe, ov_batch, ov_rep)
    equivalence = _equivalence(model.unet, base, device)
    passed = {
        "overhead.ratio_momentum": overhead["ratio_momentum"] <= 1.03,
        "overhead.ratio_adam": overhead["ratio_adam"] <= 1.05,
        "equivalence.bit_identical_b1max0": equivalence["bit_identical_b1max0"],
        "equivalence.first_step_identical": equivalence["first_step_identical"],
        "equivalence.rel_diff_vs_official_form": equivalence["rel_diff_vs_official_form"] <= 1e-5,
    }
    if not quick:
        passed["ratios.ams_vs_ddim"] = all(v <= 1.10 for v in ratios["ams_vs_ddim"].values())
    proxy = digits_classifier()
    result = {
        **head,
        "base_config": {
            k: base[k] for k in ("beta_schedule", "num_train_timesteps", "prediction_type", "clip_sample")
        },
        "model": {
            "source": "difflab_core.testbed.digits_ddpm()",
            "train_steps": model.card.get("recipe", {}).get("max_steps"),
            "params": sum(p.numel() for p in model.unet.parameters()),
            "cached": True,
        },
        "proxy": {
            "name": "digits_classifier penultimate-feature Fréchet distance (not FID)",
            "classifier_acc": proxy.card.get("heldout_accuracy"),
            "feature_dim": 128,
            "n_samples": 128 if quick else args.n,
            "n_reference": quality["n_reference"],
            "real_vs_real_fid": quality["floor"],
            "quality_meaningful": not quick,
        },
        "fid": fid,
        "ratios": ratios,
        "resumed_cells": quality["resumed"],
        "overhead": overhead,
        "equivalence": equivalence,
        "targets": TARGETS,
        "pass": passed,
        "elapsed_s": time.perf_counter() - start,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
