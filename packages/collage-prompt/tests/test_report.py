"""The evaluation report: figures worked by hand, and `collage-prompt evaluate` writing report.json + report.html
whose figure table (read back in headless Chromium where present) matches the JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from collage_prompt.cli import app
from collage_prompt.evaluate import MethodResult, Report
from collage_prompt.report import evaluation_figures, write_evaluation_report
from difflab_core.browser import find_chromium, render_report, shown_figures


def _result(grid, method, acc, usd):
    return MethodResult(grid, method, acc, acc, 1.0, usd, 100.0, 8, [acc])


def test_figures_against_the_standard_prompt_by_hand(tmp_path):
    report = Report(
        {
            ("1x1", "standard"): _result("1x1", "standard", 0.8, 0.004),
            ("3x3", "random"): _result("3x3", "random", 0.6, 0.001),
        },
        {"3x3": [[0, 1, 2, 3, 4, 5, 6, 7, 8]]},
    )
    figures = evaluation_figures(report)
    assert figures["results"]["3x3/random"]["acc"] == 0.6
    rel = figures["vs_standard"]["3x3/random"]
    assert rel["cost_ratio"] == pytest.approx(0.25)  # 0.001 / 0.004
    assert rel["acc_ratio"] == pytest.approx(0.75)  # 0.6 / 0.8
    assert rel["ces_rel"] == pytest.approx(3.0)  # 0.75 * 4
    assert rel["cer"] == pytest.approx(3.0)  # (1 - 0.25) / (1 - 0.75)
    assert rel["pce"] == pytest.approx(2.4)  # 0.6 * 4
    assert "1x1/standard" not in figures["vs_standard"]
    html_path, json_path = write_evaluation_report(report, tmp_path, notes=["a note"])
    saved = json.loads(json_path.read_text())
    assert saved["figures"] == figures and saved["sets"] == report.sets and saved["notes"] == ["a note"]
    assert "a note" in html_path.read_text()


def test_evaluate_command_writes_the_html_next_to_its_json(tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--grids", "2x2", "--n-sets", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert set(printed) == set(figures["results"]) == {"2x2/random", "2x2/similarity_group", "1x1/standard"}
    for name, values in printed.items():
        assert figures["results"][name]["acc"] == values["acc"]
        assert figures["results"][name]["usd_per_image"] == values["usd_per_image"]
    assert str(out / "report.html") in result.stderr
    if find_chromium() is None:
        pytest.skip("no headless Chromium here")
    seen = render_report(out / "report.html", tmp_path / "browser")
    assert seen.figures == shown_figures(figures)
