"""`memguard demo --quick` end to end: the report's figures are recomputed independently from the run's own
files, and the HTML is rendered in headless Chromium with every image loaded and every figure shown."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from difflab_core.browser import find_chromium, render_report, shown_figures
from memguard.cli import app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    return out, report, result.output


def _work(out):
    (work,) = (out / "cache").glob("steps*")
    return work


def test_detection_figures_are_recomputed_from_the_audit_rows(demo):
    from sklearn.metrics import roc_auc_score

    out, report, _ = demo
    figures = report["figures"]
    rows = [json.loads(line) for line in (_work(out) / "audit" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == sum(figures["n_prompts"].values()) == 65
    labels = [r["label"] for r in rows]
    for method in ("be", "wen", "ren_ae"):
        scores = [float(np.mean(r[method])) for r in rows]
        assert figures[f"det_all_{method}_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # flagging: the threshold is the 95% quantile of the novel prompts' scores; recall counts memorized rows above it
    scores = np.asarray([float(np.mean(r[figures["flag_method"]])) for r in rows])
    y = np.asarray(labels)
    threshold = float(np.quantile(scores[y == 0], figures["flag_quantile"]))
    assert figures["flag_threshold"] == pytest.approx(threshold)
    assert figures["flag_recall"] == pytest.approx(float((scores[y == 1] > threshold).mean()))
    assert figures["n_flagged"] == int((scores > threshold).sum())


def test_mitigation_figures_are_recomputed_from_the_verdict_rows(demo):
    out, report, _ = demo
    figures = report["figures"]
    rows = [
        json.loads(line) for line in (_work(out) / "mitigation" / "results.jsonl").read_text().splitlines()
    ]
    assert figures["n_mitigated"] == len({r["prompt_key"] for r in rows}) > 0
    for method in ("be-pe", "amg"):
        copied = [c for r in rows if r["method"] == method for c in r["copied"]]
        tag = method.replace("-", "_")
        assert figures[f"memorized_fraction_after_{tag}"] == pytest.approx(float(np.mean(copied)))
    # prompt-embedding optimisation on flagged prompts removes most copies on this testbed
    assert figures["memorized_fraction_after_be_pe"] < figures["memorized_fraction_before"]
    # AMG's whole-image detector removes the whole-photo copies among the flagged prompts
    assert figures["n_mitigated_global"] >= 1
    assert figures["memorized_fraction_after_amg_global"] < figures["memorized_fraction_before_global"]


def test_the_demo_prints_the_report_and_headline_figures(demo):
    out, report, output = demo
    assert str(out / "report.html") in output
    auc = report["figures"]["det_all_ren_ae_auc"]
    assert f"detection AUC (ren_ae, all prompts): {auc:.3f}" in output


def test_a_cached_rerun_reuses_every_stage(demo):
    out, report, _ = demo
    stores = sorted(_work(out).glob("*/results.jsonl"))
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
    assert seen.polylines >= 4  # one ROC curve per detector
    assert seen.figures == shown_figures(report["figures"])
