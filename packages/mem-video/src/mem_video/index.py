"""A local index of a training set: frame embeddings for content search and pooled flows for motion search.

Layout (one folder): ``build_config.json`` (guards resume), ``items.jsonl`` (one row per item: id, path,
caption, kind, frames, fps, clips with their NMF verdict, row ranges into its chunk), ``content-*.safetensors``
(float16 ``emb`` [N_frames,D] and ``frame_to_item``), ``motion-*.safetensors`` (float16 ``flows``
[N_transitions,2,G,G] and ``transition_to_clip``) and ``manifest.json``, written last.

Building is resumable (items are recorded after their chunk is renamed into place) and data-parallel under
``accelerate launch``: each rank writes ``items.rank{r}.jsonl`` and its own chunks; rank 0 merges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab_core.report import write_json
from difflab_core.store import ResultStore, write_run_config

from .content import ContentMatch
from .embed import FrameEmbedder, create_embedder, embedder_spec
from .errors import MemVideoError, core_errors
from .flow import FlowEstimator, create_flow, flow_spec, video_flows
from .io import resample_fps
from .motion import NaturalMotionFilter, diagonal_window_means, flow_similarity
from .sources import SourceItem

__all__ = ["FORMAT_VERSION", "ContentHit", "MotionHit", "VideoIndex", "distributed_state"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ContentHit:
    """Best frame match of a query against one indexed item."""

    item: str
    kind: str
    score: float
    i: int
    j: int
    coverage: float


@dataclass(frozen=True)
class MotionHit:
    """Best OFS-k window of a query against one indexed item (over its non-natural clips)."""

    item: str
    score: float
    offset: int
    start: int
    k: int
    clip_start: int


def distributed_state() -> tuple[int | None, int, Any]:
    """(rank or None when single-process, world size, accelerate ``PartialState`` or None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 1, None
    from difflab_core.device import process_state

    state = process_state()
    return state.process_index, state.num_processes, state


def _save_chunk(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class VideoIndex:
    """An opened index: concatenated content embeddings and motion flows with their item tables."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        items: list[dict[str, Any]],
        embedder: FrameEmbedder,
        flow: FlowEstimator,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.items = items
        self.embedder = embedder
        self.flow = flow
        self._load_arrays()

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @staticmethod
    def _settings(embedder, flow, content_fps, motion_fps, clip_frames, clip_stride_s, flow_size, grid, nmf):
        return {
            "embedder": embedder.config(),
            "embedder_spec": embedder_spec(embedder),
            "flow": flow.config(),
            "flow_spec": flow_spec(flow),
            "content_fps": content_fps,
            "motion_fps": motion_fps,
            "clip_frames": clip_frames,
            "clip_stride_s": clip_stride_s,
            "flow_size": list(flow_size),
            "grid": grid,
            "nmf": asdict(nmf),
        }

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        source: Iterable[SourceItem] | list[Iterable[SourceItem]],
        out_dir: str | os.PathLike[str],
        embedder: FrameEmbedder | str = "tiny",
        flow: FlowEstimator | str = "farneback",
        *,
        content_fps: float | None = 2.0,
        motion_fps: float | None = 8.0,
        clip_frames: int = 16,
        clip_stride_s: float = 2.0,
        flow_size: tuple[int, int] = (256, 256),
        grid: int = 32,
        batch_size: int = 32,
        resume: bool = True,
        nmf: NaturalMotionFilter | None = None,
    ) -> VideoIndex:
        """Index every item of ``source`` (one source or a list) into ``out_dir`` and open it.

        Args:
            content_fps: frames per second sampled for content (None: every frame).
            motion_fps: frame rate flows are computed at (None: native; mixed rates then raise).
            clip_frames, clip_stride_s: long videos are cut into clips of ``clip_frames`` frames every
                ``clip_stride_s`` seconds for motion search.
            flow_size: (H, W) frames are resized to before flow; grid: pooled flow grid G.
            batch_size: items per chunk file.
            resume: continue an interrupted build with the same settings (otherwise start over).
            nmf: natural-motion filter deciding which reference clips are left out of motion search.
        """
        embedder = create_embedder(embedder)
        flow = create_flow(flow)
        nmf = nmf or NaturalMotionFilter()
        if clip_frames < 2:
            raise MemVideoError(f"clip_frames must be >= 2, got {clip_frames}")
        out = Path(out_dir)
        settings = cls._settings(
            embedder, flow, content_fps, motion_fps, clip_frames, clip_stride_s, flow_size, grid, nmf
        )
        sources = source if isinstance(source, list) else [source]
        rank, _world, state = distributed_state()
        if rank in (None, 0):
            with core_errors():
                write_run_config(
                    out, {"format_version": FORMAT_VERSION, "settings": settings}, new_run=not resume
                )
        if state is not None:
            state.wait_for_everyone()
        items = [(n, it) for n, it in enumerate(_chain(sources))]
        ids = [it.id for _, it in items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise MemVideoError(f"index: duplicate item ids {dup}; give every training item a unique id")
        if state is not None:
            with state.split_between_processes(items) as mine:
                items = list(mine)
        store = ResultStore(out, name="items", key="id", rank=rank)
        todo = [(n, it) for n, it in items if not store.done(it.id)]
        tag = f"r{rank or 0}"
        n_chunks = len(list(out.glob(f"content-{tag}-*.safetensors")))
        seen_fps: dict[float, str] = {}
        for s in range(0, len(todo), batch_size):
            chunk = f"{tag}-{n_chunks:05d}"
            n_chunks += 1
            records, c_arrays, m_arrays = [], [], []
            c_rows = m_rows = 0
            for local, (n, item) in enumerate(todo[s : s + batch_size]):
                rec, emb, flows = cls._index_item(item, n, embedder, flow, settings, nmf)
                if motion_fps is None and flows is not None:
                    seen_fps.setdefault(rec["fps"], item.id)
                    if len(seen_fps) > 1:
                        raise MemVideoError(
                            f"index: videos have mixed frame rates ({dict(list(seen_fps.items())[:5])}, fps: "
                            "first item); pass motion_fps (e.g. 8) so flows are comparable"
                        )
                rec["chunk"] = chunk
                rec["content_rows"] = [c_rows, c_rows + emb.shape[0]]
                c_rows += emb.shape[0]
                c_arrays.append((emb, local))
                if flows is not None:
                    rec["motion_rows"] = [m_rows, m_rows + flows.shape[0]]
                    m_rows += flows.shape[0]
                    m_arrays.append(flows)
                records.append(rec)
            emb = torch.cat([e for e, _ in c_arrays]).half()
            f2i = torch.cat([torch.full((e.shape[0],), loc, dtype=torch.int64) for e, loc in c_arrays])
            _save_chunk(out / f"content-{chunk}.safetensors", {"emb": emb, "frame_to_item": f2i})
            if m_arrays:
                _save_chunk(out / f"motion-{chunk}.safetensors", {"flows": torch.cat(m_arrays).half()})
            for rec in records:
                store.append(rec)
        if state is not None:
            state.wait_for_everyone()
        if rank in (None, 0):
            merged = ResultStore(out, name="items", key="id")
            merged.merge()
            manifest = {
                "format_version": FORMAT_VERSION,
                "settings": settings,
                "source": [_fingerprint(s) for s in sources],
                "n_items": len(merged),
            }
            write_json(out / "manifest.json", manifest)
        if state is not None:
            state.wait_for_everyone()
        return cls.open(out, embedder=embedder, flow=flow)

    @staticmethod
    def _index_item(
        item: SourceItem, n: int, embedder, flow, settings, nmf
    ) -> tuple[dict, Tensor, Tensor | None]:
        clip = item.load()
        rec: dict[str, Any] = {
            "id": item.id,
            "index": n,
            "kind": item.kind,
            "path": item.path,
            "caption": item.caption,
            "frames": clip.num_frames,
            "fps": clip.fps,
        }
        content_frames = resample_fps(clip.frames, clip.fps, settings["content_fps"])
        rec["content_frame_times"] = [round(float(t), 4) for t in _times(clip, settings["content_fps"])]
        emb = embedder.embed(content_frames)
        if item.kind == "image" or clip.num_frames < 2:
            rec["clips"] = []
            rec["natural"] = None
            return rec, emb, None
        flows = video_flows(
            clip, flow, tuple(settings["flow_size"]), settings["motion_fps"], settings["grid"]
        )
        fps = settings["motion_fps"] or clip.fps
        t_clip = settings["clip_frames"] - 1
        stride = max(1, round(settings["clip_stride_s"] * fps))
        starts = list(range(0, max(1, flows.shape[0] - t_clip + 1), stride))
        clips = []
        for st in starts:
            verdict = nmf.classify(flows[st : st + t_clip])
            clips.append(
                {
                    "start": st,
                    "stop": min(st + t_clip, flows.shape[0]),
                    "natural": verdict.reason,
                    "residual": verdict.residual,
                    "moving_frac": verdict.moving_frac,
                }
            )
        rec["clips"] = clips
        rec["natural"] = clips[0]["natural"] if all(c["natural"] for c in clips) else None
        return rec, emb, flows

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        embedder: FrameEmbedder | str | None = None,
        flow: FlowEstimator | str | None = None,
    ) -> VideoIndex:
        """Open a built index; a given ``embedder``/``flow`` must match the one it was built with."""
        d = Path(directory)
        mpath = d / "manifest.json"
        if not mpath.is_file():
            raise MemVideoError(f"{d}: not a finished index (no manifest.json); build it or resume the build")
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise MemVideoError(
                f"{mpath}: format version {manifest.get('format_version')}, expected {FORMAT_VERSION}"
            )
        settings = manifest["settings"]
        emb = create_embedder(embedder if embedder is not None else settings["embedder_spec"])
        fl = create_flow(flow if flow is not None else settings["flow_spec"])
        for what, obj, key in (("embedder", emb, "embedder"), ("flow", fl, "flow")):
            if json.loads(json.dumps(obj.config())) != settings[key]:
                raise MemVideoError(
                    f"{d}: the index was built with {what} {settings[key]}, not {obj.config()}; "
                    f"query it with the same {what} (and preprocessing) or rebuild it"
                )
        items = sorted(ResultStore(d, name="items", key="id").records(), key=lambda r: r["index"])
        return cls(d, manifest, items, emb, fl)

    def _load_arrays(self) -> None:
        from safetensors.torch import load_file

        cache: dict[str, dict[str, Tensor]] = {}

        def chunk(kind: str, name: str) -> dict[str, Tensor]:
            key = f"{kind}-{name}"
            if key not in cache:
                path = self.directory / f"{key}.safetensors"
                if not path.is_file():
                    raise MemVideoError(f"{self.directory}: chunk {path.name} is missing; rebuild the index")
                cache[key] = load_file(str(path))
            return cache[key]

        embs, f2i, flows, t2c = [], [], [], []
        self.clip_table: list[dict[str, Any]] = []
        for n, rec in enumerate(self.items):
            a, b = rec["content_rows"]
            embs.append(chunk("content", rec["chunk"])["emb"][a:b].float())
            f2i.append(torch.full((b - a,), n, dtype=torch.int64))
            if "motion_rows" in rec:
                a, b = rec["motion_rows"]
                offset = sum(f.shape[0] for f in flows)
                flows.append(chunk("motion", rec["chunk"])["flows"][a:b].float())
                for c in rec["clips"]:
                    t2c.append(len(self.clip_table))
                    self.clip_table.append(
                        {
                            "item": n,
                            "start": c["start"],
                            "rows": (offset + c["start"], offset + c["stop"]),
                            "natural": c["natural"],
                        }
                    )
        dim = self.embedder.dim
        self.content = torch.cat(embs) if embs else torch.zeros(0, dim)
        self.frame_to_item = torch.cat(f2i) if f2i else torch.zeros(0, dtype=torch.int64)
        g = self.settings["grid"]
        self.flows = torch.cat(flows) if flows else torch.zeros(0, 2, g, g)

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------ search

    def search_content(self, emb: Tensor, top_n: int = 5, tau: float = 0.85) -> list[ContentHit]:
        """Top-``top_n`` items by content score C = max_ij S_ij for query frame embeddings [F,D]."""
        if self.content.shape[0] == 0:
            return []
        if emb.ndim != 2 or emb.shape[1] != self.content.shape[1]:
            raise MemVideoError(
                f"query embeddings {tuple(emb.shape)} do not match the index dimension {self.content.shape[1]}"
            )
        s = emb.float() @ self.content.T  # [F, N_frames]
        n_items = len(self.items)
        idx = self.frame_to_item[None].expand(s.shape[0], -1)
        per_item = torch.full((s.shape[0], n_items), -float("inf")).scatter_reduce(1, idx, s, "amax")  # [F,I]
        best = per_item.max(dim=0).values
        order = torch.argsort(best, descending=True)[:top_n]
        hits = []
        for it in order.tolist():
            cols = (self.frame_to_item == it).nonzero().flatten()
            sub = s[:, cols]
            i, j = divmod(int(torch.argmax(sub)), sub.shape[1])
            cov = float((per_item[:, it] >= tau).float().mean())
            rec = self.items[it]
            hits.append(ContentHit(rec["id"], rec["kind"], float(sub[i, j]), i, j, cov))
        return hits

    def content_match(self, emb: Tensor, item_id: str, tau: float) -> ContentMatch:
        """The content match of a query against one named item."""
        n = next((k for k, r in enumerate(self.items) if r["id"] == item_id), None)
        if n is None:
            raise MemVideoError(f"{self.directory}: no item {item_id!r} in the index")
        from .content import content_match

        return content_match(emb, self.content[self.frame_to_item == n], tau)

    def search_motion(
        self,
        flows: Tensor,
        top_n: int = 5,
        k: int | str = 8,
        *,
        weighted: bool = False,
        include_natural: bool = False,
    ) -> list[MotionHit]:
        """Top-``top_n`` items by OFS-k over their clips; natural clips are skipped unless ``include_natural``.

        One similarity matrix against every indexed transition, then one diagonal-window pass per window
        length; windows never cross a clip boundary.
        """
        if self.flows.shape[0] == 0:
            return []
        s_all = flow_similarity(flows, self.flows, weighted).double()
        tg = s_all.shape[0]
        windows: dict[int, Tensor] = {}
        best: dict[int, MotionHit] = {}
        for clip in self.clip_table:
            if clip["natural"] and not include_natural:
                continue
            a, b = clip["rows"]
            kk = (min(tg, b - a) if k == "all" else min(int(k), tg, b - a)) if b > a else 0
            if kk < 1:
                continue
            if kk not in windows:
                windows[kk] = diagonal_window_means(s_all, kk)
            w = windows[kk][:, a : b - kk + 1]
            flat = int(torch.argmax(w))
            t, u = divmod(flat, w.shape[1])
            score = float(w[t, u])
            it = clip["item"]
            if it not in best or score > best[it].score:
                best[it] = MotionHit(self.items[it]["id"], score, u - t, t, kk, clip["start"])
        return sorted(best.values(), key=lambda h: -h.score)[:top_n]


def _fingerprint(source) -> str:
    return source.fingerprint() if hasattr(source, "fingerprint") else type(source).__name__


def _chain(sources: list[Iterable[SourceItem]]) -> Iterable[SourceItem]:
    for s in sources:
        yield from s


def _times(clip, fps: float | None) -> list[float]:
    idx = resample_fps(torch.arange(clip.num_frames), clip.fps, fps)
    return [float(i) / clip.fps for i in idx]
