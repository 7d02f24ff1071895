"""The guidance-kit benchmark (spec §6): AMG on the memorization testbed and the memorized digits DDPM,
Compress classifier guidance, Compress CFG and peer schedules on the digits DDPM. `run_benchmark` returns one
JSON-able dict; ``benchmarks/guidance_kit.py`` and ``guidance-kit bench`` print it.

Testbed adapters (the spec's ``t2i_testbed`` names): memorized prompts = the testbed's "global" prompts (all
of them: there are 5), clean prompts = its "none" prompts; "memorized" = the nearest training image within
RMSE 0.10 (the testbed's copy rule); quality proxy = Fréchet distance of 4×4-pooled RGB pixels of clean-prompt
images to the training set; alignment = the share of clean-prompt images whose border colour is the prompt's
background colour.
"""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["run_benchmark"]

MEM_RMSE = 0.10


def _timed(fn):
    """``(fn(), seconds)``: process CPU seconds, which equal wall time on an idle machine at one torch thread and,
    unlike wall time, do not count the time a shared machine lends to other jobs."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def _copied(images, train):
    from difflab_core.metrics import knn

    dist, _ = knn(images.flatten(1).double(), train.flatten(1).double(), metric="l2")
    return dist[:, 0] / images[0].numel() ** 0.5 < MEM_RMSE


def _pixel_fd(images, train):
    from difflab_core.metrics import frechet_distance

    def feats(x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double().numpy()

    return frechet_distance(feats(images), feats(train))


def _background_alignment(images, prompts):
    from difflab_core.testbed.memorization_data import COLOURS

    palette = torch.tensor(list(COLOURS.values()))
    names = list(COLOURS)
    border = torch.cat([images[:, :, :2].flatten(2), images[:, :, -2:].flatten(2)], dim=2).mean(2)
    guess = [names[int(i)] for i in torch.cdist(border.float(), palette).argmin(1)]
    return sum(g == p.split(" on ")[-1] for g, p in zip(guess, prompts, strict=True)) / len(prompts)


def _amg_part(quick: bool, repeats: int) -> dict:
    from difflab_core.testbed import digits_ddpm_memorized, load_memorization_testbed

    from .amg import AMGConfig, PixelSimilarity, amg, calibrate, generate_with_amg
    from .captions import CaptionStats
    from .compress import sample
    from .index import NeighbourIndex

    tb = load_memorization_testbed(device="cpu")
    pipe = tb.pipe
    steps = 20 if quick else 50
    seeds = (0, 1) if quick else (0, 1, 2, 3)
    n_clean = 8 if quick else 32
    memorized = tb.prompts("global")
    clean = tb.prompts("none")[:n_clean]
    kw = {"num_inference_steps": steps, "guidance_scale": tb.audit.guidance_scale}
    index = NeighbourIndex.build(tb.train_images)
    captions = CaptionStats.build(tb.captions, index)
    calibration = tb.prompts("none")[-6:]
    config = calibrate(pipe, index, calibration, seeds=(100,), **kw)

    def plain(prompts, seed_list):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seed_list for _ in prompts]
        return torch.cat(
            [
                pipe(
                    prompts, generator=gens[i * len(prompts) : (i + 1) * len(prompts)], output_type="pt", **kw
                ).images
                for i in range(len(seed_list))
            ]
        )

    def guided(prompts, seed_list):
        return generate_with_amg(
            pipe, prompts, index=index, seeds=seed_list, config=config, captions=captions, **kw
        )

    mem_before, t_mem_plain = _timed(lambda: plain(memorized, seeds))
    mem_after, t_mem_amg = _timed(lambda: guided(memorized, seeds))
    # the clean runs, one seed at a time, plain and AMG interleaved, are also the overhead timings
    clean_before, clean_after, t_plain, t_amg = [], [], [], []
    for i in range(max(repeats, len(seeds))):
        seed = seeds[i % len(seeds)]
        before, tp = _timed(lambda seed=seed: plain(clean, [seed]))
        after, ta = _timed(lambda seed=seed: guided(clean, [seed]))
        t_plain.append(tp)
        t_amg.append(ta)
        if i < len(seeds):
            clean_before.append(before)
            clean_after.append(after)
    clean_records = [r for out in clean_after for r in out.records]
    clean_before = torch.cat(clean_before)
    clean_after_images = torch.cat([out.images for out in clean_after])
    detector = PixelSimilarity(index)

    def final_sigma(images):
        with torch.no_grad():
            return detector(images).sigma

    s_before, s_after = final_sigma(mem_before), final_sigma(mem_after.images)
    frac_before = float(_copied(mem_before, tb.train_images).float().mean())
    frac_after = float(_copied(mem_after.images, tb.train_images).float().mean())
    unchanged = [bool(torch.equal(a, b)) for a, b in zip(clean_before, clean_after_images, strict=True)]

    mem = digits_ddpm_memorized()
    digit_index = NeighbourIndex.build(mem.train_images)
    labels = mem.planted_labels.repeat(4 if quick else 16)
    dkw = dict(num_inference_steps=steps, class_labels=labels, guidance_scale=3.0, null_class=mem.null_class)

    def digits(cfg):
        with amg(mem.unet, digit_index, config=cfg, scheduler=mem.scheduler, guidance_scale=3.0):
            return (
                sample(mem.unet, mem.scheduler, generator=torch.Generator().manual_seed(0), **dkw) + 1
            ) / 2

    d_before, d_after = digits(AMGConfig(terms=frozenset())), digits(AMGConfig(terms={"sim"}))
    clean_prompts = clean * len(seeds)
    return {
        "testbed": "difflab_core.testbed.load_memorization_testbed",
        "backend": config.backend,
        "gating": config.gating,
        "steps": steps,
        "prompts_memorized": len(memorized),
        "prompts_clean": len(clean),
        "seeds": len(seeds),
        "lambda_floor_calibrated": round(config.lambda_floor, 4),
        "memorized_fraction_before": frac_before,
        "memorized_fraction_after": frac_after,
        "memorized_fraction_ratio": frac_after / frac_before if frac_before else None,
        "sim_top5pct_before": float(torch.quantile(s_before, 0.95)),
        "sim_top5pct_after": float(torch.quantile(s_after, 0.95)),
        "sim_max_before": float(s_before.max()),
        "sim_max_after": float(s_after.max()),
        "quality_proxy": "pixel_fd_4x4_clean (lower is better)",
        "quality_before": _pixel_fd(clean_before, tb.train_images),
        "quality_after": _pixel_fd(clean_after_images, tb.train_images),
        "alignment_before": _background_alignment(clean_before, clean_prompts),
        "alignment_after": _background_alignment(clean_after_images, clean_prompts),
        "fired_step_fraction_memorized": mem_after.summary["fired_step_fraction"],
        "fired_step_fraction_clean": sum(r.fired for r in clean_records) / len(clean_records),
        "clean_unchanged_fraction": sum(unchanged) / len(unchanged),
        "overhead_ratio_no_detection": statistics.median(t_amg) / statistics.median(t_plain),
        "overhead_timing_repeats": len(t_plain),
        "overhead_ratio_memorized": t_mem_amg / t_mem_plain,
        "sim_scale_used": config.c_sim,
        "ddpm": {
            "memorized_fraction_before": float(mem.is_memorized(d_before).float().mean()),
            "memorized_fraction_after": float(mem.is_memorized(d_after).float().mean()),
            "quality_before": mem.clean_classifier.accuracy(d_before, labels),
            "quality_after": mem.clean_classifier.accuracy(d_after, labels),
        },
    }


def _compress_part(quick: bool, repeats: int) -> dict:
    from diffusers import DDIMScheduler

    from difflab_core.testbed import digits_ddpm_memorized

    from .compress import classifier_guidance, compress_cfg, sample
    from .encoder_classifier import fit_encoder_classifier
    from .schedules import (
        compress_schedule,
        full_schedule,
    )

    mem = digits_ddpm_memorized()
    proxy = mem.clean_classifier
    # s = 1, the spec's default; at s = 5 the compress weights (up to 8) overshoot (full-mode FD 2577 vs 959)
    n, skip, k, scale = 50, 5, 2.0, 1.0
    per_class = 2 if quick else 10
    labels = torch.arange(10).repeat(per_class)
    null = torch.full_like(labels, mem.null_class)
    clf = fit_encoder_classifier(
        mem.unet, mem.scheduler, mem.train_images * 2 - 1, mem.train_labels, null_class=10
    )

    def sched():
        return DDIMScheduler.from_config(mem.scheduler.config)

    def guided(schedule, steps=n):
        s = sched()
        with classifier_guidance(mem.unet, clf, labels, scale=scale, schedule=schedule, scheduler=s) as run:
            x = sample(
                mem.unet,
                s,
                num_inference_steps=steps,
                class_labels=null,
                generator=torch.Generator().manual_seed(0),
            )
        return (x + 1) / 2, run.stats["classifier_calls"]

    def unguided():
        x = sample(
            mem.unet,
            sched(),
            num_inference_steps=n,
            class_labels=null,
            generator=torch.Generator().manual_seed(0),
        )
        return (x + 1) / 2

    def acc_on(images):
        with torch.no_grad():
            t = torch.zeros(len(images), dtype=torch.long)
            return float((clf(images * 2 - 1, t).argmax(1) == labels).float().mean())

    full_s, comp_s = full_schedule(n), compress_schedule(n, skip, k)
    guided(compress_schedule(5, 5, k), steps=5)  # warm-up
    t_full, t_comp = [], []
    for _ in range(repeats):
        (full_img, full_calls), tf = _timed(lambda: guided(full_s))
        (comp_img, comp_calls), tc = _timed(lambda: guided(comp_s))
        t_full.append(tf)
        t_comp.append(tc)
    free_img, t_free = _timed(unguided)
    F, C = _call_costs(mem.unet, clf, len(labels), null)
    wall_full, wall_comp = statistics.median(t_full), statistics.median(t_comp)
    classifier = {
        "n": n,
        "skip": skip,
        "k": k,
        "scale": scale,
        "weight_mode": "compress",
        "classifier": "encoder half of the digits UNet + linear head (EncoderClassifier)",
        "samples": len(labels),
        "guided_steps": comp_s.num_guided,
        "guidance_call_ratio": comp_calls / full_calls,
        "classifier_calls_full": full_calls,
        "classifier_calls_compress": comp_calls,
        "wall_full_s": wall_full,
        "wall_compress_s": wall_comp,
        "wall_time_ratio": wall_comp / wall_full,
        "unet_call_ms": F * 1000,
        "classifier_call_ms": C * 1000,
        "call_timing": "CPU time per call, median of 7 warm interleaved calls at the run's batch",
        "expected_wall_ratio": (n * F + comp_s.num_guided * C) / (n * (F + C)),
        "acc_on_full": acc_on(full_img),
        "acc_on_compress": acc_on(comp_img),
        "acc_off_full": proxy.accuracy(full_img, labels),
        "acc_off_compress": proxy.accuracy(comp_img, labels),
        "acc_off_unguided": proxy.accuracy(free_img, labels),
        "fd_full": proxy.frechet(full_img),
        "fd_compress": proxy.frechet(comp_img),
        "fd_unguided": proxy.frechet(free_img),
    }

    def cfg_run(compress_skip):
        s = sched()
        kw = dict(num_inference_steps=n, class_labels=labels, guidance_scale=3.0, null_class=mem.null_class)
        if compress_skip is None:
            return _timed(
                lambda: (sample(mem.unet, s, generator=torch.Generator().manual_seed(0), **kw) + 1) / 2
            ), None
        with compress_cfg(mem.unet, skip=compress_skip, k=k, scheduler=s, guidance_scale=3.0) as run:
            out = _timed(
                lambda: (sample(mem.unet, s, generator=torch.Generator().manual_seed(0), **kw) + 1) / 2
            )
        return out, run

    (cfg_full, tcf), _ = cfg_run(None)
    (cfg_comp, tcc), crun = cfg_run(skip)
    cfg = {
        "n": n,
        "skip": skip,
        "k": k,
        "guidance_scale": 3.0,
        "guided_steps": crun.stats["uncond_forwards"],
        "uncond_forward_ratio": crun.stats["uncond_forwards"] / n,
        "wall_time_ratio": tcc / tcf,
        "acc_off_full": proxy.accuracy(cfg_full, labels),
        "acc_off_compress": proxy.accuracy(cfg_comp, labels),
        "fd_full": proxy.frechet(cfg_full),
        "fd_compress": proxy.frechet(cfg_comp),
    }
    peers = _peers(guided, proxy, labels, sched, n, skip, comp_s.num_guided, wall_full) if not quick else None
    return {
        "classifier": classifier,
        "cfg": cfg,
        "peers": peers if peers is not None else "full run only (five more 50-step runs)",
        "unguided_wall_s": t_free,
    }


def _peers(guided, proxy, labels, sched, n: int, skip: int, count: int, wall_full: float) -> dict:
    """The guidance-interval peer and the ablation schedules with |G| guided steps, as classifier guidance."""
    from .schedules import (
        early_stop_schedule,
        interval_matched,
        interval_schedule,
        random_schedule,
        step_sigmas,
        uniform_schedule,
    )

    sigmas = step_sigmas(sched(), n)
    peer_schedules = {
        "interval": interval_schedule(sigmas),
        "interval_matched": interval_matched(sigmas, count),
        "uniform": uniform_schedule(n, skip, weight_mode="compress"),
        "early_stop": early_stop_schedule(n, weight_mode="compress"),
        "random": random_schedule(n, count, seed=0, weight_mode="compress"),
    }
    peers = {}
    for name, schedule in peer_schedules.items():
        (images, _), t_peer = _timed(lambda schedule=schedule: guided(schedule))
        peers[name] = {
            "guided_steps": schedule.num_guided,
            "wall_time_ratio": t_peer / wall_full,
            "acc_off": proxy.accuracy(images, labels),
            "fd": proxy.frechet(images),
        }
    return peers


def _grad(clf, x, t):
    with torch.enable_grad():
        xi = x.clone().requires_grad_(True)
        return torch.autograd.grad(clf(xi, t).log_softmax(1)[:, 0].sum(), xi)[0]


def _call_costs(unet, clf, batch: int, null, reps: int = 7) -> tuple[float, float]:
    """CPU seconds per UNet forward (no grad) and per classifier forward+backward to x_t, at
    ``batch`` (one warm-up each, then ``reps`` interleaved calls; medians)."""
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 500)
    f_times, c_times = [], []
    for rep in range(reps + 1):
        start = time.process_time()
        with torch.no_grad():
            unet(x, t, class_labels=null)
        mid = time.process_time()
        _grad(clf, x, t)
        if rep:
            f_times.append(mid - start)
            c_times.append(time.process_time() - mid)
    return statistics.median(f_times), statistics.median(c_times)


def run_benchmark(quick: bool = True, *, threads: int = 1, seed: int = 0) -> dict:
    """Run everything and return the spec's JSON object. ``quick``: 20-step AMG, 2 seeds (the two clean runs
    double as the 2 overhead timings), classifier guidance on 20 digits with 2 timed full/compress pairs, no
    peer schedules; full: 50-step AMG, 4 seeds, 100 digits, 7 timing repeats, the peers. Timings ("wall_*",
    "*_ms") are process CPU seconds (see `_timed`)."""
    import diffusers
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DModel  # noqa: F401  (imports: not timed)

    import difflab_core.testbed  # noqa: F401

    from . import __version__

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    repeats = 2 if quick else 7
    amg_result = _amg_part(quick, repeats)
    cpu_amg = time.process_time() - cpu_start
    compress_result = _compress_part(quick, repeats)
    cg = compress_result["classifier"]
    return {
        "package": "guidance-kit",
        "version": __version__,
        "quick": quick,
        "device": "cpu",
        "threads": threads,
        "seed": seed,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s_after_imports": round(time.process_time() - cpu_start, 1),
        "cpu_s_amg": round(cpu_amg, 1),
        "timing_repeats": repeats,
        "timing": "process CPU time at one torch thread (equals wall time on an idle machine)",
        "cache": "shipped testbed weights (no training)",
        "diffusers": diffusers.__version__,
        "amg": amg_result,
        "compress": compress_result,
        "targets": {
            "amg_overhead_le_1_10": amg_result["overhead_ratio_no_detection"] <= 1.10,
            "amg_memorization_halved": amg_result["memorized_fraction_after"]
            <= 0.5 * amg_result["memorized_fraction_before"],
            "compress_cg_wall_ratio_le_0_6": cg["wall_time_ratio"] <= 0.6,
            "compress_cg_quality_within_0_02": cg["acc_off_compress"] >= cg["acc_off_full"] - 0.02,
        },
    }
