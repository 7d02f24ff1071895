"""Benchmark difftriplet: train DiffTriplet on one fold, time features / training / inference, score it.

    python benchmarks/difftriplet.py --quick
    python benchmarks/difftriplet.py --data CholecT45 --variant cholect45 --features r50 --fold 1 \
        --preset cholect45_cv [--max-steps N] [--device auto]

``--quick`` (< 60 s on 2 CPU cores): a synthetic CholecT50-format set written to a temporary folder
(4 train and 3 test videos of 120 frames, features F = 32), the ``tiny`` preset for 400 steps (lr 2e-3)
on one thread, plus a 60-frame timm ``resnet18`` extraction (random weights, 64×112 input).

Figures (fractions in [0, 1], test videos, cv protocol, decoder, S = 8, w = 1 instrument guidance):
``metrics`` through ivtmetrics with the canonical NaN policy; ``metrics_installed`` the same
predictions under the installed scikit-learn's NaN behaviour; ``metrics_components_from_triplets`` AP_I/V/T decomposed
from the triplet scores; ``metrics_encoder`` / ``metrics_ensemble`` the other inference modes. The
ablations (``guidance_ablation``, ``ddim_steps_vs_metric``), ``metrics_installed`` and the
encoder/ensemble figures use the fast evaluator (tested equal to ivtmetrics to 1e-12). With ``--data`` the model is the run's selected one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# this file is named like the package: keep its folder off sys.path so `import difftriplet` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

HEADLINE = ("AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT", "Top5_IVT", "Top10_IVT")
ABLATION = ((0.0, ("i",), "-"), (0.5, ("i",), "i"), (1.0, ("i",), "i"), (1.0, ("i", "v", "t"), "ivt"))
STEP_SWEEP = (1, 2, 4, 8)
QUICK_TRAIN = ("VID79", "VID02", "VID51", "VID80")
QUICK_TEST = ("VID32", "VID05", "VID31")


def rounded(figures: dict, keys=HEADLINE, digits: int = 4) -> dict:
    return {k: round(float(figures[k]), digits) for k in keys}


def predict_all(recognizer, videos, **kwargs) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    probs = [recognizer.predict(v.features, v.name, **kwargs) for v in videos]
    return probs, time.perf_counter() - start


def score(videos, probs, nan_policy: str = "canonical", fast: bool = True):
    from difftriplet.metrics import TripletEvaluator

    evaluator = TripletEvaluator("cv", nan_policy, fast=fast)
    for video, p in zip(videos, probs, strict=True):
        evaluator.add_video(video.name, p, video.labels)
    start = time.perf_counter()
    report = evaluator.compute()
    return report, time.perf_counter() - start


def time_extraction(root: Path, video: str, out: Path, device: str) -> dict:
    from difftriplet.features import BackboneConfig, extract_features

    cfg = BackboneConfig(arch="resnet18", image_size=(64, 112))
    start = time.perf_counter()
    manifest = extract_features(cfg, root, (video,), out, batch_size=30, device=device)
    seconds = time.perf_counter() - start
    return {
        "arch": cfg.arch,
        "image_size": list(cfg.image_size),
        "frames_per_s": round(manifest.frames[video] / seconds, 1),
    }


def quick_run(tmp: Path, seed: int, device: str):
    from difftriplet.config import preset
    from difftriplet.data import TripletFeatureDataset
    from difftriplet.predict import TripletRecognizer, build_model
    from difftriplet.splits import Split
    from difftriplet.synthetic import make_cholect50_dataset
    from difftriplet.train import make_trainer

    data = make_cholect50_dataset(
        tmp / "data", videos=QUICK_TRAIN + QUICK_TEST, frames=(120, 120), seed=seed, write_frames=False
    )
    extraction_root = make_cholect50_dataset(tmp / "frames", videos=("VID79",), frames=(60, 60), seed=seed)
    cfg = preset("tiny").with_updates(train={"lr": 2e-3, "max_steps": 400, "seed": seed, "device": device})
    split = Split(QUICK_TRAIN, (), QUICK_TEST)
    train_set = TripletFeatureDataset(data.root, "cholect50", split, "train", "synthetic", cfg, seed=seed)
    test_set = TripletFeatureDataset(data.root, "cholect50", split, "test", "synthetic", cfg)
    model = build_model(cfg)
    start = time.perf_counter()
    result = make_trainer(model, train_set, cfg, tmp / "run", 400).fit()
    train_seconds = time.perf_counter() - start
    extraction = time_extraction(extraction_root.root, "VID79", tmp / "features", device)
    dataset = {
        "name": "synthetic-cholect50",
        "train_videos": len(train_set),
        "test_videos": len(test_set),
        "frames": int(sum(len(v.labels) for v in train_set.videos + test_set.videos)),
        "feature_dim": data.feature_dim,
        "active_triplets": int(
            np.count_nonzero(np.concatenate([v.labels[:, :100] for v in train_set.videos]).any(0))
        ),
    }
    return (
        TripletRecognizer(model, cfg, device),
        test_set,
        dataset,
        400,
        train_seconds,
        result.last_loss,
        extraction,
    )


def real_run(args, tmp: Path):
    from difftriplet.config import preset
    from difftriplet.data import TripletFeatureDataset
    from difftriplet.predict import TripletRecognizer
    from difftriplet.train import fold_split, train_fold

    cfg = preset(args.preset).with_updates(
        train={
            k: v
            for k, v in {"max_steps": args.max_steps, "device": args.device, "seed": args.seed}.items()
            if v is not None
        }
    )
    out = args.out or tmp / "run"
    start = time.perf_counter()
    result = train_fold(cfg, args.data, args.variant, args.fold, args.features, out)
    train_seconds = time.perf_counter() - start
    recognizer = TripletRecognizer.from_pretrained(out / "model", args.device)
    test_set = TripletFeatureDataset(
        args.data, args.variant, fold_split(args.variant, args.fold), "test", out_features(out), cfg
    )
    dataset = {
        "name": f"{args.variant} fold {args.fold}",
        "train_videos": len(fold_split(args.variant, args.fold).train),
        "test_videos": len(test_set),
        "frames": int(sum(len(v.labels) for v in test_set.videos)),
        "feature_dim": cfg.model.input_dim,
        "active_triplets": int(
            np.count_nonzero(np.concatenate([v.labels[:, :100] for v in test_set.videos]).any(0))
        ),
    }
    extraction = None
    return recognizer, test_set, dataset, result.steps, train_seconds, result.final_train_loss, extraction


def out_features(out: Path) -> str:
    return json.loads((out / "config.json").read_text())["features"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--variant", default="cholect50")
    parser.add_argument("--features", default=None)
    parser.add_argument("--fold", default="1")
    parser.add_argument("--preset", default="cholect50_cv")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.quick and (args.data is None or args.features is None):
        parser.error("use --quick, or --data and --features (and --fold) for a real fold")
    if args.quick:
        torch.set_num_threads(1)

    import diffusers
    import ivtmetrics
    import sklearn
    import timm

    import difftriplet

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = quick_run(tmp, args.seed, args.device) if args.quick else real_run(args, tmp)
        recognizer, test_set, dataset, steps, train_seconds, last_loss, extraction = run
        videos = test_set.videos
        frames = sum(len(v.labels) for v in videos)

        probs, seconds = predict_all(recognizer, videos)
        canonical, eval_slow = score(videos, probs, fast=False)
        installed, _ = score(videos, probs, "installed")
        _, eval_fast = score(videos, probs)
        encoder, _ = score(videos, predict_all(recognizer, videos, mode="encoder")[0])
        ensemble, _ = score(videos, predict_all(recognizer, videos, mode="ensemble")[0])
        ablation = []
        default = recognizer.cfg.inference
        for scale, components, label in ABLATION:
            if (scale, components) == (default.guidance_scale, default.guidance_components):
                report = canonical  # the default run above
            else:
                guidance = recognizer.guidance(scale, components)
                report, _ = score(videos, predict_all(recognizer, videos, guidance=guidance)[0])
            ablation.append(
                {
                    "scale": scale,
                    "components": label,
                    **rounded(report.summary(), ("AP_IVT", "AP_IV", "AP_IT")),
                }
            )
        sweep = []
        for steps_s in STEP_SWEEP:
            if steps_s == recognizer.cfg.diffusion.sampling_steps:
                report, step_seconds = canonical, seconds  # the default run above
            else:
                step_probs, step_seconds = predict_all(recognizer, videos, num_steps=steps_s)
                report, _ = score(videos, step_probs)
            sweep.append(
                {
                    "steps": steps_s,
                    **rounded(report.summary(), ("AP_IVT", "AP_I")),
                    "seconds": round(step_seconds, 3),
                }
            )

    summary = canonical.summary()
    out = {
        "package": "difftriplet",
        "version": difftriplet.__version__,
        "device": str(recognizer.device),
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "seed": args.seed,
        "dataset": dataset,
        "params": sum(p.numel() for p in recognizer.model.parameters()),
        "train_steps_per_s": round(steps / train_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "final_train_loss": round(float(last_loss), 5),
        "feature_extraction": extraction,
        "inference_videos_per_s": round(len(videos) / seconds, 2),
        "inference_frames_per_s": round(frames / seconds, 1),
        "metrics": rounded(summary),
        "metrics_installed": rounded(installed.summary()),
        "metrics_components_from_triplets": {
            c: round(summary[f"{c}_from_triplets"], 4) for c in ("AP_I", "AP_V", "AP_T")
        },
        "metrics_encoder": rounded(encoder.summary()),
        "metrics_ensemble": rounded(ensemble.summary()),
        "guidance_ablation": ablation,
        "ddim_steps_vs_metric": sweep,
        "eval_seconds_ivtmetrics": round(eval_slow, 3),
        "eval_seconds_fast": round(eval_fast, 4),
        "nan_policy": canonical.nan_policy,
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "diffusers": diffusers.__version__,
            "ivtmetrics": ivtmetrics.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
