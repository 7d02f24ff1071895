"""Benchmark tan-transfer (DPMs-ANT) on few-shot digits (and photo-patch) transfer; prints one JSON object.

    python benchmarks/tan_transfer.py [--quick] [--task digits|photo|both] [--device auto] [--seeds 1]
        [--iterations N] [--batch-size B] [--ascent-steps J] [--samples N] [--steps S] [--lr LR] [--gamma G]
        [--classifier-steps N] [--source-steps N] [--patch-cnn-steps N] [--out DIR] [--checkpoint-every N]

With ``--out DIR`` a run can be stopped and continued: each finished (task, variant, seed) is stored under
``DIR/results`` (digits) or ``DIR/photo/results`` with its settings and read back by a rerun, and training
resumes from its last checkpoint (every 25 iterations in full mode), so the spec's full mode (about 10 CPU-hours
here for digits alone) can be run in pieces or on a GPU with ``--device cuda``.

Task (spec §6): the shipped DDPM on digits 0–4 (`difflab_core.testbed.digits_ddpm((0, 1, 2, 3, 4))`, 16×16×1,
pretrained by core's recipe, no training here) is transferred to 10 shots of digit 9 (`tan_transfer.digits_task`).
Variants, all with the same seed, shots, iterations and sampler (DDIM, η = 1):
``source_only``; ``finetune_full`` (all weights, plain loss); ``finetune_adapter`` (ANT adapters, plain loss);
``tan_adapter`` (adapters + similarity guidance + adversarial noise); full mode adds ``adapter_sg``,
``adapter_an`` and ``tan_lora``. The domain classifier (UNet-encoder, trained once on the real source digits and
the shots) is shared by the variants that use guidance.

Photo-patch task (``--task photo``, in ``both`` by default in full mode; spec §6 "the full mode also runs the
photo-patch task"): source = 16-px greyscale patches of 7 scikit-image photos (`tan_transfer.photo_patch_task`),
target = 10 shots of ``grass`` patches. Its source DDPM (core's digits-DDPM architecture and recipe) is pretrained
here by `tan_transfer.pretrain_source` (4,000 steps in full mode, ``--source-steps``; cached in
``DIR/photo_source``), and its proxy network, a patch CNN telling the 8 photos apart (`tan_transfer.patch_cnn`,
``--patch-cnn-steps``; cached in ``DIR/photo_patch_cnn``), is trained once; then the same variants, seeds and
settings as digits run. Its ``proxy_fid`` is the Fréchet distance in the patch CNN's features to all 225 grass
patches, ``target_class_rate`` the share the patch CNN calls grass. The JSON keeps the digits keys at the top level
and adds ``"photo": {variants, ratios, targets_met, settings}``.

Metrics (offline proxies, not comparable to the paper's FID): ``proxy_fid`` = Fréchet distance in the shipped digits
classifier's features between the samples and all 180 real 9s; ``target_class_rate`` = share classified as 9;
``intra_dist`` = CDC intra-cluster pixel distance to the shots; ``copy_rate``; ``trainable_fraction``;
``sec_per_iter`` (wall time per training iteration on this machine). The church-config fractions count the
parameters of the 256-px church `UNet2DModel` config (random weights on the meta device; no training).

``--quick`` (< 60 s on 2 CPU cores): 10 iterations at B = 10, J = 2, 30 classifier steps, 64 samples × 10 DDIM
steps, one seed — steps are cut, not variants (the spec's 30 iterations at J = 10 and 100 × 25 samples do not
fit in a minute on a shared 2-core machine). Full mode (spec): 300 iterations, B = 40, J = 10, 1,000 samples,
100 steps, 3 seeds (mean ± std); all of it can be scaled by the flags (``--variants`` runs a subset and then
reports no ratios; ``--seed-list 1,2`` runs those seeds only, so processes sharing one ``--out`` can split a full
run and a last run with ``--seeds 3`` reads them all back). The overfitting monitor is off here (the variants are
measured at their last iteration).

Two paper settings are rescaled for this tiny 16-px model, for the same reason: they were set for 3×256×256
images. The learning rate defaults to 1e-3 (the paper's 5e-5 barely moves a tiny model in 10–300 iterations), and
γ = 5 is applied at the strength it has relative to ε on the paper's images: ``--guidance-reference-dim`` defaults
to 196608 (= 3·256·256; `TANConfig.guidance_reference_dim`), so γ_eff = 5·√(256 / 196608) = 0.18 here. The
gradient g = ∇ log p barely changes with image size while ‖ε‖ = √D does, so γ = 5 as given pushes the 16-px toy
about 28× harder relative to the noise than the paper's models (measured in the package README);
``--guidance-reference-dim 0`` applies γ as given. For the same reason the adversarial noise's Norm defaults to
``--ascent-norm match_initial`` (each ε* keeps its starting draw's per-sample mean and std): the paper's Norm (mean 0,
std 1; ``--ascent-norm standard``) also removes the noise's per-sample mean, whose std is 1/√D — negligible at
3×256×256 (1/443) but 1/16 here, and a model trained without it brightens its samples (measured in the package
README: full mode proxy FID tan/finetune_full 1.28 with the paper's Norm, 0.86 with this one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# this file is named like the package: keep its folder off sys.path so `import tan_transfer` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

VARIANTS = {
    "finetune_full": {"adapter": "full", "similarity_guidance": False, "adversarial_noise": False},
    "finetune_adapter": {"adapter": "ant", "similarity_guidance": False, "adversarial_noise": False},
    "tan_adapter": {"adapter": "ant", "similarity_guidance": True, "adversarial_noise": True},
}
FULL_ONLY = {
    "adapter_sg": {"adapter": "ant", "similarity_guidance": True, "adversarial_noise": False},
    "adapter_an": {"adapter": "ant", "similarity_guidance": False, "adversarial_noise": True},
    "tan_lora": {"adapter": "lora", "similarity_guidance": True, "adversarial_noise": True},
}
TARGETS = {
    "proxy_fid_tan_over_finetune_full": ("<=", 0.90),
    "proxy_fid_tan_over_finetune_adapter": ("<=", 0.95),
    "intra_dist_tan_over_finetune_full": (">=", 1.00),
    "target_class_rate_tan_over_finetune_full": (">=", 1.00),
}
PAPER_PIXELS = 3 * 256 * 256  # the paper's gamma = 5 was set for 3x256x256 images
CHURCH_CONFIG = {
    "sample_size": 256,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
}


def church_fractions() -> dict[str, float]:
    """Trainable fractions of ANT (d = 8) and LoRA (r = 4) on the church DDPM config (parameters only)."""
    from diffusers import UNet2DModel

    from tan_transfer import build_adapted_unet, trainable_fraction

    out = {}
    for kind, hp in (("ant", {"dim": 8}), ("lora", {"rank": 4})):
        with torch.device("meta"):
            unet = UNet2DModel(**CHURCH_CONFIG)
            out[kind] = trainable_fraction(build_adapted_unet(unet, kind, **hp))
    return out


def run_seed(args, seed: int, variants: dict, device: str, workdir: Path, photo: dict | None = None) -> dict:
    """One seed of one task: the domain classifier, ``source_only`` and each variant. Each finished variant's
    figures are written to ``<root>/results/<name>-s<seed>.json`` (root = ``workdir`` for digits,
    ``workdir/photo`` for photo patches) and read back on a rerun with the same ``--out`` (the settings must
    match: they are stored with the figures), and training checkpoints every ``--checkpoint-every`` iterations,
    so a long full run can be stopped and continued. ``photo`` (``{"bundle", "patch_features"}``, from
    `photo_setup`) selects the photo-patch task; without it the task is digits."""
    from difflab_core.testbed import digits_ddpm
    from tan_transfer import (
        DPMBundle,
        TANConfig,
        digits_task,
        photo_patch_task,
        proxy_metrics,
        sample,
        train_domain_classifier,
    )

    photo_only = ("source_steps", "patch_cnn_steps")
    if photo is None:
        d = digits_ddpm((0, 1, 2, 3, 4), device=device)
        bundle = DPMBundle.from_unet(d.unet, d.scheduler)
        task = digits_task(shots=args.shots, seed=seed)
        proxy_kwargs, root, skip = {"target_class": task.target_class}, workdir, ("task", *photo_only)
    else:
        bundle = photo["bundle"]
        task = photo_patch_task(shots=args.shots, seed=seed)
        proxy_kwargs, root, skip = {"patch_features": photo["patch_features"]}, workdir / "photo", ("task",)
    base = dict(
        iterations=args.iterations,
        batch_size=args.batch_size,
        micro_batch=min(args.batch_size, args.micro_batch),
        ascent_steps=args.ascent_steps,
        lr=args.lr,
        gamma=args.gamma,
        classifier_steps=args.classifier_steps,
        checkpoint_every=args.checkpoint_every,
        seed=seed,
        guidance_reference_dim=args.guidance_reference_dim or None,
        ascent_norm=args.ascent_norm,
        monitor_every=0,
    )
    ignored = ("out", "variants", "threads", "seeds", "seed_list", *skip)
    settings = {k: v for k, v in vars(args).items() if k not in ignored}
    settings = json.loads(json.dumps(settings, default=str))
    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)

    def cached(name: str, compute) -> dict:
        path = results / f"{name}-s{seed}.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("settings") != settings:
                raise SystemExit(f"{path}: made with other settings; use another --out or delete it")
            return saved["figures"]
        figures = json.loads(json.dumps(compute()))  # as a rerun will read them
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "figures": figures}), encoding="utf-8")
        tmp.replace(path)
        return figures

    classifier: list = []

    def domain_classifier():
        if not classifier:
            classifier.extend(train_domain_classifier(bundle, task.source, task.shots, TANConfig(**base)))
        return classifier[0]

    def classifier_report() -> dict:
        domain_classifier()
        return {"heldout": classifier[1]["heldout_accuracy_by_t"]}

    out = {"classifier_heldout_accuracy_by_t": cached("classifier", classifier_report)["heldout"]}

    def measure(model) -> dict:
        images = sample(
            model, bundle, args.samples, steps=args.steps, eta=1.0, seed=seed, batch_size=args.samples
        )
        return proxy_metrics(images, task.shots, **proxy_kwargs)

    out["source_only"] = cached(
        "source_only", lambda: measure(None) | {"trainable_fraction": 0.0, "sec_per_iter": 0.0}
    )
    from tan_transfer import train_tan

    def run(name: str, switches: dict) -> dict:
        cfg = TANConfig(**(base | switches))
        res = train_tan(
            bundle, task.shots, cfg, classifier=domain_classifier(), output_dir=root / f"{name}-s{seed}"
        )
        return measure(res.model) | {
            "trainable_fraction": res.trainable_fraction,
            "sec_per_iter": res.sec_per_iter,
        }

    for name, switches in variants.items():
        out[name] = cached(name, lambda name=name, switches=switches: run(name, switches))
    return out


def photo_setup(args, device: str, workdir: Path) -> dict:
    """The photo task's pretrained source DDPM (``workdir/photo_source``) and patch CNN
    (``workdir/photo_patch_cnn``), each trained once and then loaded from its cache."""
    from tan_transfer import PatchCNNConfig, patch_cnn, photo_patch_task, pretrain_source

    source = photo_patch_task(shots=args.shots).source
    bundle = pretrain_source(source, out_dir=workdir / "photo_source", steps=args.source_steps, device=device)
    features = patch_cnn(
        workdir / "photo_patch_cnn", PatchCNNConfig(steps=args.patch_cnn_steps), device=device
    )
    return {"bundle": bundle, "patch_features": features}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ratios(v: dict) -> dict[str, float]:
    """Headline ratios of the trained variants (spec §6)."""
    return {
        "proxy_fid_tan_over_finetune_full": v["tan_adapter"]["proxy_fid"] / v["finetune_full"]["proxy_fid"],
        "proxy_fid_tan_over_finetune_adapter": v["tan_adapter"]["proxy_fid"]
        / v["finetune_adapter"]["proxy_fid"],
        "proxy_fid_adapter_over_finetune_full": v["finetune_adapter"]["proxy_fid"]
        / v["finetune_full"]["proxy_fid"],
        "intra_dist_tan_over_finetune_full": v["tan_adapter"]["intra_dist"]
        / v["finetune_full"]["intra_dist"],
        "target_class_rate_tan_over_finetune_full": (
            v["tan_adapter"]["target_class_rate"] / v["finetune_full"]["target_class_rate"]
            if v["finetune_full"]["target_class_rate"] > 0
            else float("inf")
            if v["tan_adapter"]["target_class_rate"] > 0
            else float("nan")
        ),
        "sec_per_iter_tan_over_adapter": v["tan_adapter"]["sec_per_iter"]
        / v["finetune_adapter"]["sec_per_iter"],
    }


def _summary(per_seed: list[dict], variants: dict) -> tuple[dict, dict, dict]:
    """Mean and std over seeds of every variant's figures, and the headline ratios (all trained variants run)."""
    names = ["source_only", *variants]
    keys = ("proxy_fid", "intra_dist", "target_class_rate", "copy_rate", "trainable_fraction", "sec_per_iter")
    table, spread = {}, {}
    for name in names:
        table[name], spread[name] = {}, {}
        for key in keys:
            mean, std = _mean_std([s[name][key] for s in per_seed])
            table[name][key] = round(mean, 5)
            spread[name][key] = round(std, 5)
    ratios = _ratios(table) if set(VARIANTS) <= set(variants) else {}  # a --variants subset: table only
    return table, spread, ratios


def _targets_met(ratios: dict[str, float]) -> dict[str, bool]:
    met = {}
    for name, (op, bound) in TARGETS.items():
        if name in ratios:
            met[name] = bool(ratios[name] <= bound if op == "<=" else ratios[name] >= bound)
    return met


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--task", choices=("digits", "photo", "both"), default=None, help="default: digits quick, both full"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument(
        "--seed-list",
        default=None,
        help="comma-separated seeds to run instead of 0..seeds-1 (split a full run over processes sharing --out)",
    )
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=40)
    p.add_argument("--ascent-steps", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--source-steps", type=int, default=None, help="photo source DDPM pretraining steps")
    p.add_argument("--patch-cnn-steps", type=int, default=None, help="photo patch-CNN training steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=5.0)
    p.add_argument(
        "--guidance-reference-dim",
        type=int,
        default=PAPER_PIXELS,
        help="rescale gamma by sqrt(D / this); default 196608 = the paper's 3x256x256 pixels; 0: gamma as given",
    )
    p.add_argument(
        "--ascent-norm",
        choices=("standard", "match_initial"),
        default="match_initial",
        help="TANConfig.ascent_norm after each adversarial-noise step (default match_initial; the paper's: standard)",
    )
    p.add_argument("--variants", default=None, help="comma-separated subset of the trained variants to run")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep the runs here and continue them on a rerun (default: a temporary folder)",
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=None, help="training checkpoints (default: 0 quick, 25 full)"
    )
    args = p.parse_args(argv)
    quick = {
        "seeds": 1,
        "iterations": 10,
        "batch_size": 10,
        "ascent_steps": 2,
        "samples": 64,
        "steps": 10,
        "classifier_steps": 30,
        "checkpoint_every": 0,
        "task": "digits",
        "source_steps": 300,
        "patch_cnn_steps": 200,
    }
    full = {
        "seeds": 3,
        "iterations": 300,
        "batch_size": 40,
        "ascent_steps": 10,
        "samples": 1000,
        "steps": 100,
        "classifier_steps": 300,
        "checkpoint_every": 25,
        "task": "both",
        "source_steps": 4000,
        "patch_cnn_steps": 1500,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    from difflab_core.device import resolve_device
    from difflab_core.testbed import digits_ddpm

    device = str(resolve_device(args.device))
    variants = dict(VARIANTS) | ({} if args.quick else FULL_ONLY)
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    start = time.perf_counter()
    run_digits, run_photo = args.task in ("digits", "both"), args.task in ("photo", "both")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or Path(tmp)
        per_seed = [run_seed(args, seed, variants, device, workdir) for seed in seeds] if run_digits else []
        photo = photo_setup(args, device, workdir) if run_photo else None
        photo_seeds = [run_seed(args, s, variants, device, workdir, photo) for s in seeds] if photo else []
    settings = {
        "batch_size": args.batch_size,
        "ascent_steps": args.ascent_steps,
        "samples": args.samples,
        "sampler": f"DDIM eta=1, {args.steps} steps",
        "lr": args.lr,
        "gamma": args.gamma,
        "guidance_reference_dim": args.guidance_reference_dim,
        "ascent_norm": args.ascent_norm,
        "classifier_steps": args.classifier_steps,
        "seeds": len(seeds),
    }
    result = {
        "task": "digits01234->9" if run_digits else "photo-patches->grass",
        "device": device,
        "quick": bool(args.quick),
        "seed": seeds if len(seeds) > 1 else seeds[0],
        "shots": args.shots,
        "iterations": args.iterations,
    }
    if run_digits:
        table, spread, ratios = _summary(per_seed, variants)
        fractions = church_fractions()
        ratios |= {
            "trainable_fraction_ant_church_config": fractions["ant"],
            "trainable_fraction_lora_r4_church_config": fractions["lora"],
        }
        ratios = {k: round(x, 4) for k, x in ratios.items()}
        result |= {
            "source_pretrain_steps": digits_ddpm((0, 1, 2, 3, 4)).card.get("steps"),
            "variants": table,
            "ratios": ratios,
            "targets_met": _targets_met(ratios),
            "settings": settings
            | {"classifier_heldout_accuracy_by_t": per_seed[0]["classifier_heldout_accuracy_by_t"]},
        }
        if len(seeds) > 1:
            result["std"] = spread
    if photo is not None:
        table, spread, ratios = _summary(photo_seeds, variants)
        ratios = {k: round(x, 4) for k, x in ratios.items()}
        card = photo["patch_features"].card
        result["photo"] = {
            "task": "photo-patches->grass",
            "variants": table,
            "ratios": ratios,
            "targets_met": _targets_met(ratios),
            "settings": settings
            | {
                "source_pretrain_steps": args.source_steps,
                "patch_cnn_steps": args.patch_cnn_steps,
                "patch_cnn_heldout_balanced_accuracy": card["heldout_balanced_accuracy"],
                "patch_cnn_heldout_grass_accuracy": card["heldout_accuracy_by_class"]["grass"],
                "classifier_heldout_accuracy_by_t": photo_seeds[0]["classifier_heldout_accuracy_by_t"],
            },
        }
        if len(seeds) > 1:
            result["photo"]["std"] = spread
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
