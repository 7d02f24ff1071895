"""`screenlab demo --quick` end to end: the report's figures are recomputed independently from the run's own
files, a rerun reuses every stage, and the HTML renders in headless Chromium with every image loaded."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from collage_prompt import parse_answer
from difflab_core.browser import find_chromium, render_report, shown_figures
from screenlab.cli import app
from screenlab.demo import demo_categories


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    return out, report, result.output


def _job(out):
    (job,) = (out / "cache" / "quick").glob("screen-*")
    return job


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_accuracy_and_cost_are_recomputed_from_the_answers(demo):
    out, report, _ = demo
    figures, job = report["figures"], _job(out)
    cats = demo_categories()
    for store, group, field in (("vlm", "collage", "correct"), ("baseline", "one_per_call", "correct_alone")):
        answers = _lines(job / store / "results.jsonl")
        assert figures[group]["requests"] == len(answers)
        assert figures[group]["usd"] == pytest.approx(sum(a["cost_usd"] for a in answers))
        assert figures[group]["prompt_tokens"] == sum(a["prompt_tokens"] for a in answers)
        correct = []
        for a in answers:  # the parser's answer per cell against the category folder of that cell's image
            matched = parse_answer(a["text"], len(a["meta"]["image_ids"]), cats).matched
            for image_id, m in zip(a["meta"]["image_ids"], matched, strict=True):
                folder = image_id.split("/")[0]
                if folder in cats.names:
                    correct.append(m is not None and cats.names[m] == folder)
        assert len(correct) == figures["labels"]["n_with_truth"] == 97
        accuracy = figures["labels"]["accuracy"] if store == "vlm" else figures["one_per_call"]["accuracy"]
        assert accuracy == pytest.approx(np.mean(correct))
        assert accuracy == pytest.approx(np.mean([r[field] for r in report["images"] if r["truth"]]))
    assert figures["collage"]["requests"] == int(np.ceil(figures["n_images"] / 9))
    assert figures["cost_ratio_measured"] == pytest.approx(
        figures["collage"]["usd"] / figures["one_per_call"]["usd"]
    )
    assert figures["cost_ratio_measured"] < 0.3  # nine images per call cost far less than one per call


def test_forgery_figures_are_recomputed_from_the_scores(demo):
    from sklearn.metrics import roc_auc_score

    out, report, _ = demo
    figures, job = report["figures"]["forgery"], _job(out)
    truth = json.loads((out / "cache" / "quick" / "screening-set" / "forged.json").read_text())
    rows = _lines(job / "forgery.jsonl")
    assert figures["n_scored"] == len(rows) == len(truth) == report["figures"]["n_images"]
    y = [truth[r["key"]] for r in rows]
    s = [r["score"] for r in rows]
    assert figures["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert figures["n_flagged"] == sum(score >= figures["threshold"] for score in s)
    synthetic = [(truth[r["key"]], r["score"]) for r in rows if r["key"].startswith("forgery-set/")]
    assert sum(t for t, _ in synthetic) == 12
    assert figures["auc_forgery_set"] == pytest.approx(roc_auc_score(*zip(*synthetic, strict=True)))
    assert figures["auc_forgery_set"] > 0.7  # the distilled student separates the held-out forgeries


def test_the_demo_prints_the_report_and_headline_figures(demo):
    out, report, output = demo
    assert str(out / "report.html") in output
    assert "SIMULATED VLM" in output
    forgery = report["figures"]["forgery"]
    assert f"{forgery['n_flagged']} of {forgery['n_scored']} flagged; AUC {forgery['auc']:.3f}" in output


def test_a_cached_rerun_reuses_every_stage(demo):
    out, report, _ = demo
    stores = [*sorted(_job(out).rglob("*.jsonl")), out / "cache" / "quick" / "detector.json"]
    before = {p: p.read_bytes() for p in stores}
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in stores} == before
    assert json.loads((out / "report.json").read_text())["figures"] == report["figures"]


def test_the_report_renders_in_headless_chromium(demo, tmp_path):
    if find_chromium() is None:
        pytest.skip("no headless Chromium here (.ci/run installs Debian's chromium)")
    out, report, _ = demo
    seen = render_report(out / "report.html", tmp_path)
    assert seen.images > 0 and seen.loaded == seen.images
    assert seen.polylines >= 1  # the detector's ROC curve
    assert seen.figures == shown_figures(report["figures"])
