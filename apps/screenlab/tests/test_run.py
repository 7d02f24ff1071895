"""`screenlab run` end to end on a temporary folder of PNGs with a tiny exported detector: results, resume after
an interruption, and bad inputs that print one clear line."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from screenlab.cli import app

N_PER_CLASS = 5
LABELS = ["--labels", "circle,square"]  # unsorted/ is then not a category: its image's truth is unknown


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from collage_prompt import offline_dataset

    root = tmp_path_factory.mktemp("photos")
    shapes = offline_dataset("shapes", size=32, per_class=N_PER_CLASS)
    for name in ("circle", "square"):
        (root / name).mkdir()
        k = shapes.classes.names.index(name)
        for i, j in enumerate(np.flatnonzero(shapes.labels == k)):
            shapes.images[j].save(root / name / f"{i}.png")
    (root / "unsorted").mkdir()
    shapes.images[-1].save(root / "unsorted" / "x.png")  # a ring: truth not known from the folder
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from forgery_kd import Student, export_student

    return export_student(
        Student("test_efficientnet"), tmp_path_factory.mktemp("det") / "detector", img_size=32
    )


def _run(folder, out, *extra):
    args = ["run", str(folder), "--out", str(out), "--simulate", "--grid", "2", *extra]
    return CliRunner().invoke(app, args)


def _lines(path):
    return path.read_text().splitlines()


def _one_clean_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == "0.1.0"


def test_run_labels_scores_and_reports(folder, detector, tmp_path):
    from forgery_kd import ForgeryDetector

    out = tmp_path / "run"
    result = _run(folder, out, *LABELS, "--detector", str(detector), "--baseline")
    assert result.exit_code == 0, result.output
    assert "SIMULATED VLM" in result.output
    report = json.loads((out / "report.json").read_text())
    rows, figures = report["images"], report["figures"]
    assert [r["id"] for r in rows] == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert figures["n_images"] == 2 * N_PER_CLASS + 1 and figures["labels"]["n_with_truth"] == 2 * N_PER_CLASS
    assert figures["collage"]["requests"] == 3  # 11 images in 2x2 collages: 4 + 4 + 3
    answers = [json.loads(line) for line in _lines(out / "vlm" / "results.jsonl")]
    assert figures["collage"]["usd"] == pytest.approx(sum(a["cost_usd"] for a in answers))
    assert figures["one_per_call"]["requests"] == 11
    # the scores are the detector's own P(fake) for each file
    expected = ForgeryDetector.load(detector, device="cpu").predict_images([folder / r["id"] for r in rows])
    assert [r["forgery_score"] for r in rows] == pytest.approx(expected, abs=1e-5)
    assert figures["forgery"]["n_flagged"] == sum(s >= 0.5 for s in expected)
    assert figures["forgery"]["auc"] is None  # no forgery truth for a user's folder
    assert (out / "report.html").is_file() and len(list((out / "collages").glob("*.png"))) == 3


def test_without_a_detector_forgery_flags_are_skipped(folder, tmp_path):
    result = _run(folder, tmp_path / "run", *LABELS)
    assert result.exit_code == 0, result.output
    assert "No --detector given" in result.output
    assert "forgery" not in json.loads((tmp_path / "run" / "report.json").read_text())["figures"]


def test_an_interrupted_run_resumes_where_it_stopped(folder, detector, tmp_path, monkeypatch):
    from collage_prompt import SimulatedVLM

    calls = []
    answer = SimulatedVLM.complete

    def interrupted_on_the_second_call(self, req):
        calls.append(req.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer(self, req)

    out = tmp_path / "run"
    monkeypatch.setattr(SimulatedVLM, "complete", interrupted_on_the_second_call)
    stopped = _run(folder, out, *LABELS, "--detector", str(detector))
    assert stopped.exit_code == 130, stopped.output
    assert "rerun the same command to continue" in stopped.output
    assert len(_lines(out / "vlm" / "results.jsonl")) == 1 and len(_lines(out / "labels.jsonl")) == 4
    assert not (out / "forgery.jsonl").exists()
    first_rows = _lines(out / "labels.jsonl")

    def counted(self, req):
        calls.append(req.key)
        return answer(self, req)

    calls.clear()
    monkeypatch.setattr(SimulatedVLM, "complete", counted)
    resumed = _run(folder, out, *LABELS, "--detector", str(detector))
    assert resumed.exit_code == 0, resumed.output
    assert len(calls) == 2  # only the two collages not answered before
    assert _lines(out / "labels.jsonl")[:4] == first_rows
    assert len(_lines(out / "labels.jsonl")) == len(_lines(out / "forgery.jsonl")) == 11
    # a torn last row (killed while writing) is dropped and redone; finished rows are kept
    rows = _lines(out / "forgery.jsonl")
    (out / "forgery.jsonl").write_text("\n".join(rows[:5]) + "\n" + rows[5][:10])
    again = _run(folder, out, *LABELS, "--detector", str(detector))
    assert again.exit_code == 0, again.output
    assert _lines(out / "forgery.jsonl")[:5] == rows[:5] and len(_lines(out / "forgery.jsonl")) == 11
    assert len(calls) == 2
    changed = _run(folder, out, *LABELS, "--grid", "3")
    assert "fingerprint" in _one_clean_line(changed)


def test_bad_inputs_print_one_line(folder, detector, tmp_path):
    missing = _run(tmp_path / "nope", tmp_path / "o1")
    assert "nope" in _one_clean_line(missing)
    (tmp_path / "empty").mkdir()
    assert "no images" in _one_clean_line(_run(tmp_path / "empty", tmp_path / "o2", "--labels", "a,b"))
    broken = tmp_path / "broken"
    (broken / "cat").mkdir(parents=True)
    (broken / "dog").mkdir()
    (broken / "cat" / "ok.png").write_bytes((folder / "circle" / "0.png").read_bytes())
    (broken / "dog" / "bad.png").write_bytes(b"not a png at all")
    assert "bad.png" in _one_clean_line(_run(broken, tmp_path / "o3"))
    bad_detector = tmp_path / "bad-detector"
    bad_detector.mkdir()
    (bad_detector / "config.json").write_text((detector / "config.json").read_text())
    (bad_detector / "model.safetensors").write_bytes(b"garbage")
    line = _one_clean_line(_run(folder, tmp_path / "o4", "--detector", str(bad_detector)))
    assert "model.safetensors" in line
    no_vlm = CliRunner().invoke(app, ["run", str(folder), "--out", str(tmp_path / "o5")])
    assert "--simulate" in _one_clean_line(no_vlm)
    one_label = _run(folder, tmp_path / "o6", "--labels", "circle")
    assert "--labels" in _one_clean_line(one_label)
