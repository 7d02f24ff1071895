"""The extraction audit: generate videos with a local diffusers video pipeline (or read a folder), match them
against training indexes for content and motion memorization, and write resumable per-video rows, a summary
and an HTML report (spec 2.4)."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from difflab_core.report import HtmlReport, image_grid, write_json
from difflab_core.store import ResultStore, write_run_config

from .embed import SSCD_TAU_STRICT, check_tau
from .errors import MemVideoError, core_errors
from .flow import video_flows
from .index import VideoIndex, distributed_state
from .io import VIDEO_SUFFIXES, VideoClip, read_video, to_clips, write_video
from .motion import NaturalMotionFilter
from .sources import training_folder_sources

__all__ = [
    "MEM_TYPES",
    "AuditReport",
    "audit",
    "audit_videos",
    "generate_videos",
    "read_prompts",
    "score_clip",
]

MEM_TYPES = ("none", "content", "motion", "both")


@dataclass
class AuditReport:
    """``rows`` (one dict per generated video, as in ``scores.jsonl``), ``summary`` (as in ``summary.json``)
    and the written paths."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)


def read_prompts(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Prompts from JSONL or CSV: ``prompt_id``, ``prompt``, optional ``label``, ``source``,
    ``negative_prompt``. A plain text file gives one prompt per line (ids p0000, ...)."""
    p = Path(path)
    if not p.is_file():
        raise MemVideoError(f"{p}: prompt file does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise MemVideoError(f"{p}: line {n} is not JSON ({exc})") from exc
    elif p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        rows = [{"prompt_id": f"p{n:04d}", "prompt": line} for n, line in enumerate(lines)]
    for n, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt" not in r:
            raise MemVideoError(f"{p}: row {n + 1} has no 'prompt' field (expected prompt_id, prompt)")
        r.setdefault("prompt_id", f"p{n:04d}")
        r["prompt_id"] = str(r["prompt_id"])
    if not rows:
        raise MemVideoError(f"{p}: no prompts found")
    return rows


def _prompt_rows(prompts: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n, p in enumerate(prompts):
        row = {"prompt_id": f"p{n:04d}", "prompt": p} if isinstance(p, str) else dict(p)
        if "prompt" not in row:
            raise MemVideoError(f"prompts[{n}] has no 'prompt'")
        row["prompt_id"] = str(row.get("prompt_id", f"p{n:04d}"))
        rows.append(row)
    return rows


def generate_videos(
    pipe,
    prompts: Sequence[str | dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    num_videos_per_prompt: int = 4,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    num_frames: int = 16,
    height: int | None = None,
    width: int | None = None,
    fps: float = 8.0,
    pipe_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``num_videos_per_prompt`` videos per prompt with a diffusers video pipeline.

    Writes ``out_dir/videos/{prompt_id}_{k}.mp4`` and one ``generations.jsonl`` row per video; a rerun skips
    finished ``(prompt_id, k)``. Seeds are ``seed + prompt_index·1000 + k``. Under ``accelerate launch`` each
    rank generates its share into ``generations.rank{r}.jsonl`` and rank 0 merges. Returns all rows.
    """
    from difflab_core.device import generator

    rows = _prompt_rows(prompts)
    out = Path(out_dir)
    rank, _, state = distributed_state()
    jobs = [(n, row, k) for n, row in enumerate(rows) for k in range(num_videos_per_prompt)]
    if state is not None:
        with state.split_between_processes(jobs) as mine:
            jobs = list(mine)
    store = ResultStore(out, name="generations", key="key", rank=rank)
    device = getattr(pipe, "device", torch.device("cpu"))
    kwargs = dict(pipe_kwargs or {})
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if height is not None:
        kwargs["height"] = height
    if width is not None:
        kwargs["width"] = width
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        for n, row, k in jobs:
            key = f"{row['prompt_id']}_{k}"
            if store.done(key):
                continue
            s = seed + n * 1000 + k
            call = dict(kwargs)
            if row.get("negative_prompt"):
                call["negative_prompt"] = row["negative_prompt"]
            out_ = pipe(
                prompt=row["prompt"],
                num_frames=num_frames,
                num_inference_steps=num_inference_steps,
                generator=generator(s, device if device.type != "mps" else "cpu"),
                output_type="np",
                **call,
            )
            clip = to_clips(out_, fps=fps)[0]
            path = write_video(out / "videos" / f"{key}.mp4", _even(clip))
            store.append(
                {
                    "key": key,
                    "prompt_id": row["prompt_id"],
                    "prompt": row["prompt"],
                    "k": k,
                    "seed": s,
                    "path": str(path.relative_to(out)),
                    "label": row.get("label"),
                }
            )
    if state is not None:
        state.wait_for_everyone()
    if rank in (None, 0):
        ResultStore(out, name="generations", key="key").merge()
    return ResultStore(out, name="generations", key="key").records()


def _even(clip: VideoClip) -> VideoClip:
    h, w = clip.size
    if h % 2 == 0 and w % 2 == 0:
        return clip
    return VideoClip(clip.frames[..., : h - h % 2, : w - w % 2], clip.fps, clip.id, clip.source, clip.meta)


def _generated_items(generated) -> list[tuple[str, dict[str, Any], Any]]:
    """(id, extra fields, clip or path) for a folder, a generations folder, or a list of clips."""
    if isinstance(generated, (str, os.PathLike)):
        g = Path(generated)
        if not g.is_dir():
            raise MemVideoError(f"{g}: generated-video folder does not exist")
        if (g / "generations.jsonl").is_file():
            recs = ResultStore(g, name="generations", key="key").records()
            return [
                (r["key"], {"prompt_id": r.get("prompt_id"), "prompt": r.get("prompt")}, g / r["path"])
                for r in recs
            ]
        files = sorted(
            p
            for p in g.rglob("*")
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and ".tmp" not in p.name
        )
        dirs = sorted(p for p in g.iterdir() if p.is_dir() and any(p.glob("*.png")))
        if not files and not dirs:
            raise MemVideoError(f"{g}: no videos found ({', '.join(VIDEO_SUFFIXES)} or frame folders)")
        return [(str(p.relative_to(g).with_suffix("")), {}, p) for p in files + dirs]
    items = []
    for n, c in enumerate(generated):
        if not isinstance(c, VideoClip):
            raise MemVideoError(
                f"generated[{n}] is a {type(c).__name__}, expected a VideoClip or a folder path"
            )
        items.append((c.id or f"video_{n:04d}", {"prompt_id": c.meta.get("prompt_id")}, c))
    return items


def score_clip(
    clip: VideoClip,
    indexes: Sequence[VideoIndex],
    *,
    tau_c: float,
    tau_m: float = 0.6,
    k: int | str = 8,
    top_n: int = 5,
    nmf: NaturalMotionFilter | None = None,
    weighted: bool = False,
) -> dict[str, Any]:
    """Content and motion scores of one generated clip against the indexes (spec 2.4); all frames are embedded."""
    from .content import video_level_match

    first = indexes[0]
    nmf = nmf or NaturalMotionFilter(**first.settings["nmf"])
    emb = first.embedder.embed(clip.frames)
    content_hits = sorted(
        (h for ix in indexes for h in ix.search_content(emb, top_n, tau_c)), key=lambda h: -h.score
    )
    row: dict[str, Any] = {"frames": clip.num_frames}
    top = content_hits[0] if content_hits else None
    row["content_score"] = top.score if top else None
    row["coverage"] = top.coverage if top else 0.0
    row["content_ref"] = top.item if top else None
    row["content_frame_pair"] = [top.i, top.j] if top else None
    row["content_source"] = top.kind if top else None
    row["content_top"] = [asdict(h) for h in content_hits[:top_n]]
    if top is not None:
        ix = next(ix for ix in indexes if any(r["id"] == top.item for r in ix.items))
        row["video_level_score"] = video_level_match(
            emb, ix.content[ix.frame_to_item == _item_pos(ix, top.item)]
        ).score
    else:
        row["video_level_score"] = None
    s = first.settings
    row.update(
        motion_score=None,
        motion_ref=None,
        motion_offset=None,
        motion_start=None,
        natural=None,
        motion_score_raw=None,
    )
    if clip.num_frames >= 2:
        flows = video_flows(clip, first.flow, tuple(s["flow_size"]), s["motion_fps"], s["grid"])
        verdict = nmf.classify(flows)
        row["natural"] = verdict.reason
        row["nmf_residual"] = verdict.residual
        row["moving_frac"] = verdict.moving_frac
        query = nmf.object_motion(flows) if (nmf.mode == "residual" and verdict.reason == "camera") else flows
        hits = sorted(
            (h for ix in indexes for h in ix.search_motion(query, top_n, k, weighted=weighted)),
            key=lambda h: -h.score,
        )
        if hits:
            row["motion_score_raw"] = hits[0].score
            row["motion_top"] = [asdict(h) for h in hits[:top_n]]
            if not verdict.natural or nmf.mode == "residual":
                h = hits[0]
                row.update(
                    motion_score=h.score,
                    motion_ref=h.item,
                    motion_offset=h.offset,
                    motion_start=h.start,
                    motion_clip_start=h.clip_start,
                )
    row["content_mem"] = bool(row["content_score"] is not None and row["content_score"] >= tau_c)
    row["motion_mem"] = bool(row["motion_score"] is not None and row["motion_score"] >= tau_m)
    row["type"] = MEM_TYPES[int(row["content_mem"]) + 2 * int(row["motion_mem"])]
    return row


def _item_pos(ix: VideoIndex, item: str) -> int:
    return next(n for n, r in enumerate(ix.items) if r["id"] == item)


def audit(
    generated,
    indexes: VideoIndex | Sequence[VideoIndex] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    tau_c: float | None = None,
    tau_m: float = 0.6,
    k: int | str = 8,
    top_n: int = 5,
    nmf: NaturalMotionFilter | None = None,
    weighted: bool = False,
    report: bool = True,
) -> AuditReport:
    """Score every generated video against the indexes.

    Args:
        generated: a folder of videos or frame folders, a `generate_videos` output folder, or a list of clips.
        indexes: a `VideoIndex`, a list of them (content matches search all; motion uses their flows), or
            an index folder path.
        tau_c: content threshold (None: the embedder's default, 0.85 tiny / 0.5 SSCD).
        tau_m: motion threshold (testbed default 0.6; calibrate with `calibrate_threshold`).
        k: OFS window in transitions, or "all". nmf: natural-motion filter (None: the index's).

    Writes ``scores.jsonl`` (resumable by video id; ``scores.rank{r}.jsonl`` under accelerate),
    ``summary.json`` and ``report.html`` into ``out_dir``.
    """
    if isinstance(indexes, (str, os.PathLike)):
        indexes = [VideoIndex.open(indexes)]
    elif isinstance(indexes, VideoIndex):
        indexes = [indexes]
    indexes = list(indexes)
    if not indexes:
        raise MemVideoError("audit: no index given")
    tau = check_tau(indexes[0].embedder, tau_c)
    out = Path(out_dir)
    config = {
        "tau_c": tau,
        "tau_m": tau_m,
        "k": k,
        "top_n": top_n,
        "weighted": weighted,
        "nmf": asdict(nmf) if nmf else indexes[0].settings["nmf"],
        "indexes": [str(ix.directory) for ix in indexes],
        "index_settings": indexes[0].settings,
    }
    rank, _, state = distributed_state()
    if rank in (None, 0):
        with core_errors():
            write_run_config(out, config)
    items = _generated_items(generated)
    if state is not None:
        state.wait_for_everyone()
        with state.split_between_processes(items) as mine:
            items = list(mine)
    store = ResultStore(out, name="scores", key="id", rank=rank)
    for vid, extra, src in items:
        if store.done(vid):
            continue
        clip = src if isinstance(src, VideoClip) else read_video(src)
        row = {"id": vid, **{k_: v for k_, v in extra.items() if v is not None}}
        if isinstance(src, Path):
            row["path"] = str(src)
        row.update(
            score_clip(clip, indexes, tau_c=tau, tau_m=tau_m, k=k, top_n=top_n, nmf=nmf, weighted=weighted)
        )
        store.append(row)
    if state is not None:
        state.wait_for_everyone()
    paths: dict[str, str] = {}
    if rank in (None, 0):
        merged = ResultStore(out, name="scores", key="id")
        merged.merge()
        rows = merged.records()
        summary = summarize(rows, config)
        paths["scores"] = str(out / "scores.jsonl")
        paths["summary"] = str(write_json(out / "summary.json", summary))
        if report:
            clips = {c.id: c for c in generated} if not isinstance(generated, (str, os.PathLike)) else {}
            paths["report"] = str(_write_report(out / "report.html", rows, summary, indexes, clips))
        return AuditReport(rows, summary, paths)
    return AuditReport([], {}, paths)


def summarize(rows: list[dict[str, Any]], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-audit rates of each memorization type, the share of content copies from images, distinct training
    items extracted, and per-prompt max/mean scores."""
    n = len(rows)
    counts = {t: sum(r["type"] == t for r in rows) for t in MEM_TYPES}
    content = [r for r in rows if r["content_mem"]]
    from_images = sum(r.get("content_source") == "image" for r in content)
    extracted = {r["content_ref"] for r in content} | {r["motion_ref"] for r in rows if r["motion_mem"]}
    per_prompt: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"content": [], "motion": []})
    for r in rows:
        pid = r.get("prompt_id")
        if pid:
            per_prompt[pid]["content"].append(r["content_score"] or 0.0)
            per_prompt[pid]["motion"].append(r["motion_score"] if r["motion_score"] is not None else 0.0)
    prompts = {
        pid: {
            f"{m}_{agg}": (max(v) if agg == "max" else sum(v) / len(v))
            for m, v in d.items()
            for agg in ("max", "mean")
        }
        | {"n": len(d["content"])}
        for pid, d in per_prompt.items()
    }
    out = {
        "n_videos": n,
        "counts": counts,
        "rates": {t: (counts[t] / n if n else 0.0) for t in MEM_TYPES},
        "content_rate": len(content) / n if n else 0.0,
        "motion_rate": sum(r["motion_mem"] for r in rows) / n if n else 0.0,
        "natural": {k: sum(r.get("natural") == k for r in rows) for k in ("static", "camera")},
        "content_from_images_share": from_images / len(content) if content else 0.0,
        "distinct_training_items_extracted": len(extracted),
        "per_prompt": prompts,
    }
    if config is not None:
        out["config"] = config
        if config.get("index_settings", {}).get("embedder", {}).get("name") == "sscd":
            out["content_rate_strict"] = sum(
                (r["content_score"] or 0) >= SSCD_TAU_STRICT for r in rows
            ) / max(n, 1)
    return out


def _ref_frame(ix: VideoIndex, item: str, j: int):
    rec = ix.items[_item_pos(ix, item)]
    if not rec.get("path"):
        return None
    try:
        from .io import read_image

        clip = read_image(rec["path"]) if rec["kind"] == "image" else read_video(rec["path"])
    except MemVideoError:
        return None
    times = rec.get("content_frame_times") or [0.0]
    t = times[min(j, len(times) - 1)]
    return clip.frames[min(round(t * clip.fps), clip.num_frames - 1)]


def _write_report(path: Path, rows, summary, indexes, clips: dict[str, VideoClip]) -> Path:
    rep = HtmlReport("mem-video audit")
    rep.add_heading("Summary")
    rep.add_table(
        [{"type": t, "count": summary["counts"][t], "rate": round(summary["rates"][t], 4)} for t in MEM_TYPES]
    )
    rep.add_text(
        f"{summary['n_videos']} videos; content copies from images: {summary['content_from_images_share']:.2f}; "
        f"distinct training items extracted: {summary['distinct_training_items_extracted']}"
    )
    flagged = [r for r in rows if r["type"] != "none"]
    rep.add_heading("Best frame pairs of flagged videos")
    for r in flagged[:24]:
        gen = clips.get(r["id"])
        if gen is None and r.get("path"):
            try:
                gen = read_video(r["path"])
            except MemVideoError:
                gen = None
        if gen is None or r["content_frame_pair"] is None:
            continue
        i, j = r["content_frame_pair"]
        ix = next((ix for ix in indexes if any(it["id"] == r["content_ref"] for it in ix.items)), None)
        ref = _ref_frame(ix, r["content_ref"], j) if ix is not None else None
        tiles = [gen.frames[min(i, gen.num_frames - 1)]] + ([ref] if ref is not None else [])
        tiles = [torch.nn.functional.interpolate(t[None], size=(128, 128), mode="bilinear")[0] for t in tiles]
        caption = (
            f"{r['id']} [{r['type']}] content {r['content_score']:.3f} vs {r['content_ref']} "
            f"(frames {i}/{j}); motion {r['motion_score'] if r['motion_score'] is None else round(r['motion_score'], 3)}"
        )
        rep.add_image(image_grid(list(tiles), ncols=len(tiles)), caption=caption)
    rep.add_heading("All videos")
    keys = (
        "id",
        "type",
        "content_score",
        "coverage",
        "content_ref",
        "content_source",
        "video_level_score",
        "motion_score",
        "motion_ref",
        "natural",
    )
    rep.add_table([{k: r.get(k) for k in keys} for r in rows])
    return rep.save(path)


def audit_videos(
    generated_dir: str | os.PathLike[str],
    training_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    embedder: str = "tiny",
    flow: str = "farneback",
    tau_c: float | None = None,
    tau_m: float = 0.6,
    k: int | str = 8,
    top_n: int = 5,
    flow_size: tuple[int, int] = (256, 256),
    content_fps: float | None = 2.0,
    motion_fps: float | None = 8.0,
    grid: int = 32,
) -> dict[str, Any]:
    """One-call folder audit: index ``training_dir`` (videos and images, recursive) into ``out_dir/index``
    (resumable), audit ``generated_dir`` into ``out_dir`` and return the summary dict.

    For the sprite testbed (`write_sprite_testbed`) use ``flow_size=(64, 64), content_fps=None``.
    """
    out = Path(out_dir)
    index = VideoIndex.build(
        training_folder_sources(training_dir),
        out / "index",
        embedder,
        flow,
        content_fps=content_fps,
        motion_fps=motion_fps,
        flow_size=flow_size,
        grid=grid,
    )
    return audit(generated_dir, index, out, tau_c=tau_c, tau_m=tau_m, k=k, top_n=top_n).summary
