"""Re-asking a malformed answer (spec §7 "Malformed answers"): the same image and prompt, plus a format reminder."""

from __future__ import annotations

from collage_prompt.client import VLMRequest
from collage_prompt.prompt import ParseResult, answer_slots

__all__ = ["answer_format", "format_reminder", "reask_request"]


def answer_format(k: int, template: str = "paper-v1") -> str:
    """The exact answer format of ``template`` for ``k`` cells."""
    if template == "json-v1":
        return "{" + answer_slots(k, json_mode=True) + "}"
    if k == 1:
        return "Here is the prediction: ['<label>']"
    return "Here is the prediction: [" + answer_slots(k) + "]"


def format_reminder(k: int, parsed: ParseResult, template: str = "paper-v1") -> str:
    """What went wrong with the last answer and the format to use."""
    problem = "could not be read" if parsed.status == "failed" else "did not give a label for every cell"
    cells = f"all {k} cells, numbered left-to-right, top-to-bottom from 0" if k > 1 else "the image"
    return (
        f"Your previous answer {problem}. Answer for {cells}, each with exactly one category name from the "
        f"list, and reply with nothing but: {answer_format(k, template)}"
    )


def reask_request(req: VLMRequest, parsed: ParseResult, attempt: int = 1) -> VLMRequest:
    """``req`` with the format reminder appended to its prompt (``meta["reask_of"]`` = the original key)."""
    reminder = format_reminder(req.k, parsed, req.meta.get("template", "paper-v1"))
    return VLMRequest(
        req.image_png,
        f"{req.prompt}\n\n{reminder}",
        req.detail,
        req.k,
        {**req.meta, "reask_of": req.key, "reask": attempt},
    )
