"""``report.json`` (figures, per-image rows, settings) and a self-contained ``report.html`` (core `HtmlReport`)
for a screening run: the cost of collages against one image per call, labels, forgery flags."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .images import ScreenItem, load_image
from .screen import ScreenResult

__all__ = ["FIGURES_HEADING", "MAX_HTML_ROWS", "write_report"]

FIGURES_HEADING = "Figures"
MAX_HTML_ROWS = 1000
SUSPICIOUS_SHOWN = 12


def versions() -> dict[str, str]:
    """Installed versions of the app, the packages it composes and their main dependencies."""
    from difflab_core.report import package_versions

    return package_versions(
        "difflab-screenlab", "collage-prompt", "forgery-kd", "difflab-core", "torch", "timm"
    )


def _cost_rows(f: dict[str, Any]) -> list[dict[str, Any]]:
    def row(name: str, u: dict[str, Any], accuracy) -> dict[str, Any]:
        return {
            "": name,
            "requests": u["requests"],
            "calls": u["calls"],
            "prompt tokens": u["prompt_tokens"],
            "completion tokens": u["completion_tokens"],
            "USD": u["usd"],
            "USD per 1k images": u["usd_per_1k_images"],
            "accuracy": accuracy,
        }

    rows = [row(f"collages ({f['grid']})", f["collage"], f["labels"]["accuracy"])]
    alone = f["one_per_call"]
    if "requests" in alone:
        rows.append(row("one image per call (measured)", alone, alone["accuracy"]))
    rows.append({"": "collages (cost-model estimate)", "USD": f["collage"]["usd_estimate"]})
    rows.append({"": "one image per call (cost-model estimate)", "USD": alone["usd_estimate"]})
    return rows


def _category_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in sorted({r["truth"] for r in rows if r["truth"] is not None}):
        got = [r for r in rows if r["truth"] == name]
        correct = sum(bool(r["correct"]) for r in got)
        out.append({"category": name, "images": len(got), "correct": correct, "accuracy": correct / len(got)})
    unknown = [r for r in rows if r["truth"] is None]
    if unknown:
        common = Counter(r["label"] or "(no answer)" for r in unknown).most_common(5)
        out.append(
            {
                "category": "(not known)",
                "images": len(unknown),
                "most common labels": ", ".join(f"{label} {n}" for label, n in common),
            }
        )
    return out


def write_report(
    out: Path,
    result: ScreenResult,
    items: list[ScreenItem],
    *,
    title: str,
    notes: list[str],
    settings: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.html``; returns their paths."""
    from PIL import Image

    from difflab_core.report import HtmlReport, write_json

    f = result.figures
    json_path = write_json(
        out / "report.json",
        {"figures": f, "images": result.rows, "settings": settings, "versions": versions()},
    )
    rep = HtmlReport(title)
    for note in notes:
        rep.add_text(note)
    if result.status != "complete":
        rep.add_text(
            f"The job stopped early ({result.status}{': ' + result.error if result.error else ''}); rerun the "
            "same command to continue where it stopped."
        )

    rep.add_heading("Cost: collages against one image per call")
    rep.add_text(
        f"{f['n_images']} images, {f['n_categories']} categories, {f['grid']} collages; USD at {f['model']} "
        "prices from the reported token usage"
        + ("" if f["priced"] else " (no price known for this model: USD is 0; tokens are what counts)")
        + ". The estimates are collage-prompt's cost model for the same images."
    )
    rep.add_table(_cost_rows(f))

    rep.add_heading("Labels")
    rep.add_text(
        f"{f['labels']['n_labelled']} of {f['n_images']} images got a label from the list; accuracy is over the "
        f"{f['labels']['n_with_truth']} images whose category is known (a missing answer counts as wrong)."
    )
    rep.add_table(_category_rows(result.rows))
    if result.collages:
        rep.add_images(
            [Image.open(p) for p in result.collages],
            [f"collage {p.stem} as sent" for p in result.collages],
            width=256,
        )

    rep.add_heading("Forgery flags")
    if "forgery" not in f:
        rep.add_text("No detector was given (--detector), so no forgery scores or flags were computed.")
    else:
        fg = f["forgery"]
        rep.add_text(
            f"{fg['n_flagged']} of {fg['n_scored']} images flagged (P(fake) >= {fg['threshold']:.2f}, the "
            f"detector's threshold: {fg['threshold_source']}). "
            + (
                f"On the {fg['n_known']} images whose forgery truth is known: ROC AUC {fg['auc']:.3f}, "
                f"recall {fg['recall']:.3f}, false-positive rate {fg['false_positive_rate']:.3f}."
                if fg["auc"] is not None
                else "No images with known forgery truth of both kinds, so no AUC."
            )
        )
        if result.roc is not None:
            rep.add_plot(
                {"detector": result.roc},
                title="ROC of P(fake) on the images with known truth",
                xlabel="false positive rate",
                ylabel="true positive rate",
            )
        by_id = {it.id: it for it in items}
        top = sorted(
            (r for r in result.rows if r.get("forgery_score") is not None),
            key=lambda r: -r["forgery_score"],
        )[:SUSPICIOUS_SHOWN]
        if top:
            rep.add_text("The most suspicious images:")
            rep.add_images(
                [load_image(by_id[r["id"]].path) for r in top],
                [f"{r['id']}: {r['forgery_score']:.2f}" for r in top],
                width=96,
            )

    rep.add_heading("Per-image results")
    if len(result.rows) > MAX_HTML_ROWS:
        rep.add_text(f"The first {MAX_HTML_ROWS} of {len(result.rows)} images; report.json holds them all.")
    rep.add_table(result.rows[:MAX_HTML_ROWS])
    rep.add_heading(FIGURES_HEADING)
    rep.add_figures(f)
    rep.add_json({"settings": settings, "versions": versions()}, summary="settings and versions")
    html_path = rep.save(out / "report.html")
    return html_path, json_path
