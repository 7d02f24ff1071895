"""`generate_many`: resumable, Accelerate-sharded generation with AMG and/or Compress CFG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from difflab_core.device import process_state

from .errors import GuidanceKitError, core_errors

__all__ = ["generate_many", "read_prompts"]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines skipped) or JSONL (``prompt``/``caption``/``text``)."""
    path = Path(path)
    if not path.is_file():
        raise GuidanceKitError(f"{path}: prompts file not found")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise GuidanceKitError(f"{path}:{n}: not valid JSON ({err.msg})") from err
            text = next((row[k] for k in ("prompt", "caption", "text") if k in row), None)
            if not isinstance(text, str):
                raise GuidanceKitError(f"{path}:{n}: needs a 'prompt', 'caption' or 'text' string")
            prompts.append(text)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise GuidanceKitError(f"{path}: no prompts")
    return prompts


def generate_many(
    pipe,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    seeds_per_prompt: int = 1,
    batch_size: int = 4,
    amg=None,
    compress: int | None = None,
    resume: bool = True,
    **pipe_kwargs,
) -> list[dict]:
    """Generate every (prompt_id, seed) once into ``out_dir`` (PNG, per-step logs ``steps/<key>.jsonl``, one
    core-store row each in ``results.jsonl``); finished keys are skipped on resume. Work is split between
    Accelerate processes. ``pipe``: a pipeline or a local pipeline folder. ``amg``: ``(index, config, captions)``
    or None; ``compress``: a Compress CFG skip or None (with AMG, compress runs inside AMG's schedule)."""

    from difflab_core.report import to_pil
    from difflab_core.store import ResultStore

    from .amg import amg as amg_context
    from .compress import compress_cfg

    if isinstance(pipe, (str, Path)):
        from difflab_core.loading import load_pipeline

        with core_errors(str(pipe)):
            pipe = load_pipeline(pipe)
        pipe.set_progress_bar_config(disable=True)
    if seeds_per_prompt < 1 or batch_size < 1:
        raise GuidanceKitError("seeds_per_prompt and batch_size must be ≥ 1")
    out = Path(out_dir)
    state = process_state()
    with core_errors(str(out)):
        store = ResultStore(out, key="key", rank=state.process_index if state.num_processes > 1 else None)
    work = [(p, s) for p in range(len(prompts)) for s in range(seeds_per_prompt)]
    work = [w for w in work if not (resume and store.done(f"{w[0]}-{w[1]}"))]
    with state.split_between_processes(work) as mine:
        mine = list(mine)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed) for _, seed in chunk]
        with ExitStack() as stack:
            engine = None
            if amg is not None:
                index, config, captions = amg
                if compress is not None:
                    config = config.replace(compress_skip=compress)
                engine = stack.enter_context(amg_context(pipe, index, config=config, captions=captions))
            elif compress is not None:
                stack.enter_context(compress_cfg(pipe, skip=compress))
            images = pipe(
                [prompts[p] for p, _ in chunk], generator=gens, output_type="pt", **pipe_kwargs
            ).images
        for b, ((p, seed), image) in enumerate(zip(chunk, images, strict=True)):
            key = f"{p}-{seed}"
            to_pil(image).save(out / f"{key}.png")
            record = {"key": key, "prompt_id": p, "seed": seed, "prompt": prompts[p], "image": f"{key}.png"}
            if engine is not None:
                steps = [r.to_dict() for r in engine.records if r.sample == b]
                with open(out / "steps" / f"{key}.jsonl", "w") as fh:
                    fh.writelines(json.dumps(s) + "\n" for s in steps)
                record["amg_fired_steps"] = sum(
                    s["fired_spe"] or s["fired_dup"] or s["fired_sim"] for s in steps
                )
            store.append(record)
            rows.append(record)
    return rows
