"""``memguard video-audit``: content and motion memorization of generated videos (mem-video's folder audit),
from a folder of videos or from a local diffusers text-to-video pipeline and a prompt file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflab_core.errors import DifflabError


def run_video_audit(
    training: Path,
    out: Path,
    *,
    generated: Path | None = None,
    model: Path | None = None,
    prompts: Path | None = None,
    steps: int = 25,
    frames: int = 16,
    seed: int = 0,
    device: str = "auto",
    flow_size: tuple[int, int] = (256, 256),
    content_fps: float | None = 2.0,
) -> dict[str, Any]:
    """Audit into ``out`` (``index/``, ``scores.jsonl``, ``summary.json``, ``report.html``; resumable) and return
    a summary with ``n_videos``, ``n_content``, ``n_motion`` and ``report``."""
    from mem_video import audit_videos

    if (generated is None) == (model is None):
        raise DifflabError("give either --generated DIR or --model DIR with --prompts FILE")
    if model is not None and prompts is None:
        raise DifflabError("--model needs --prompts FILE (one prompt per line, or JSONL with a prompt field)")
    if not training.is_dir():
        raise DifflabError(f"{training}: training folder not found")
    if generated is not None and not generated.is_dir():
        raise DifflabError(f"{generated}: generated-video folder not found")
    if model is not None:
        generated = _generate(
            model, prompts, out / "generated", steps=steps, frames=frames, seed=seed, device=device
        )
    summary = audit_videos(generated, training, out, flow_size=flow_size, content_fps=content_fps)
    return {
        "n_videos": summary["n_videos"],
        "n_content": sum(summary["counts"][t] for t in ("content", "both")),
        "n_motion": sum(summary["counts"][t] for t in ("motion", "both")),
        "report": str(out / "report.html"),
        "summary": summary,
    }


def _generate(
    model: Path, prompts: Path, out: Path, *, steps: int, frames: int, seed: int, device: str
) -> Path:
    import diffusers
    import transformers

    from difflab_core.loading import load_pipeline
    from mem_video import generate_videos, read_prompts

    rows = read_prompts(prompts)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipe = load_pipeline(model, device=device)
    pipe.set_progress_bar_config(disable=True)
    generate_videos(
        pipe, rows, out, num_videos_per_prompt=1, seed=seed, num_inference_steps=steps, num_frames=frames
    )
    return out / "videos"
