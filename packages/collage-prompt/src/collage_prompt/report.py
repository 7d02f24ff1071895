"""``report.json`` + a self-contained ``report.html`` (core `HtmlReport`) for an evaluation run.

The figures: per (grid, method) the measured accuracy, cost and parse rate; per collage result against the
standard prompt the cost ratio and CES_rel, CER, PCE (our definitions, :mod:`collage_prompt.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collage_prompt.evaluate import Report
from collage_prompt.metrics import cer, ces_rel, pce
from difflab_core.report import HtmlReport, write_json

__all__ = ["evaluation_figures", "write_evaluation_report"]

STANDARD = ("1x1", "standard")


def evaluation_figures(report: Report) -> dict[str, Any]:
    """``{"results": {"RxC/method": {...}}, "vs_standard": {"RxC/method": {...}}}`` (the latter only with a
    standard-prompt result whose accuracy and cost are non-zero)."""
    results = {
        f"{grid}/{method}": {
            "acc": r.acc,
            "acc_lenient": r.acc_lenient,
            "parse_success_rate": r.parse_success_rate,
            "usd_per_image": r.usd_per_image,
            "tokens_per_image": r.tokens_per_image,
            "n_images": r.n_images,
        }
        for (grid, method), r in report.results.items()
    }
    figures: dict[str, Any] = {"results": results}
    s = report.results.get(STANDARD)
    if s is not None and s.acc > 0 and s.usd_per_image > 0:
        figures["vs_standard"] = {
            f"{grid}/{method}": {
                "cost_ratio": r.usd_per_image / s.usd_per_image,
                "acc_ratio": r.acc / s.acc,
                "ces_rel": ces_rel(r.acc, s.acc, r.usd_per_image, s.usd_per_image),
                "cer": cer(r.acc, s.acc, r.usd_per_image, s.usd_per_image),
                "pce": pce(r.acc, r.usd_per_image, s.usd_per_image),
            }
            for (grid, method), r in report.results.items()
            if (grid, method) != STANDARD and r.usd_per_image > 0
        }
    return figures


def write_evaluation_report(
    report: Report, out_dir: str | Path, *, title: str = "collage-prompt evaluation", notes: list[str] = ()
) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` (figures, image sets, notes) and ``out_dir/report.html``; returns
    ``(html_path, json_path)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = evaluation_figures(report)
    json_path = write_json(
        out / "report.json", {"figures": figures, "sets": report.sets, "notes": list(notes)}
    )
    rep = HtmlReport(title)
    for note in notes:
        rep.add_text(note)
    rep.add_heading("Accuracy and cost per grid and arrangement method")
    rep.add_table(
        [{"grid/method": name, **values} for name, values in figures["results"].items()],
        columns=[
            "grid/method",
            "acc",
            "acc_lenient",
            "parse_success_rate",
            "usd_per_image",
            "tokens_per_image",
            "n_images",
        ],
    )
    if "vs_standard" in figures:
        rep.add_heading("Against the standard prompt (one image per call)")
        rep.add_text(
            "cost_ratio = collage USD per image / standard USD per image; CES_rel = (Acc_c/Acc_s)·(C_s/C_c); "
            "CER = (1 − C_c/C_s) / max(0.001, 1 − Acc_c/Acc_s); PCE = Acc_c·C_s/C_c (our definitions)."
        )
        rep.add_table([{"grid/method": name, **values} for name, values in figures["vs_standard"].items()])
    rep.add_heading("Figures")
    rep.add_figures(figures)
    html_path = rep.save(out / "report.html")
    return html_path, json_path
