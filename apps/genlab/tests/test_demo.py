"""`genlab demo --quick` end to end: figures recomputed from the run's own files, the HTML rendered in headless
Chromium with every image loaded and every figure shown, and a cached rerun that recomputes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from difflab_core.browser import find_chromium, render_report, shown_figures
from genlab.cli import app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text()), result.output


def _stage(out: Path, name: str) -> Path:
    (stage,) = (out / "cache").glob(f"{name}-*")
    return stage


def test_transfer_figures_match_the_saved_samples(demo):
    from difflab_core.testbed import digits_classifier

    out, report, _ = demo
    adapt = report["figures"]["adapt"]
    proxy = digits_classifier()
    samples = load_file(_stage(out, "adapt") / "samples.safetensors")
    for variant in ("source_only", "finetune_adapter", "tan_adapter"):
        images = samples[variant]
        assert images.shape[1:] == (1, 16, 16) and 0 <= float(images.min()) <= float(images.max()) <= 1
        rate = float((proxy.predict(images) == 9).float().mean())
        assert adapt[variant]["target_class_rate"] == pytest.approx(rate)
    # the source model never saw a 9; adapting to ten 9s must make 9s
    assert adapt["tan_adapter"]["target_class_rate"] > adapt["source_only"]["target_class_rate"] + 0.2
    assert adapt["tan_adapter"]["proxy_fid"] < adapt["source_only"]["proxy_fid"]
    assert (
        0 < adapt["trainable_fraction"] < 1
    )  # ANT adapters are ~20 % of this tiny UNet (2.2 % of a church DDPM)


def test_sampler_figures_are_the_means_of_the_stored_cells(demo):
    out, report, _ = demo
    cells = [
        json.loads(line)
        for line in (_stage(out, "samplers") / "cells" / "cells.jsonl").read_text().splitlines()
    ]
    fd = report["figures"]["samplers_fd"]
    assert set(fd) == {"ddim", "ams", "dpmpp"}
    for name, by_nfe in fd.items():
        for nfe, value in by_nfe.items():
            mine = [c["fd"] for c in cells if c["sampler"] == name and c["nfe"] == int(nfe)]
            assert value == pytest.approx(float(np.mean(mine)))
            ratio = report["figures"]["samplers_ratio_vs_ddim"][name][nfe]
            assert ratio == pytest.approx(value / fd["ddim"][nfe])


def test_compress_guidance_uses_the_compress_schedule_and_guides(demo):
    from guidance_kit import compress_schedule

    out, report, _ = demo
    g = report["figures"]["guidance"]
    stage = json.loads((_stage(out, "guidance") / "result.json").read_text())
    labels = torch.tensor(stage["labels"])
    for mode in ("unguided", "full", "compress"):
        predicted = torch.tensor(stage[mode]["predicted"])
        assert g[f"accuracy_{mode}"] == pytest.approx(float((predicted == labels).float().mean()))
    assert g["classifier_calls_full"] == g["steps"]
    assert g["classifier_calls_compress"] == compress_schedule(g["steps"], 5, 2.0).num_guided
    assert g["accuracy_full"] > g["accuracy_unguided"] and g["accuracy_compress"] > g["accuracy_unguided"]


def test_the_demo_prints_its_headline_and_reruns_from_cache(demo):
    out, report, output = demo
    assert str(out / "report.html") in output
    results = sorted((out / "cache").glob("*/result.json"))
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
    assert seen.images >= 10 and seen.loaded == seen.images
    assert seen.polylines == 3  # one Fréchet-distance curve per sampler
    assert seen.figures == shown_figures(report["figures"])
