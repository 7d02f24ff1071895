"""Benchmark for mem-video (spec §6) on the sprite testbed and the oracle detection testbed; prints one JSON object.

    uv run python benchmarks/mem_video.py [--quick] [--device auto]

``--quick``: testbed at per_type=6, 8 oracle prompts per class, 1 generation per prompt, seed 0.
Full: the defaults (per_type=12; 40 generic + 10 per class oracle prompts, 4 generations), seeds 0-2,
reported as the mean with a parallel ``std`` object.
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

import torch  # noqa: E402

TAU_M = 0.6
K = 8
FLOW_SIZE = (64, 64)
GRID = 32


def _auc(pos, neg):
    from difflab_core.metrics import roc_auc

    return roc_auc(list(pos) + list(neg), [1] * len(pos) + [0] * len(neg))


def _tpr(pos, neg):
    from difflab_core.metrics import tpr_at_fpr

    return tpr_at_fpr(list(pos) + list(neg), [1] * len(pos) + [0] * len(neg), 0.01)


def _median_time(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_testbed(seed: int, per_type: int, work: Path) -> dict:
    """Content, motion, NMF and disentanglement figures on one sprite testbed."""
    from mem_video import (
        ClipSource,
        FarnebackFlow,
        SpriteMemTestbed,
        TinyImageEmbedder,
        VideoIndex,
        score_clip,
    )

    data = SpriteMemTestbed(seed=seed, per_type=per_type).build()
    flow, emb = FarnebackFlow(), TinyImageEmbedder()
    a = data.videos[0].frames
    flow_ms = _median_time(lambda: flow.estimate(a[:-1], a[1:])) / (a.shape[0] - 1) * 1000
    embed_ms = _median_time(lambda: emb.embed(a)) / a.shape[0] * 1000
    t0 = time.perf_counter()
    index = VideoIndex.build(
        ClipSource(data.videos + data.images),
        work / f"index-{seed}",
        emb,
        flow,
        content_fps=None,
        flow_size=FLOW_SIZE,
        grid=GRID,
        resume=False,
    )
    index_s = time.perf_counter() - t0
    from mem_video import video_flows

    rows = []
    t0 = time.perf_counter()
    for clip, lab in zip(data.generated, data.labels, strict=True):
        row = score_clip(clip, [index], tau_c=0.85, tau_m=TAU_M, k=K)
        rows.append((lab, row))
    audit_s = (time.perf_counter() - t0) / len(rows)
    for clip, (_, row) in zip(data.generated, rows, strict=True):
        flows = video_flows(clip, flow, FLOW_SIZE, 8.0, GRID)
        for k in (4, "all"):
            hits = index.search_motion(flows, 1, k)
            raw = hits[0].score if hits else -1.0
            row[f"motion_k{k}"] = raw if row["natural"] is None else -1.0

    def col(types, key, natural_floor=True):
        out = []
        for lab, r in rows:
            if lab["type"] in types:
                v = r[key]
                out.append(-1.0 if v is None else v)
        return out

    content_pos = ("content", "both", "partial", "image")
    content_neg = ("negative", "motion", "static", "pan")
    motion_pos = ("motion", "both")
    motion_neg = ("negative", "content", "image", "static", "pan")  # partial copies 3 transitions: left out
    frame_auc = _auc(col(content_pos, "content_score"), col(content_neg, "content_score"))
    video_auc = _auc(col(content_pos, "video_level_score"), col(content_neg, "video_level_score"))
    part_frame = _auc(col(("partial",), "content_score"), col(content_neg, "content_score"))
    part_video = _auc(col(("partial",), "video_level_score"), col(content_neg, "video_level_score"))
    sp = [r for lab, r in rows if lab["type"] in ("static", "pan")]
    fp_nmf = sum(r["motion_mem"] for r in sp) / len(sp)
    fp_raw = sum((r["motion_score_raw"] or -1) >= TAU_M for r in sp) / len(sp)
    moving = [r for lab, r in rows if lab["type"] not in ("static", "pan")]
    return {
        "testbed": {
            "n_train_videos": len(data.videos),
            "n_train_images": len(data.images),
            "n_generated": len(data.generated),
            "frames": 16,
            "size": 64,
        },
        "content": {
            "auc_frame": frame_auc,
            "auc_video_level": video_auc,
            "tpr_at_1fpr_frame": _tpr(col(content_pos, "content_score"), col(content_neg, "content_score")),
            "auc_partial_frame": part_frame,
            "auc_partial_video_level": part_video,
            "partial_frame_vs_video_auc_ratio": part_frame / part_video,
            "auc_image_copies": _auc(col(("image",), "content_score"), col(content_neg, "content_score")),
        },
        "motion": {
            "auc_k4": _auc(col(motion_pos, "motion_k4"), col(motion_neg, "motion_k4")),
            "auc_k8": _auc(col(motion_pos, "motion_score"), col(motion_neg, "motion_score")),
            "auc_all": _auc(col(motion_pos, "motion_kall"), col(motion_neg, "motion_kall")),
            "auc_k8_no_nmf": _auc(col(motion_pos, "motion_score_raw"), col(motion_neg, "motion_score_raw")),
            "tpr_at_1fpr_k8": _tpr(col(motion_pos, "motion_score"), col(motion_neg, "motion_score")),
            "fp_rate_static_pan_nmf": fp_nmf,
            "fp_rate_static_pan_no_nmf": fp_raw,
            # undefined (None) when no static/pan video reaches tau_m even without NMF
            "nmf_fp_ratio": fp_nmf / fp_raw if fp_raw > 0 else None,
            "nmf_recall_static": sum(r["natural"] is not None for lab, r in rows if lab["type"] == "static")
            / per_type,
            "nmf_recall_camera": sum(r["natural"] == "camera" for lab, r in rows if lab["type"] == "pan")
            / per_type,
            "nmf_false_natural_rate": sum(r["natural"] is not None for r in moving) / len(moving),
        },
        "disentangle": {
            "content_auc_on_motion_only": _auc(
                col(("motion",), "content_score"), col(("negative",), "content_score")
            ),
            "motion_auc_on_content_only": _auc(
                col(("content",), "motion_score"), col(("negative",), "motion_score")
            ),
        },
        "timing": {
            "flow_ms_per_pair": flow_ms,
            "embed_ms_per_frame": embed_ms,
            "index_s": index_s,
            "audit_s_per_video": audit_s,
        },
    }


def run_detection(seed: int, generic: int, per_class: int, n: int) -> dict:
    """Oracle first-step detection AUCs."""
    from mem_video import MemorizationDetector, evaluate, oracle_prompts, prompt_scores

    pipe, prompts = oracle_prompts(seed=seed, per_class=per_class, generic=generic)
    det = MemorizationDetector(pipe, steps=1, num_inference_steps=20, guidance_scale=7.5)
    t0 = time.perf_counter()
    recs = det.score(prompts, num_videos_per_prompt=n, seed=seed, num_frames=8)
    per_prompt = (time.perf_counter() - t0) / len(prompts)
    label = {p["prompt_id"]: p["label"] for p in prompts}

    def ev(stat, pos, neg):
        s = prompt_scores(recs, stat)
        keys = [k for k in s if label[k] in pos + neg]
        return evaluate({k: s[k] for k in keys}, {k: label[k] in pos for k in keys})

    content = ev("content", ("content", "both"), ("none",))
    motion = ev("motion", ("motion", "both"), ("none",))
    return {
        "steps": 1,
        "n_per_prompt": n,
        "content_auc": content["auc"],
        "content_tpr_at_1fpr": content["tpr_at_1fpr"],
        "motion_auc": motion["auc"],
        "motion_tpr_at_1fpr": motion["tpr_at_1fpr"],
        "motion_norm_type_auc": ev("motion_norm", ("motion",), ("content",))["auc"],
        "wen_auc": ev("wen", ("content", "motion", "both"), ("none",))["auc"],
        "oracle_detect_s_per_prompt": per_prompt,
    }


def detect_vs_generate(work: Path, index_dir: Path, prompts: int, frames: int) -> dict:
    """Wall time of the detector (J = 1) against generate_videos + audit (50 steps) on the tiny T2V pipeline."""
    from diffusers.utils import logging as diffusers_logging

    from difflab_core.tiny import tiny_video_pipeline
    from mem_video import MemorizationDetector, VideoIndex, audit, generate_videos

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # TextToVideoSDPipeline's deprecation notice, once per run
    try:
        pipe = tiny_video_pipeline()
    finally:
        diffusers_logging.set_verbosity(level)
    texts = [f"a sprite video number {i}" for i in range(prompts)]
    det = MemorizationDetector(pipe, steps=1, num_inference_steps=50, guidance_scale=7.5)
    t0 = time.perf_counter()
    det.score(texts, num_videos_per_prompt=1, num_frames=frames)
    detect_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate_videos(
        pipe,
        texts,
        work / "gen",
        num_videos_per_prompt=1,
        num_inference_steps=50,
        num_frames=frames,
        guidance_scale=7.5,
    )
    audit(work / "gen", VideoIndex.open(index_dir), work / "gen-audit", report=False)
    generate_s = time.perf_counter() - t0
    return {"detect_vs_generate_time_ratio": detect_s / generate_s, "detect_s_per_prompt": detect_s / prompts}


def _merge(runs: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            mean[key], std[key] = _merge([r[key] for r in runs])
        else:
            vals = [r[key] for r in runs]
            if any(v is None for v in vals):
                mean[key], std[key] = None, None
                continue
            same_int = all(isinstance(v, int) for v in vals) and len(set(vals)) == 1
            mean[key] = vals[0] if same_int else statistics.fmean(vals)
            std[key] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return mean, std


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from difflab_core.device import resolve_device
    from mem_video import __version__

    device = resolve_device(args.device)
    seeds = [0] if args.quick else [0, 1, 2]
    per_type = 6 if args.quick else 12
    generic, per_class, n = (8, 8, 1) if args.quick else (40, 10, 4)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tb_runs = [run_testbed(s, per_type, work) for s in seeds]
        det_runs = [run_detection(s, generic, per_class, n) for s in seeds]
        ratio = detect_vs_generate(
            work, work / "index-0", prompts=1 if args.quick else 4, frames=4 if args.quick else 8
        )
    tb, tb_std = _merge(tb_runs)
    det, det_std = _merge(det_runs)
    det["detect_vs_generate_time_ratio"] = ratio["detect_vs_generate_time_ratio"]
    tb["timing"]["detect_s_per_prompt"] = ratio["detect_s_per_prompt"]
    targets = {
        "partial_frame_vs_video_auc_ratio": 1.10,
        "auc_frame": 0.95,
        "auc_k8": 0.90,
        "nmf_fp_ratio": 0.5,
        "nmf_false_natural_rate": 0.05,
        "content_auc_on_motion_only": 0.70,
        "motion_auc_on_content_only": 0.75,
        "content_auc": 0.90,
        "motion_auc": 0.90,
        "detect_vs_generate_time_ratio": 0.1,
    }
    at_most = {
        "nmf_fp_ratio",
        "nmf_false_natural_rate",
        "content_auc_on_motion_only",
        "motion_auc_on_content_only",
        "detect_vs_generate_time_ratio",
    }
    flat = {**tb["content"], **tb["motion"], **tb["disentangle"], **det}
    passed = {
        k: None if flat[k] is None else (flat[k] <= v if k in at_most else flat[k] >= v)
        for k, v in targets.items()
    }
    out = {
        "package": "mem-video",
        "version": __version__,
        "quick": args.quick,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seeds": seeds,
        "elapsed_s": None,
        "config": {
            "embedder": "tiny:16",
            "flow": "farneback",
            "flow_size": list(FLOW_SIZE),
            "grid": GRID,
            "k": K,
            "tau_c": 0.85,
            "tau_m": TAU_M,
            "nmf": "affine, border 0.125, coverage 0.5",
        },
        "testbed": tb["testbed"],
        "content": tb["content"],
        "motion": tb["motion"],
        "disentangle": tb["disentangle"],
        "detection": {k: v for k, v in det.items() if k != "oracle_detect_s_per_prompt"},
        "timing": {**tb["timing"], "oracle_detect_s_per_prompt": det["oracle_detect_s_per_prompt"]},
        "targets": {k: (f"<= {v}" if k in at_most else f">= {v}") for k, v in targets.items()},
        "pass": passed,
    }
    if not args.quick:
        out["std"] = {"testbed": tb_std, "detection": det_std}
    out["elapsed_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
