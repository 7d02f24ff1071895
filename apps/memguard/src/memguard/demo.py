"""``memguard demo``: the whole story on the embedded memorization testbed, every figure measured now.

Stages (each cached under ``OUT/cache/steps<N>-n<n>/`` and resumed on the next run):

1. audit every testbed prompt with BE, Wen and Ren (mem-locate), saving images and BE maps;
2. score detection (AUC, TPR@1%FPR, ROC) and BE localization against the testbed's ground truth;
3. flag prompts above the clean prompts' score quantile (mem-locate `flag_prompts`);
4. mitigate the flagged prompts with BE-masked prompt-embedding optimisation (mem-locate) and with
   Anti-Memorization Guidance (guidance-kit) at the same seeds;
5. judge every image with the testbed's copy rule before and after;
6. audit mem-video's planted sprite-video testbed for content and motion copies (a folder audit);
7. write ``report.json`` + ``report.html``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab_core.cli import status

DETECTORS = ("be", "wen", "ren_le", "ren_ae")
MITIGATIONS = ("be-pe", "pe", "amg")


@dataclass
class DemoConfig:
    """Demo settings. ``None`` picks the mode's default: quick = 20 steps, 1 image per prompt; full = the
    testbed's audit setting (50 DDIM steps), 2 images per prompt. Every flagged prompt is mitigated unless
    ``max_mitigated`` caps them (highest scores first)."""

    out: Path = Path("memguard-demo")
    quick: bool = False
    steps: int | None = None
    images_per_prompt: int | None = None
    flag_method: str = "ren_ae"
    flag_quantile: float = 0.95
    max_mitigated: int | None = None
    mitigations: tuple[str, ...] = ("be-pe", "amg")
    device: str = "auto"
    video: bool = True

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def resolved(self, audit_steps: int) -> DemoConfig:
        """A copy with the mode defaults filled in, validated."""
        from difflab_core.errors import DifflabError

        cfg = DemoConfig(**asdict(self))
        cfg.steps = cfg.steps or (20 if cfg.quick else audit_steps)
        cfg.images_per_prompt = cfg.images_per_prompt or (1 if cfg.quick else 2)
        if cfg.steps < 2:
            raise DifflabError(f"steps must be ≥ 2, got {cfg.steps}")
        if cfg.flag_method not in DETECTORS:
            raise DifflabError(f"flag_method={cfg.flag_method!r}: use one of {', '.join(DETECTORS)}")
        bad = [m for m in cfg.mitigations if m not in MITIGATIONS]
        if bad:
            raise DifflabError(f"mitigations {bad}: use any of {', '.join(MITIGATIONS)}")
        return cfg


@dataclass
class DemoResult:
    """What `run_demo` returns: the figures (as written to ``report.json``) and the report paths."""

    figures: dict[str, Any]
    report_html: Path
    report_json: Path


def run_demo(config: DemoConfig, *, progress: bool = True) -> DemoResult:
    """Run (or resume) the demo and write the report; see the module docstring."""
    from difflab_core.testbed import load_memorization_testbed

    with status("loading the memorization testbed", progress):
        tb = load_memorization_testbed(device=config.device)
        tb.pipe.set_progress_bar_config(disable=True)
    cfg = config.resolved(tb.audit.num_inference_steps)
    work = Path(cfg.out) / "cache" / f"steps{cfg.steps}-n{cfg.images_per_prompt}"
    work.mkdir(parents=True, exist_ok=True)

    run, records = _audit(tb, cfg, work, progress)
    figures: dict[str, Any] = {
        "mode": cfg.mode,
        "num_inference_steps": cfg.steps,
        "images_per_prompt": cfg.images_per_prompt,
        "guidance_scale": tb.audit.guidance_scale,
        "n_prompts": {k: sum(r["kind"] == k for r in records) for k in ("global", "local", "none")},
    }
    detection, curves = _detection(records)
    figures.update(detection)
    figures.update(_localization(tb, run, records))
    flags, verdicts_before = _flags_and_verdicts(tb, cfg, run, records)
    figures.update(flags["figures"])
    mitigation = _mitigate(tb, cfg, work, run, records, flags, progress)
    figures.update(_before_after(records, verdicts_before, mitigation, flags))
    if cfg.video:
        with status("auditing the planted video testbed", progress):
            figures.update(_video(Path(cfg.out) / "cache"))

    from .demo_report import write_report

    html_path, json_path = write_report(
        Path(cfg.out),
        cfg,
        tb,
        run,
        records,
        figures,
        curves=curves,
        verdicts_before=verdicts_before,
        mitigation=mitigation,
        flags=flags,
    )
    return DemoResult(figures, html_path, json_path)


# ---------------------------------------------------------------------------------------------- stages
def _audit(tb, cfg: DemoConfig, work: Path, progress: bool):
    from mem_locate.data import PromptRecord, load_run
    from mem_locate.detect import AuditConfig, Auditor

    prompts = [
        PromptRecord(key=r.key, caption=r.caption, label=int(r.kind != "none"), kind=r.kind, type=r.kind)
        for r in tb.records
    ]
    audit_cfg = AuditConfig(
        num_inference_steps=cfg.steps,
        guidance_scale=tb.audit.guidance_scale,
        guidance_rescale=tb.audit.guidance_rescale,
        num_images_per_prompt=cfg.images_per_prompt,
        methods=("be", "wen", "ren"),
        ren_modes=("le", "ae"),
        save_images=True,
        batch_prompts=8,
    )
    result = Auditor(tb.pipe, audit_cfg).run(prompts, work / "audit", progress=progress)
    order = {p.key: i for i, p in enumerate(prompts)}
    records = sorted(result.usable(), key=lambda r: order[r["key"]])
    return load_run(work / "audit"), records


def _detection(records: list[dict]) -> tuple[dict, dict]:
    from difflab_core.metrics import roc_curve
    from mem_locate.detect import aggregate
    from mem_locate.evaluate import detection_table

    scores = {m: aggregate(records, m) for m in DETECTORS}
    table = detection_table(records, scores)
    labels = np.asarray([r["label"] for r in records])
    curves = {}
    for m, s in scores.items():
        fpr, tpr, _ = roc_curve(s, labels)
        curves[m] = (fpr.tolist(), tpr.tolist())
    return table, curves


def _localization(tb, run, records: list[dict]) -> dict:
    from mem_locate.evaluate import localization_metrics

    index = {r.key: i for i, r in enumerate(tb.records)}
    maps, masks, groups, strata = [], [], [], []
    for r in records:
        if r["kind"] not in ("local", "none"):
            continue
        m = run.map(r["key"])
        for j in range(m.shape[0]):
            maps.append(m[j])
            masks.append(tb.masks[index[r["key"]]])
            groups.append(r["key"])
            strata.append(r["kind"])
    loc = localization_metrics(maps, masks, size=tb.masks.shape[-1], groups=groups, strata=strata)
    return {
        "loc_local_auroc": loc["auroc"],
        "loc_local_best_iou": loc["best_iou"],
        "loc_local_heldout_iou": loc["heldout_iou"],
    }


def _flags_and_verdicts(tb, cfg: DemoConfig, run, records: list[dict]):
    from difflab_core.testbed.verify import memorization_verdicts
    from mem_locate.detect import flag_prompts

    flags = flag_prompts(records, cfg.flag_method, quantile=cfg.flag_quantile)
    index = {r.key: i for i, r in enumerate(tb.records)}
    verdicts = {}
    for r in records:
        images = run.images(r["key"])
        v = memorization_verdicts(tb, images, [index[r["key"]]] * len(images))
        verdicts[r["key"]] = v["copied"].tolist()
    flagged = [r["key"] for r, f in zip(records, flags.flagged, strict=True) if f]
    labels = np.asarray([r["label"] for r in records])
    figures = {
        "flag_method": cfg.flag_method,
        "flag_threshold": flags.threshold,
        "flag_quantile": flags.quantile,
        "n_flagged": len(flagged),
        "flag_recall": float(flags.flagged[labels == 1].mean()),
        "flag_false_positive_rate": float(flags.flagged[labels == 0].mean()),
    }
    order = np.argsort(-flags.scores, kind="stable")
    chosen = [records[i]["key"] for i in order if flags.flagged[i]]
    if cfg.max_mitigated is not None:
        chosen = chosen[: cfg.max_mitigated]
    return {"figures": figures, "flagged": flagged, "mitigated": chosen, "flags": flags}, verdicts


def _mitigate(tb, cfg: DemoConfig, work: Path, run, records: list[dict], flags: dict, progress: bool) -> dict:
    """Mitigate each chosen flagged prompt with each method; rows are cached in ``work/mitigation``."""
    from difflab_core.report import to_pil
    from difflab_core.store import ResultStore, write_run_config
    from difflab_core.testbed.verify import memorization_verdicts
    from mem_locate.data import read_image

    by_key = {r["key"]: r for r in records}
    index = {r.key: i for i, r in enumerate(tb.records)}
    out = work / "mitigation"
    write_run_config(out, {"steps": cfg.steps, "n": cfg.images_per_prompt, "pe_target_loss": 0.0})
    store = ResultStore(out)
    jobs = [(m, k) for k in flags["mitigated"] for m in cfg.mitigations if not store.done(f"{m}/{k}")]
    runners = {"be-pe": _prompt_embedding(True), "pe": _prompt_embedding(False), "amg": _amg}
    context: dict[str, Any] = {}
    if jobs and progress:
        from rich.progress import track

        jobs = track(
            jobs, description=f"mitigating {len(flags['mitigated'])} flagged prompts", transient=True
        )
    for method, key in jobs:
        rec = by_key[key]
        images, info = runners[method](tb, cfg, run, records, rec, context, work)
        verdict = memorization_verdicts(tb, images, [index[key]] * len(images))
        files = []
        (out / "images").mkdir(exist_ok=True)
        for j, img in enumerate(images):
            name = f"images/{method}_{index[key]}_{j}.png"
            to_pil(img.float().cpu()).save(out / name)
            files.append(name)
        store.append(
            {"key": f"{method}/{key}", "method": method, "prompt_key": key, "kind": rec["kind"]}
            | {"copied": verdict["copied"].tolist(), "rmse": verdict["rmse"].tolist(), "files": files}
            | info
        )
    rows = {}
    for row in store.records():
        if row["prompt_key"] in flags["mitigated"] and row["method"] in cfg.mitigations:
            row["images"] = torch.stack([read_image(out / f) for f in row["files"]])
            rows[row["key"]] = row
    return rows


def _prompt_embedding(masked: bool):
    """BE-PE (``masked``) or Wen's PE on a flagged prompt. The audit's flag replaces PE's own step-0 gate
    (target_loss 0: all I iterations run); the 'auto' target is recorded, with whether it would have fired."""

    def run(tb, cfg: DemoConfig, run, records, rec, context, work):
        from mem_locate.mitigate import MitigationConfig, auto_target_loss, mitigate

        key = f"auto_target_{masked}"
        if key not in context:  # once per demo run, not once per prompt
            context[key] = auto_target_loss(records, masked=masked)
        auto = context[key]
        mcfg = MitigationConfig(
            num_inference_steps=cfg.steps,
            guidance_scale=tb.audit.guidance_scale,
            num_images_per_prompt=cfg.images_per_prompt,
            target_loss=0.0,
        )
        mask = run.map(rec["key"]) if masked else None
        method = "be-pe" if masked else "pe"
        res = mitigate(tb.pipe, rec["prompt"], method=method, config=mcfg, mask=mask, seed=rec["seed"])
        info = {
            "auto_target_loss": auto,
            "auto_would_trigger": res.loss_before > auto,
            "loss_before": res.loss_before,
            "loss_after": res.loss_after,
            "iterations": res.iterations,
        }
        return res.images, info

    return run


def _amg(tb, cfg: DemoConfig, run, records, rec, context, work):
    from guidance_kit import generate_with_amg
    from mem_locate.localize import draw_latents

    if "amg_index" not in context:
        context["amg_index"], context["amg_captions"] = _amg_index(tb, work)
        context["amg_config"] = _amg_config(tb, cfg, work, context["amg_index"])
    latents, _ = draw_latents(tb.pipe, [rec["seed"]], cfg.images_per_prompt)  # the audit's initial noise
    result = generate_with_amg(
        tb.pipe,
        [rec["prompt"]] * cfg.images_per_prompt,
        index=context["amg_index"],
        captions=context["amg_captions"],
        seeds=[rec["seed"]],
        config=context["amg_config"],
        latents=latents,
        num_inference_steps=cfg.steps,
        guidance_scale=tb.audit.guidance_scale,
    )
    fired = {
        name: sum(bool(getattr(r, f"fired_{name}")) for r in result.records) for name in ("spe", "dup", "sim")
    }
    return result.images, {"amg_fired_steps": fired, "triggered": any(fired.values())}


def _amg_config(tb, cfg: DemoConfig, work: Path, index):
    """AMG's detection floor calibrated on the testbed's novel prompts (guidance-kit `calibrate`: the 99%
    quantile of σ on clean generations), cached beside the mitigation rows."""
    from guidance_kit import AMGConfig, calibrate

    path = work / "amg-calibration.json"
    if path.is_file():
        return AMGConfig(lambda_floor=json.loads(path.read_text())["lambda_floor"])
    config = calibrate(
        tb.pipe,
        index,
        tb.prompts("none")[:8],
        seeds=[10_000],
        num_inference_steps=cfg.steps,
        guidance_scale=tb.audit.guidance_scale,
    )
    path.write_text(json.dumps({"lambda_floor": config.lambda_floor, "clean_prompts": 8, "seed": 10_000}))
    return config


def _amg_index(tb, work: Path):
    """guidance-kit's retrieval index and caption statistics of the testbed's training set (built once)."""
    from guidance_kit import CaptionStats, NeighbourIndex

    root = work.parent / "amg-index"
    if not (root / "manifest.json").is_file():
        NeighbourIndex.build(tb.train_images, root)
    index = NeighbourIndex.load(root)
    if not (root / "captions.parquet").is_file():
        CaptionStats.build(list(tb.captions), index, root)
    return index, CaptionStats.load(root)


def _before_after(records, verdicts_before: dict, mitigation: dict, flags: dict) -> dict:
    """Memorized fraction of the mitigated prompts' images before and after each method, and of the whole
    testbed once flagged prompts are generated with mitigation."""
    keys = flags["mitigated"]
    out: dict[str, Any] = {"n_mitigated": len(keys)}
    before = [c for k in keys for c in verdicts_before[k]]
    out["memorized_fraction_before"] = float(np.mean(before)) if before else None
    by_kind = {r["key"]: r["kind"] for r in records}
    for kind in ("global", "local"):
        ks = [k for k in keys if by_kind[k] == kind]
        out[f"n_mitigated_{kind}"] = len(ks)
        got = [c for k in ks for c in verdicts_before[k]]
        out[f"memorized_fraction_before_{kind}"] = float(np.mean(got)) if got else None
    all_before = [c for r in records for c in verdicts_before[r["key"]]]
    out["testbed_memorized_fraction_before"] = float(np.mean(all_before))
    methods = sorted({row["method"] for row in mitigation.values()})
    for method in methods:
        after = [c for k in keys for c in mitigation.get(f"{method}/{k}", {}).get("copied", [])]
        tag = method.replace("-", "_")
        out[f"memorized_fraction_after_{tag}"] = float(np.mean(after)) if after else None
        whole = []
        for r in records:
            row = mitigation.get(f"{method}/{r['key']}")
            whole.extend(row["copied"] if row else verdicts_before[r["key"]])
        out[f"testbed_memorized_fraction_after_{tag}"] = float(np.mean(whole))
        for kind in ("global", "local"):
            ks = [k for k in keys if by_kind[k] == kind]
            got = [c for k in ks for c in mitigation.get(f"{method}/{k}", {}).get("copied", [])]
            out[f"memorized_fraction_after_{tag}_{kind}"] = float(np.mean(got)) if got else None
        if method == "amg":
            out["amg_fired_prompts"] = int(sum(bool(mitigation[f"amg/{k}"].get("triggered")) for k in keys))
        else:
            rows = [mitigation[f"{method}/{k}"] for k in keys]
            out[f"{tag}_auto_target_would_trigger"] = int(sum(bool(r["auto_would_trigger"]) for r in rows))
    return out


def _video(cache: Path) -> dict:
    """The folder video audit (mem-video) on its planted sprite testbed, scored against the planted labels."""
    from mem_video import write_sprite_testbed

    from .video import run_video_audit

    root = cache / "video-testbed"
    if not (root / "labels.jsonl").is_file():
        write_sprite_testbed(root, per_type=2, n_train=8)
    labels = {row["id"]: row for row in map(json.loads, (root / "labels.jsonl").read_text().splitlines())}
    summary = run_video_audit(
        root / "training",
        cache / "video-audit",
        generated=root / "generated",
        flow_size=(64, 64),
        content_fps=None,
    )
    rows = [json.loads(line) for line in (cache / "video-audit" / "scores.jsonl").read_text().splitlines()]
    out: dict[str, Any] = {"video_n_videos": summary["n_videos"]}
    for what, flag in (("content", "content_mem"), ("motion", "motion_mem")):
        truth = np.asarray([bool(labels[r["id"]][what]) for r in rows])
        found = np.asarray([bool(r[flag]) for r in rows])
        out[f"video_{what}_recall"] = float(found[truth].mean()) if truth.any() else None
        out[f"video_{what}_false_positive_rate"] = float(found[~truth].mean()) if (~truth).any() else None
    natural = [r for r in rows if labels[r["id"]]["type"] in ("static", "pan")]
    out["video_static_or_pan_called_motion_copies"] = int(sum(bool(r["motion_mem"]) for r in natural))
    return out
