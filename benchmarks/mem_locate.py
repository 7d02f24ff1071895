"""Benchmark for mem-locate (spec §6) on the memorization testbed; prints one JSON object.

    uv run python benchmarks/mem_locate.py [--quick] [--device auto]

Testbed kinds map to the spec's subsets: ``global`` (MV/RV/VM-like: the whole photo is copied), ``local``
(TV/TM-like: a trigger patch is copied), ``none`` (non-memorized, label 0). Sampling uses the testbed's
documented audit setting (``testbed.audit``: guidance scale, guidance rescale, steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--steps", type=int, default=None, help="override N (default: 10 quick, testbed's full)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()

    from difflab_core.device import resolve_device
    from difflab_core.errors import DifflabError
    from difflab_core.testbed import load_memorization_testbed
    from mem_locate.data import PromptRecord, load_run
    from mem_locate.detect import AuditConfig, Auditor, aggregate, two_pass_be
    from mem_locate.evaluate import detection_table, localization_metrics
    from mem_locate.localize import BrightEnding, draw_latents
    from mem_locate.measure import localized_similarity
    from mem_locate.mitigate import MitigationConfig, mitigate

    device = resolve_device(args.device)
    try:
        tb = load_memorization_testbed(device=device)
    except DifflabError as err:
        print(json.dumps({"error": str(err), "quick": args.quick}))
        return 2
    pipe = tb.pipe
    per_kind = 8 if args.quick else None
    n = 1 if args.quick else 4
    steps = args.steps or (10 if args.quick else tb.audit.num_inference_steps)
    repeats = 3 if args.quick else 5
    scale, rescale = tb.audit.guidance_scale, tb.audit.guidance_rescale

    chosen: list[tuple[int, object]] = []
    for kind in ("global", "local", "none"):
        idx = [i for i, r in enumerate(tb.records) if r.kind == kind]
        chosen.extend((i, tb.records[i]) for i in idx[:per_kind])
    records = [
        PromptRecord(
            key=r.key, caption=r.caption, label=0 if r.kind == "none" else 1, kind=r.kind, type=r.kind
        )
        for _, r in chosen
    ]
    out: dict = {
        "quick": args.quick,
        "device": str(device),
        "num_threads": torch.get_num_threads(),
        "num_inference_steps": steps,
        "num_images_per_prompt": n,
        "n_prompts": {k: sum(r.kind == k for r in records) for k in ("global", "local", "none")},
    }

    # ---- timings on one memorized prompt (same seed and output for every variant)
    prompt = records[0].caption
    gen_kw = {"num_inference_steps": steps, "guidance_scale": scale, "guidance_rescale": rescale}

    def plain():
        latents, gens = draw_latents(pipe, [0], n)
        pipe(prompt, num_images_per_prompt=n, latents=latents, generator=gens, output_type="pt", **gen_kw)

    be = BrightEnding(pipe)
    t_plain = _timed(plain, repeats, device)
    t_loc = _timed(lambda: be(prompt, num_images_per_prompt=n, seed=0, **gen_kw), repeats, device)
    audit_cfg = AuditConfig(
        num_inference_steps=steps,
        guidance_scale=scale,
        num_images_per_prompt=n,
        guidance_rescale=rescale,
        methods=("be", "wen"),
        save_images=True,
    )
    auditor = Auditor(pipe, audit_cfg)
    t_audit = _timed(lambda: auditor.score_prompts([prompt], [0]), repeats, device)
    t_two = _timed(
        lambda: two_pass_be(pipe, prompt, num_images_per_prompt=n, seed=0, **gen_kw), repeats, device
    )
    one = auditor.score_prompts([prompt], [0])[0][0]
    two = two_pass_be(pipe, prompt, num_images_per_prompt=n, seed=0, **gen_kw)
    a, b = np.asarray(one.be), np.asarray(two.be)
    out.update(
        plain_sampling_s_per_image=t_plain / n,
        capture_overhead_ratio=t_loc / t_plain,
        audit_overhead_ratio=t_audit / t_plain,
        onepass_vs_twopass_time_ratio=t_audit / t_two,
        onepass_twopass_max_rel_diff=float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))),
    )

    # ---- detection over the chosen prompts
    with tempfile.TemporaryDirectory() as tmp:
        cfg = AuditConfig(
            num_inference_steps=steps,
            guidance_scale=scale,
            num_images_per_prompt=n,
            guidance_rescale=rescale,
            methods=("be", "wen", "ren"),
            ren_modes=("le", "ae"),
        )
        result = Auditor(pipe, cfg).run(records, tmp)
        recs = result.usable()
        scores = {m: aggregate(recs, m) for m in ("be", "wen", "wen1", "ren_le", "ren_ae")}
        out.update(detection_table(recs, scores))

        # ---- localization: stored maps against the testbed's pixel masks
        run = load_run(tmp)
        mask_of = {r.key: tb.masks[i] for i, r in chosen}
        for protocol, kinds in (("local", ("local", "none")), ("global", ("global", "none"))):
            sel = [r for r in recs if r["kind"] in kinds]
            maps, masks, groups, strata = [], [], [], []
            for r in sel:
                m = run.map(r["key"])
                for j in range(m.shape[0]):
                    maps.append(
                        torch.nn.functional.interpolate(
                            m[j][None, None], size=tb.masks.shape[-2:], mode="bilinear", align_corners=False
                        )[0, 0]
                    )
                    masks.append(mask_of[r["key"]])
                    groups.append(r["key"])
                    strata.append(r["kind"])
            loc = localization_metrics(maps, masks, groups=groups, strata=strata)
            if protocol == "local":
                out.update(
                    loc_local_auroc=loc["auroc"],
                    loc_local_auroc_pooled=loc["auroc_pooled"],
                    loc_local_best_iou=loc["best_iou"],
                    loc_local_best_miou=loc["best_miou"],
                    loc_local_best_acc=loc["best_acc"],
                    loc_local_heldout_iou=loc["heldout_iou"],
                    loc_local_heldout_threshold=loc["heldout_threshold"],
                )
            else:
                out["loc_global_best_iou"] = loc["best_iou"]

    # ---- mitigation (full mode only): localized SSIM to the ground-truth image, before and after
    for key in ("mit_pe_ls_before", "mit_pe_ls_after", "mit_be_pe_ls_before", "mit_be_pe_ls_after"):
        out[key] = None
    if not args.quick:
        mcfg = MitigationConfig(num_inference_steps=steps, guidance_scale=scale)
        ls = {k: [] for k in ("pe_before", "pe_after", "be_pe_before", "be_pe_after")}
        for _, r in chosen:
            if r.kind == "none":
                continue
            base = be(r.caption, num_images_per_prompt=1, seed=0, **gen_kw)
            gt = tb.gt_images[r.target][None].to(base.images.device)
            before = localized_similarity(base.images.float().cpu(), gt.cpu(), base.maps)["mean"]
            for name, method in (("pe", "pe"), ("be_pe", "be-pe")):
                res = mitigate(pipe, r.caption, method=method, config=mcfg, mask=base.maps, seed=0)
                ls[f"{name}_before"].append(before)
                ls[f"{name}_after"].append(
                    localized_similarity(res.images.float().cpu(), gt.cpu(), base.maps)["mean"]
                )
        out.update(
            mit_pe_ls_before=float(np.mean(ls["pe_before"])),
            mit_pe_ls_after=float(np.mean(ls["pe_after"])),
            mit_be_pe_ls_before=float(np.mean(ls["be_pe_before"])),
            mit_be_pe_ls_after=float(np.mean(ls["be_pe_after"])),
        )
    out["wall_s"] = time.perf_counter() - start
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
