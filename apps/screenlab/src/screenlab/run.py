"""``screenlab run``: screen a folder of the user's images (labels by collages, forgery flags) into a
resumable run folder with a report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from collage_prompt import PriceTable
from collage_prompt.prompt import ClassList

from .errors import ScreenlabError
from .images import categories_from_folders, load_image, scan_folder
from .report import write_report
from .screen import ScreenConfig, ScreenResult, screen
from .vlm import describe, endpoint_vlm, simulated_vlm

__all__ = ["RunOutcome", "parse_labels", "run_folder"]


@dataclass
class RunOutcome:
    """A finished (or stopped) run: the result, the report paths and the lines said about VLM and detector."""

    result: ScreenResult
    report_html: Path
    report_json: Path
    notes: list[str]


def parse_labels(text: str) -> ClassList:
    """``--labels a,b,c``: at least two distinct category names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise ScreenlabError(f"--labels {text!r}: give at least two comma-separated categories")
    return ClassList.from_names([[n] for n in names])


def run_folder(
    folder: str | Path,
    out: str | Path,
    *,
    base_url: str | None = None,
    simulate: bool = False,
    model: str = "gpt-4o",
    api_key_env: str = "OPENAI_API_KEY",
    labels: str | None = None,
    detector: str | Path | None = None,
    prices: str | Path | None = None,
    device: str = "auto",
    config: ScreenConfig | None = None,
    progress: bool = True,
) -> RunOutcome:
    """Screen every image under ``folder`` into ``out`` (see `screenlab.screen`) and write the report.

    The VLM is the endpoint at ``base_url`` or, only with ``simulate``, collage-prompt's simulated VLM fitted
    on the folder's own labelled images (``folder/<category>/<image>``): a dry run of cost and plumbing.
    """
    cfg = config or ScreenConfig()
    if base_url and simulate:
        raise ScreenlabError("--base-url and --simulate: choose one VLM")
    if not base_url and not simulate:
        raise ScreenlabError(
            "no VLM chosen: pass --base-url URL (an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1; "
            f"the key is read from ${api_key_env}) or --simulate for an offline dry run with the simulated VLM"
        )
    folder = Path(folder)
    categories = parse_labels(labels) if labels else categories_from_folders(folder)
    items = scan_folder(folder, categories)
    price_table = PriceTable.load(prices)
    if simulate:
        known = [it for it in items if it.truth is not None]
        if not known:
            raise ScreenlabError(
                f"--simulate fits the simulated VLM on labelled images ({folder}/<category>/<image>, categories "
                f"{', '.join(categories.names)}); {folder} has none"
            )
        client = simulated_vlm(
            [load_image(it.path) for it in known], [it.truth for it in known], categories, model
        )
    else:
        client = endpoint_vlm(base_url, model, cfg.detail, api_key_env, json_mode=cfg.template == "json-v1")
    notes = [f"Labels come from {describe(client, api_key_env)}."]
    if simulate:
        notes.append(
            "The simulated VLM was fitted on this folder's own labelled images, so its accuracy says nothing about "
            "a real model; the calls, tokens and cost are what a real run of this size would report."
        )
    if detector is None:
        notes.append("No --detector given: forgery scores and flags are skipped.")
    else:
        notes.append(f"Forgery scores are P(fake) from the forgery-kd detector in {detector}.")
    result = screen(
        items,
        categories,
        out,
        client,
        detector_dir=detector,
        device=device,
        config=cfg,
        prices=price_table,
        progress=progress,
    )
    settings = {
        "folder": str(folder),
        "vlm": "simulated" if simulate else base_url,
        "model": model,
        "detector": None if detector is None else str(detector),
        "categories": categories.names,
        **asdict(cfg),
    }
    html_path, json_path = write_report(
        Path(out), result, items, title=f"screenlab run: {folder.name}", notes=notes, settings=settings
    )
    return RunOutcome(result, html_path, json_path, notes)
