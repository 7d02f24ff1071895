"""`videolab demo --quick` end to end: figures recomputed from the run's own exports (frame labels for the
segmentation, ivtmetrics run directly for the triplets), the HTML rendered in headless Chromium with every image
loaded and every figure shown, and a cached rerun that recomputes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from difflab_core.browser import find_chromium, render_report, shown_figures
from videolab.cli import app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text()), result.output


def _stage(out: Path, name: str) -> Path:
    (stage,) = (out / "cache").glob(f"{name}-*")
    return stage


def test_segmentation_accuracy_equals_the_exported_frame_labels(demo):
    out, report, _ = demo
    stage = _stage(out, "segment")
    data = stage / "data" / "synthetic"
    videos = [v.removesuffix(".txt") for v in (data / "splits" / "test.split1.bundle").read_text().split()]
    right = total = 0
    for video in videos:
        truth = (data / "groundTruth" / f"{video}.txt").read_text().split()
        # MS-TCN prediction files: a "### Frame level recognition: ###" line, then the labels on one line
        header, labels = (stage / "run" / "prediction" / f"{video}.txt").read_text().splitlines()[:2]
        assert header.startswith("###")
        pred = labels.split()
        assert len(pred) == len(truth)
        right += sum(p == t for p, t in zip(pred, truth, strict=True))
        total += len(truth)
    seg = report["figures"]["segment"]
    assert seg["Acc"] == pytest.approx(100 * right / total)
    assert seg["Acc"] > 100 / 5 + 20  # well above chance over 5 classes after a short training
    assert 0 <= seg["Edit"] <= 100 and seg["F1@10"] >= seg["F1@25"] >= seg["F1@50"]


def test_triplet_ap_equals_ivtmetrics_run_directly(demo):
    import ivtmetrics

    from difftriplet.metrics import canonical_ap

    out, report, _ = demo
    stage = json.loads((_stage(out, "triplet") / "result.json").read_text())
    metric = ivtmetrics.Recognition(num_class=100)
    for video in stage["split"]["test"]:
        probs = np.load(Path(stage["run_dir"]) / "probs" / f"{video}.npy").astype(np.float32)
        annotations = json.loads((Path(stage["data_dir"]) / "labels" / f"{video}.json").read_text())[
            "annotations"
        ]
        targets = np.zeros((len(probs), 100), dtype=np.float32)
        for frame, instances in annotations.items():
            for instance in instances:
                if instance[0] >= 0:
                    targets[int(frame), instance[0]] = 1
        metric.update(targets, probs[:, :100])
        metric.video_end()
    with canonical_ap():
        for key, component in (("AP_IVT", "ivt"), ("AP_IV", "iv"), ("AP_IT", "it")):
            expected = metric.compute_video_AP(component)["mAP"]
            assert report["figures"]["triplet"][key] == pytest.approx(expected, abs=1e-9)
    assert report["figures"]["triplet"]["AP_IVT"] > 0.3  # the synthetic features carry the labels


def test_the_demo_prints_its_headline_and_reruns_from_cache(demo):
    out, report, output = demo
    assert str(out / "report.html") in output
    results = sorted((out / "cache").glob("*/result.json"))
    assert len(results) == 2
    before = {p: p.read_bytes() for p in results}
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert {p: p.read_bytes() for p in results} == before
    assert json.loads((out / "report.json").read_text())["figures"] == report["figures"]


def test_the_report_renders_in_headless_chromium(demo, tmp_path):
    if find_chromium() is None:
        pytest.skip("no headless Chromium here (.ci/run installs Debian's chromium)")
    out, report, _ = demo
    seen = render_report(out / "report.html", tmp_path)
    assert seen.images == 2 and seen.loaded == 2  # the segment bar plots
    assert seen.figures == shown_figures(report["figures"])
