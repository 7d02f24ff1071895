"""Memorization detection: Wen et al.'s magnitude, Bright Ending's masked magnitude (LD), Ren et al.'s entropies.

Per image j and step t (spec §2.3):

- Wen:  m_t^j  = ‖Δε_t^j‖₂ with Δε_t = ε(x_t, e_c) − ε(x_t, e_∅) (not multiplied by the guidance scale);
- BE:   m′_t^j = ‖Δε_t^j ⊙ M̂^j‖₂ / mean(M̂^j), M̂ the last-step BE map bilinearly resized to the latent size.

One pass: the tracker caches S_t = Σ_c Δε_t² [B, h, w] at every step; after the last step, when M is known,
m′_t = √(Σ_hw M̂² S_t) / mean(M̂) — equal to the official two-pass procedure (`two_pass_be`) up to summation
order. A prompt's score is the mean over its first n images and the steps of a window W (default all steps).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab_core.store import ResultStore, write_run_config
from difflab_core.tracking import NoiseTracker, stop_after

from .data import PromptRecord, kind_of
from .errors import MemLocateError, core_errors
from .localize import BrightEnding, ddim_scheduler, draw_latents, ren_le_layer, upsample_map

__all__ = [
    "METHODS",
    "AuditConfig",
    "AuditResult",
    "Auditor",
    "PromptScores",
    "aggregate",
    "entropy",
    "masked_magnitude",
    "ren_entropy_scores",
    "two_pass_be",
    "wen_magnitude",
]

logger = logging.getLogger(__name__)

METHODS = ("be", "wen", "wen1", "ren_le", "ren_ae")
"""Score names: BE LD, Wen (window W), Wen at step 1 only, Ren LE, Ren AE."""


# ---------------------------------------------------------------------------------------------- magnitudes
def wen_magnitude(sqsum: torch.Tensor) -> torch.Tensor:
    """Wen's m_t = ‖Δε_t‖₂ from S_t = Σ_c Δε_t²: sqsum [T, B, h, w] (or [B, h, w]) → [T, B] (or [B])."""
    return sqsum.float().sum(dim=(-2, -1)).sqrt()


def masked_magnitude(sqsum: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BE's m′_t = √(Σ_hw M̂² S_t) / mean(M̂) from S_t [T, B, h, w] and a mask [B|1, h', w'] (resized bilinearly)."""
    s = sqsum.float()
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.shape[0] not in (1, s.shape[-3]):
        raise MemLocateError(f"masked_magnitude: mask has {m.shape[0]} maps for {s.shape[-3]} images")
    m = upsample_map(m, tuple(s.shape[-2:]))
    num = (m**2 * s).sum(dim=(-2, -1)).sqrt()
    return num / m.mean(dim=(-2, -1))


def entropy(p: torch.Tensor, *, start: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) = −Σ_k p_k ln p_k over the last dim, with 0·ln 0 = 0; ``start`` [B] sums only k ≥ start (H_sum)."""
    terms = -torch.special.xlogy(p.double(), p.double())
    if start is not None:
        k = torch.arange(p.shape[-1])
        keep = k[None, :] >= torch.as_tensor(start).reshape(-1, 1)  # [B, K]
        terms = terms * keep.to(terms.dtype)
    return terms.sum(dim=-1).float()


def ren_entropy_scores(
    tokens: torch.Tensor,
    steps: Sequence[int],
    layers: Sequence[str],
    eos: torch.Tensor,
    *,
    num_inference_steps: int,
    modes: Iterable[str] = ("le",),
    le_layer: str | None = None,
) -> dict[str, torch.Tensor]:
    """Ren et al.'s scores per image from token distributions ``tokens`` [S, L, B, K] (spec §2.4).

    LE: H(p_{l*, 0}) with l* = ``le_layer`` (default: the last of ``layers``). AE: with p̄_t the mean over layers,
    mean_{t∈T} H(p̄_t) + mean_{t∈T} H_sum(p̄_t) − H_sum(p̄_0), T the last ⌈N/5⌉ steps, H_sum over k ≥ e.
    """
    steps = list(steps)
    out: dict[str, torch.Tensor] = {}
    for mode in modes:
        if mode == "le":
            if 0 not in steps:
                raise MemLocateError("Ren LE needs the token distribution at step 0")
            li = list(layers).index(le_layer) if le_layer is not None else len(layers) - 1
            out["ren_le"] = entropy(tokens[steps.index(0), li])
        elif mode == "ae":
            n_last = math.ceil(num_inference_steps / 5)
            window = [s for s in range(num_inference_steps - n_last, num_inference_steps)]
            missing = [s for s in [0, *window] if s not in steps]
            if missing:
                raise MemLocateError(f"Ren AE needs token distributions at steps {missing}")
            mean_l = tokens.mean(dim=1)  # [S, B, K]
            pw = mean_l[[steps.index(s) for s in window]]
            p0 = mean_l[steps.index(0)]
            out["ren_ae"] = entropy(pw).mean(0) + entropy(pw, start=eos).mean(0) - entropy(p0, start=eos)
        else:
            raise MemLocateError(f"ren_modes: unknown mode {mode!r}; use 'le' and/or 'ae'")
    return out


# ---------------------------------------------------------------------------------------------- scores
@dataclass
class PromptScores:
    """Per-image, per-step detection curves of one prompt.

    ``wen``/``be``: [n][T] lists over ``steps`` (indices into the schedule); ``ren_le``/``ren_ae``: [n].
    """

    key: str
    prompt: str
    seed: int
    n: int
    num_inference_steps: int
    steps: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    wen: list[list[float]] | None = None
    be: list[list[float]] | None = None
    ren_le: list[float] | None = None
    ren_ae: list[float] | None = None
    label: int | None = None
    kind: str = "unknown"
    type: str | None = None
    nonfinite: bool = False
    eos_index: int | None = None
    map_file: str | None = None
    image_files: list[str] | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PromptScores:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def score(self, method: str, window: tuple[int, int | None] = (0, None), n: int | None = None) -> float:
        """The prompt score: mean over the first ``n`` images and the steps in [start, stop)."""
        if method not in METHODS:
            raise MemLocateError(f"method={method!r}: use one of {METHODS}")
        if method in ("ren_le", "ren_ae"):
            values = getattr(self, method)
            if values is None:
                raise MemLocateError(
                    f"key {self.key!r}: no {method} scores were computed (enable ren in methods)"
                )
            values = values[: n or self.n]
            return float(np.mean(values))
        curves = getattr(self, "wen" if method == "wen1" else method)
        if curves is None:
            raise MemLocateError(f"key {self.key!r}: no {method} curves were computed")
        start, stop = (0, 1) if method == "wen1" else window
        stop = self.num_inference_steps if stop is None else stop
        if not 0 <= start < stop <= self.num_inference_steps:
            raise MemLocateError(
                f"window=({start}, {stop}) must lie inside [0, {self.num_inference_steps}) with start < stop"
            )
        cols = [i for i, s in enumerate(self.steps) if start <= s < stop]
        if not cols:
            raise MemLocateError(f"key {self.key!r}: no tracked step inside window [{start}, {stop})")
        arr = np.asarray(curves, dtype=np.float64)[: n or self.n][:, cols]
        return float(arr.mean())


def aggregate(
    records: Sequence[PromptScores | dict], method: str, window: tuple[int, int | None] = (0, None), n=None
) -> np.ndarray:
    """Re-score stored curves without regenerating: one score per record (see `PromptScores.score`)."""
    if n is not None and n < 1:
        raise MemLocateError(f"n must be ≥ 1, got {n}")
    out = []
    for rec in records:
        ps = rec if isinstance(rec, PromptScores) else PromptScores.from_record(rec)
        out.append(ps.score(method, window, n))
    return np.asarray(out, dtype=np.float64)


@dataclass
class Flags:
    """`flag_prompts` output: ``scores`` [N] and ``flagged`` [N] follow the records; ``threshold`` is the cut."""

    method: str
    threshold: float
    quantile: float
    n_calibration: int
    scores: np.ndarray
    flagged: np.ndarray


def flag_prompts(
    records: Sequence[PromptScores | dict],
    method: str,
    *,
    quantile: float = 0.95,
    calibration: Sequence[PromptScores | dict] | None = None,
    window: tuple[int, int | None] = (0, None),
) -> Flags:
    """Flag prompts whose ``method`` score exceeds the ``quantile`` of known-clean prompts' scores
    [reconstruction]: the clean prompts are ``calibration`` or, by default, the label-0 ``records``, so about
    1 − ``quantile`` of clean prompts are flagged. Scores are `aggregate`'s: higher means more memorized, as in
    `detection_table`."""
    if not 0 < quantile <= 1:
        raise MemLocateError(f"quantile must be in (0, 1], got {quantile}")
    clean = (
        list(calibration)
        if calibration is not None
        else [r for r in records if (r.label if isinstance(r, PromptScores) else r.get("label")) == 0]
    )
    if not clean:
        raise MemLocateError("flag_prompts needs known-clean prompts: label-0 records or a calibration set")
    scores = aggregate(records, method, window)
    reference = aggregate(clean, method, window)
    reference = reference[np.isfinite(reference)]
    if reference.size == 0:
        raise MemLocateError(f"flag_prompts: no finite {method} scores among the clean prompts")
    threshold = float(np.quantile(reference, quantile))
    return Flags(method, threshold, quantile, int(reference.size), scores, scores > threshold)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class AuditConfig:
    """Settings of a detection audit; defaults follow the official BE code (spec §2.1, §3)."""

    num_inference_steps: int = 50  # DDIM, N = 50 [official code]
    guidance_scale: float = 7.5  # s = 7.5 [official code]
    num_images_per_prompt: int = 4  # n = 4 (the BE README uses 16 for detection) [official code]
    gen_seed: int = 0  # prompt i uses gen_seed + i [official code]
    latent_rng_device: str = (
        "cpu"  # x_T drawn on CPU so CPU and GPU runs agree ("same": official CUDA seeding)
    )
    dtype: str = "auto"  # fp16 UNet on CUDA, fp32 on CPU (used by the CLI when loading)
    batch_prompts: int = 1  # prompts per pipeline call; scores do not depend on it
    methods: tuple[str, ...] = ("be", "wen")  # any of "be", "wen", "ren"
    be_layers: str | tuple[str, ...] = "down-highest"  # S: down-path attn2 at the highest resolution
    ren_modes: tuple[str, ...] = ("le",)  # "le" and/or "ae" (Ren et al.'s modes E and D)
    ren_layer: str | None = None  # LE layer override (default: call-order index 3 among attn2)
    wen_early_steps: int | None = None  # stop sampling after k steps when only step-window Wen is wanted
    eta: float = 0.0  # DDIM η = 0 [official code]
    scheduler: str = "ddim"  # "keep" uses the pipeline's own scheduler
    guidance_rescale: float = 0.0
    store_maps: bool = True
    keep_sqsum: bool = False
    save_images: bool = False

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.ren_modes = tuple(self.ren_modes)
        if not isinstance(self.be_layers, str):
            self.be_layers = tuple(self.be_layers)

    def validate(self) -> AuditConfig:
        if self.num_inference_steps < 1:
            raise MemLocateError(f"num_inference_steps must be ≥ 1, got {self.num_inference_steps}")
        if self.num_images_per_prompt < 1:
            raise MemLocateError(f"num_images_per_prompt must be ≥ 1, got {self.num_images_per_prompt}")
        if self.batch_prompts < 1:
            raise MemLocateError(f"batch_prompts must be ≥ 1, got {self.batch_prompts}")
        if self.guidance_scale <= 1:
            raise MemLocateError(
                f"guidance_scale must be > 1 for detection (got {self.guidance_scale}): Δε needs both CFG branches"
            )
        bad = [m for m in self.methods if m not in ("be", "wen", "ren")]
        if bad or not self.methods:
            raise MemLocateError(f"methods: unknown {bad or 'empty'}; use any of 'be', 'wen', 'ren'")
        bad = [m for m in self.ren_modes if m not in ("le", "ae")]
        if bad:
            raise MemLocateError(f"ren_modes: unknown {bad}; use 'le' and/or 'ae'")
        if self.wen_early_steps is not None and not 1 <= self.wen_early_steps <= self.num_inference_steps:
            raise MemLocateError(
                f"wen_early_steps must be in [1, {self.num_inference_steps}], got {self.wen_early_steps}"
            )
        if self.latent_rng_device not in ("cpu", "same"):
            raise MemLocateError(f"latent_rng_device={self.latent_rng_device!r}: use 'cpu' or 'same'")
        return self

    def result_settings(self) -> dict[str, Any]:
        """The settings that change scores (the run fingerprint covers these)."""
        out = asdict(self)
        for k in ("batch_prompts", "store_maps", "save_images", "keep_sqsum"):
            out.pop(k)
        return out

    @property
    def early_stop(self) -> int | None:
        needs_full = "be" in self.methods or ("ren" in self.methods and "ae" in self.ren_modes)
        return None if needs_full else self.wen_early_steps


# ---------------------------------------------------------------------------------------------- auditor
@dataclass
class AuditResult:
    """A finished (or resumed) audit: ``records`` as stored in ``{directory}/results.jsonl``."""

    directory: Path
    records: list[dict[str, Any]]

    def scores(
        self, method: str, window: tuple[int, int | None] = (0, None), n: int | None = None
    ) -> np.ndarray:
        return aggregate(self.usable(), method, window, n)

    def usable(self) -> list[dict[str, Any]]:
        """Records without non-finite values."""
        return [r for r in self.records if not r.get("nonfinite")]

    def labels(self) -> np.ndarray:
        return np.asarray([r.get("label") for r in self.usable()])


def _safe_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(key))
    if safe != str(key) or safe.startswith("."):
        import hashlib

        safe = f"{safe.lstrip('.')}-{hashlib.sha1(str(key).encode()).hexdigest()[:8]}"
    return safe


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors written under a temporary name, then renamed (a crash never leaves a half file)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _model_id(pipe) -> dict[str, Any]:
    unet = pipe.unet
    return {
        "pipeline": type(pipe).__name__,
        "name_or_path": str(
            getattr(pipe, "name_or_path", "") or getattr(unet.config, "_name_or_path", "") or ""
        ),
        "unet_params": int(sum(p.numel() for p in unet.parameters())),
        "prediction_type": str(getattr(pipe.scheduler.config, "prediction_type", "epsilon")),
    }


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {"mem_locate": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


class Auditor:
    """Score prompts for memorization, writing each prompt's result as it finishes; resumable.

    ``run(records, out_dir)`` writes ``config.json`` (resolved config, versions, fingerprint),
    ``results.jsonl`` (one `PromptScores` record per prompt, via `difflab_core.store.ResultStore`) and
    ``maps/{key}.safetensors`` (``be_map`` [n, h, w] fp16; ``sqsum`` [T, n, h, w] with ``keep_sqsum``).
    """

    def __init__(self, pipe, config: AuditConfig | None = None) -> None:
        self.config = (config or AuditConfig()).validate()
        self.pipe = pipe
        self.be = BrightEnding(
            pipe,
            layers=self.config.be_layers
            if isinstance(self.config.be_layers, str)
            else list(self.config.be_layers),
            scheduler=self.config.scheduler,
        )
        self.le_layer = (
            ren_le_layer(pipe.unet, self.config.ren_layer) if "ren" in self.config.methods else None
        )

    def score_prompts(
        self, prompts: list[str], seeds: list[int]
    ) -> tuple[list[PromptScores], dict[str, torch.Tensor]]:
        """Score a batch of prompts (one pipeline run); returns the scores and per-image tensors."""
        cfg = self.config
        n, steps_n = cfg.num_images_per_prompt, cfg.num_inference_steps
        want_ren = "ren" in cfg.methods
        tokens = token_steps = None
        if want_ren:
            if "ae" in cfg.ren_modes:
                tokens, token_steps = "all", "all"
            else:
                tokens, token_steps = [self.le_layer.name], [0]
        kwargs: dict[str, Any] = {}
        if cfg.early_stop is not None:
            kwargs["callback_on_step_end"] = stop_after(cfg.early_stop)
        if cfg.eta:
            kwargs["eta"] = cfg.eta
        if cfg.guidance_rescale:
            kwargs["guidance_rescale"] = cfg.guidance_rescale
        res = self.be(
            prompts,
            num_inference_steps=steps_n,
            guidance_scale=cfg.guidance_scale,
            num_images_per_prompt=n,
            seed=seeds,
            track_noise=True,
            tokens=tokens,
            token_steps=token_steps,
            latent_rng_device=cfg.latent_rng_device,
            capture_map="be" in cfg.methods,
            output_type="pt" if cfg.save_images else "latent",
            **kwargs,
        )
        trace = res.noise
        wen = wen_magnitude(trace.sqsum)  # [T, B]
        be = masked_magnitude(trace.sqsum, res.maps) if "be" in cfg.methods else None
        ren = {}
        if want_ren:
            ren = ren_entropy_scores(
                res.tokens,
                res.token_steps,
                res.token_layers,
                res.eos_index,
                num_inference_steps=steps_n,
                modes=cfg.ren_modes,
                le_layer=self.le_layer.name,
            )
        out = []
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            rows = slice(i * n, (i + 1) * n)
            finite = bool(torch.isfinite(trace.sqsum[:, rows]).all())
            if be is not None:
                finite = finite and bool(torch.isfinite(res.maps[rows]).all())
            out.append(
                PromptScores(
                    key="",
                    prompt=prompt,
                    seed=seed,
                    n=n,
                    num_inference_steps=steps_n,
                    steps=list(trace.steps),
                    timesteps=list(trace.timesteps),
                    wen=wen[:, rows].T.tolist() if "wen" in cfg.methods else None,
                    be=be[:, rows].T.tolist() if be is not None else None,
                    ren_le=ren["ren_le"][rows].tolist() if "ren_le" in ren else None,
                    ren_ae=ren["ren_ae"][rows].tolist() if "ren_ae" in ren else None,
                    nonfinite=not finite,
                    eos_index=int(res.eos_index[i * n]),
                )
            )
        tensors = {"maps": res.maps, "sqsum": trace.sqsum, "images": res.images}
        return out, tensors

    def run(
        self,
        records: Sequence[PromptRecord | str],
        out_dir: str | os.PathLike[str],
        *,
        resume: bool = True,
        new_run: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        progress: bool = False,
    ) -> AuditResult:
        """Audit ``records``; prompt i (its position in ``records``) uses seed ``gen_seed + i``.

        Resuming skips keys already in the store; a changed configuration raises unless ``new_run=True``
        (``resume=False`` implies it; earlier results move to ``previous-<timestamp>/``). Under
        ``accelerate launch`` (or explicit ``rank``/``world_size``) each rank writes its own shard and the
        main process merges them. ``progress`` shows a progress bar on the main process.
        """
        cfg = self.config
        recs = [
            r if isinstance(r, PromptRecord) else PromptRecord(key=str(i), caption=r)
            for i, r in enumerate(records)
        ]
        if not recs:
            raise MemLocateError("Auditor.run: no prompts to audit")
        seen: dict[str, int] = {}
        for i, r in enumerate(recs):
            if r.key in seen:
                raise MemLocateError(f"Auditor.run: duplicate key {r.key!r} (records {seen[r.key]} and {i})")
            seen[r.key] = i
        state = None
        if world_size is None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                from difflab_core.device import process_state

                state = process_state()
                rank, world_size = state.process_index, state.num_processes
            else:
                rank, world_size = None, 1
        elif world_size > 1 and (rank is None or not 0 <= rank < world_size):
            raise MemLocateError(f"rank={rank!r} must be in [0, {world_size})")
        out = Path(out_dir)
        settings = cfg.result_settings() | {"model": _model_id(self.pipe)}
        from difflab_core.store import fingerprint

        config_doc = {
            "audit": asdict(cfg),
            "model": settings["model"],
            "versions": _versions(),
            "fingerprint": fingerprint(settings),
        }
        main = rank in (None, 0)
        with core_errors(str(out)):
            if main:
                write_run_config(out, config_doc, new_run=new_run or not resume)
            if state is not None:
                state.wait_for_everyone()
                if not main:
                    write_run_config(out, config_doc)
            store = ResultStore(out, rank=rank if world_size > 1 else None)
        pending = [(i, r) for i, r in enumerate(recs) if not store.done(r.key)]
        if world_size > 1:
            pending = pending[rank::world_size]
        n_long = sum(
            len(self.pipe.tokenizer(r.caption).input_ids) > self.pipe.tokenizer.model_max_length
            for _, r in pending
        )
        if n_long:
            warnings.warn(
                f"{n_long} prompt(s) exceed {self.pipe.tokenizer.model_max_length} tokens and are truncated",
                stacklevel=2,
            )
        batches = [pending[j : j + cfg.batch_prompts] for j in range(0, len(pending), cfg.batch_prompts)]
        if progress and main and batches:
            from rich.progress import track

            batches = track(batches, description=f"auditing {len(pending)} prompts", transient=True)
        for batch in batches:
            self._run_batch(batch, store, out)
        if state is not None:
            state.wait_for_everyone()
        if main and (state is not None or world_size == 1):
            with core_errors(str(out)):
                main_store = ResultStore(out)
                if main_store.shard_paths():
                    main_store.merge()
            records_out = main_store.records()
        else:
            records_out = store.records()
        return AuditResult(out, records_out)

    def _run_batch(self, batch, store: ResultStore, out: Path) -> None:
        cfg = self.config
        try:
            scores, tensors = self.score_prompts(
                [r.caption for _, r in batch], [cfg.gen_seed + i for i, _ in batch]
            )
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) > 1:
                logger.warning("CUDA out of memory with %d prompts per call; retrying one by one", len(batch))
                for item in batch:
                    self._run_batch([item], store, out)
                return
            logger.error("CUDA out of memory on key %r; skipped (rerun to retry)", batch[0][1].key)
            return
        n = cfg.num_images_per_prompt
        for j, ((_, rec), ps) in enumerate(zip(batch, scores, strict=True)):
            ps.key, ps.label, ps.type = rec.key, rec.label, rec.type
            ps.kind = rec.kind if rec.kind != "unknown" else kind_of(rec.label, rec.type)
            rows = slice(j * n, (j + 1) * n)
            if ps.nonfinite:
                warnings.warn(
                    f"key {rec.key!r}: non-finite Δε (fp16 overflow?); left out of metrics", stacklevel=3
                )
            if cfg.store_maps:
                name = f"maps/{_safe_name(rec.key)}.safetensors"
                payload = {}
                if tensors["maps"].numel():
                    payload["be_map"] = tensors["maps"][rows].half()
                if cfg.keep_sqsum:
                    payload["sqsum"] = tensors["sqsum"][:, rows].float()
                if payload:
                    _save_tensors(out / name, payload)
                    ps.map_file = name
            if cfg.save_images and tensors["images"] is not None:
                from difflab_core.report import to_pil

                (out / "images").mkdir(exist_ok=True)
                ps.image_files = []
                for k, img in enumerate(tensors["images"][rows]):
                    name = f"images/{_safe_name(rec.key)}_{k}.png"
                    to_pil(img.float().cpu()).save(out / name)
                    ps.image_files.append(name)
            with core_errors(str(out)):
                store.append(ps.to_record())


# ---------------------------------------------------------------------------------------------- two-pass reference
def two_pass_be(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    num_images_per_prompt: int = 1,
    seed: int = 0,
    layers="down-highest",
    scheduler: str = "ddim",
    key: str = "0",
    output_type: str = "pt",
    **pipe_kwargs,
) -> PromptScores:
    """The official-style two-pass BE LD: pass 1 captures M; pass 2 regenerates with the same seed and takes
    ‖Δε_t ⊙ M̂‖/mean(M̂) from the full Δε_t (broadcast over channels). Pass 1 does not decode images."""
    if guidance_scale <= 1:
        raise MemLocateError(f"guidance_scale must be > 1 for detection, got {guidance_scale}")
    be = BrightEnding(pipe, layers=layers, scheduler=scheduler)
    n = num_images_per_prompt
    first = be(
        prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        num_images_per_prompt=n,
        seed=seed,
        output_type="latent",
        **pipe_kwargs,
    )
    latents, gens = draw_latents(
        pipe, [seed], n, height=pipe_kwargs.get("height"), width=pipe_kwargs.get("width")
    )
    with ddim_scheduler(pipe, scheduler) as sched, core_errors("two_pass_be"):
        tracker = NoiseTracker(pipe.unet, scheduler=sched, keep=("full",), batch_size=n)
        with tracker:
            pipe(
                prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                num_images_per_prompt=n,
                latents=latents,
                generator=gens,
                output_type=output_type,
                **pipe_kwargs,
            )
        trace = tracker.trace()
    full = trace.full  # [T, n, C, h, w]
    mask = upsample_map(first.maps, tuple(full.shape[-2:]))  # [n, h, w]
    masked = full * mask[None, :, None]
    be_curve = masked.flatten(2).norm(dim=2) / mask.mean(dim=(-2, -1))[None]
    wen_curve = full.flatten(2).norm(dim=2)
    return PromptScores(
        key=key,
        prompt=prompt,
        seed=seed,
        n=n,
        num_inference_steps=num_inference_steps,
        steps=list(trace.steps),
        timesteps=list(trace.timesteps),
        wen=wen_curve.T.tolist(),
        be=be_curve.T.tolist(),
        eos_index=int(first.eos_index[0]),
    )
