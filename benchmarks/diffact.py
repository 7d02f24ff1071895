"""Benchmark diffact: train DiffAct on one fold, then time inference and score it; prints one JSON object.

    python benchmarks/diffact.py --quick
    python benchmarks/diffact.py --data-root D --preset gtea --split 1 --max-steps 2000 [--device auto]

``--quick`` (< 60 s on 2 CPU cores): the ``tiny`` preset on a synthetic MS-TCN dataset written to a
temporary folder (6 train and 4 test videos of 120 frames, 4 actions + background, F = 16), 150 optimiser
steps of 4 videos, one thread. Metrics are MS-TCN's (pooled Acc and F1, video-mean Edit) on the test
videos: ``metrics`` is decoder-agg with the ``mstcn`` last-segment convention, ``metrics_asformer_end`` the
same predictions under ``asformer``, ``metrics_encoder`` the encoder's own softmax. ``ddim_steps_vs_metric``
reruns decoder-agg with 1, 2, 5, 8 and 25 DDIM steps. Training uses the whole training bundle (no
validation hold-out) and the final weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

# this file is named like the package: keep its folder off sys.path so `import diffact` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

STEP_SWEEP = (1, 2, 5, 8, 25)


def score(segmenter, videos, mode: str, steps: int | None, end: str = "mstcn") -> tuple[dict, list, float]:
    """Pooled metrics, the predictions and the wall time of predicting every video."""
    from diffact.metrics import SegmentationMetrics
    from diffact.predict import video_seed

    metrics = SegmentationMetrics(segmenter.cfg.data.bg_classes, segment_end=end)
    preds = []
    start = time.perf_counter()
    for index, video in enumerate(videos):
        seed = video_seed(segmenter.cfg, video.name, index)
        preds.append(segmenter.predict(video.features, mode, steps, seed=seed, name=video.name).names)
    seconds = time.perf_counter() - start
    for pred, video in zip(preds, videos, strict=True):
        metrics.update(pred, video.labels, video.name)
    return metrics.compute(), preds, seconds


def rescore(preds, videos, bg, end: str) -> dict:
    from diffact.metrics import SegmentationMetrics

    metrics = SegmentationMetrics(bg, segment_end=end)
    for pred, video in zip(preds, videos, strict=True):
        metrics.update(pred, video.labels, video.name)
    return metrics.compute()


def rounded(d: dict, digits: int = 2) -> dict:
    return {k: round(float(v), digits) for k, v in d.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--preset", default="gtea")
    parser.add_argument("--split", default="1")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers
    import numpy
    import scipy

    from diffact import __version__
    from diffact.config import preset
    from diffact.data import MSTCNDataset
    from diffact.predict import DiffActSegmenter
    from diffact.synthetic import make_mstcn_dataset
    from diffact.train import build_model, make_trainer, total_steps
    from difflab_core.device import resolve_device

    tmp = tempfile.TemporaryDirectory()
    if args.quick or args.data_root is None:
        data_root = Path(tmp.name) / "data"
        make_mstcn_dataset(data_root, 10, 4, 16, args.seed, num_test=4, frames=(120, 120))
        cfg = preset("tiny").with_updates(data={"dataset": "synthetic"}, train={"lr": 2e-3})
        preset_name, split, steps = "tiny", "1", args.max_steps or 150
    else:
        data_root, preset_name, split = args.data_root, args.preset, args.split
        cfg = preset(preset_name)
        steps = args.max_steps
    cfg = cfg.with_updates(train={"seed": args.seed, "device": args.device})
    train_set = MSTCNDataset(data_root, cfg.data.dataset, split, "train", cfg, seed=args.seed)
    test_set = MSTCNDataset(data_root, cfg.data.dataset, split, "test", cfg)
    steps = steps or total_steps(cfg, len(train_set))

    model = build_model(cfg)
    weights = None
    if not cfg.loss.soft_label:
        from diffact.data import class_weights

        weights = torch.from_numpy(class_weights([v.ids for v in train_set.videos], cfg.data.num_classes))
    trainer = make_trainer(model, train_set, cfg, weights, Path(tmp.name) / "run", steps)
    start = time.perf_counter()
    result = trainer.fit(resume=False)
    train_seconds = time.perf_counter() - start

    segmenter = DiffActSegmenter(
        trainer.accelerator.unwrap_model(trainer.model), cfg, train_set.class_names, args.device
    )
    videos = test_set.videos
    frames = sum(v.num_frames for v in videos)
    bg = cfg.data.bg_classes
    metrics, preds, infer_seconds = score(segmenter, videos, "decoder-agg", None)
    encoder_metrics, _, _ = score(segmenter, videos, "encoder", None)
    sweep = []
    for n in STEP_SWEEP:
        m, _, seconds = score(segmenter, videos, "decoder-agg", n)
        sweep.append(
            {
                "steps": n,
                **rounded({k: m[k] for k in ("Acc", "Edit", "F1@50", "AVG")}),
                "seconds": round(seconds, 3),
            }
        )

    out = {
        "package": "diffact",
        "version": __version__,
        "device": str(resolve_device(args.device)),
        "torch_threads": torch.get_num_threads(),
        "quick": bool(args.quick or args.data_root is None),
        "seed": args.seed,
        "dataset": {
            "name": cfg.data.dataset,
            "train_videos": len(train_set),
            "test_videos": len(test_set),
            "classes": cfg.data.num_classes,
            "mean_frames": round(
                sum(v.num_frames for v in train_set.videos + videos) / (len(train_set) + len(videos)), 1
            ),
            "feature_dim": cfg.encoder.input_dim,
        },
        "config_preset": preset_name,
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": steps,
        "train_steps_per_s": round(steps / train_seconds, 3),
        "train_videos_per_s": round(steps * cfg.train.accumulation / train_seconds, 3),
        "train_seconds": round(train_seconds, 2),
        "final_train_loss": round(result.last_loss, 4),
        "inference_videos_per_s": round(len(videos) / infer_seconds, 3),
        "inference_frames_per_s": round(frames / infer_seconds, 1),
        "metrics": rounded(metrics),
        "metrics_asformer_end": rounded(rescore(preds, videos, bg, "asformer")),
        "metrics_encoder": rounded(encoder_metrics),
        "ddim_steps_vs_metric": sweep,
        "ddim_steps_default": cfg.diffusion.sampling_steps,
        "eval_seconds_per_1k_frames": round(infer_seconds / frames * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
        },
    }
    tmp.cleanup()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
