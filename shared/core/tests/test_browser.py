"""The report probe: a page with figures and images is read back as a reader sees it."""

import numpy as np
import pytest

from difflab_core.browser import find_chromium, render_report, shown_figures
from difflab_core.report import HtmlReport, scalar_figures

FIGURES = {
    "auc": 0.912345,
    "n": 7,
    "ok": True,
    "missing": None,
    "by_model": {"a": 1.5, "b": {"c": 2.0}},
    "xs": [1],
}


def test_scalar_figures_flattens_nested_dicts_and_drops_lists():
    rows = scalar_figures(FIGURES)
    assert [r["figure"] for r in rows] == ["auc", "n", "ok", "missing", "by_model.a", "by_model.b.c"]
    assert shown_figures(FIGURES) == {
        "auc": "0.9123",
        "n": "7",
        "ok": "True",
        "missing": "",
        "by_model.a": "1.5",
        "by_model.b.c": "2",
    }


def test_a_rendered_report_shows_its_figures_and_images(tmp_path):
    if find_chromium() is None:
        pytest.skip("no headless Chromium here (.ci/run installs Debian's chromium)")
    rep = HtmlReport("probe").add_figures(FIGURES)
    rep.add_image(np.zeros((8, 8, 3), dtype=np.uint8), caption="black")
    rep.add_plot({"line": ([0, 1, 2], [0.0, 1.0, 0.5])}, title="plot")
    path = rep.save(tmp_path / "report.html")
    seen = render_report(path, tmp_path / "home")
    assert (seen.images, seen.loaded) == (1, 1)
    assert seen.polylines == 1
    assert seen.figures == shown_figures(FIGURES)
    assert not (tmp_path / "report.probe.html").exists()
