"""End-to-end tests of `memguard video-audit` on mem-video's planted sprite testbed and a tiny video pipeline."""

import json

import pytest
from typer.testing import CliRunner

from memguard.cli import app

SMALL = ["--flow-size", "64", "--content-fps", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    from mem_video import write_sprite_testbed

    root = tmp_path_factory.mktemp("sprites")
    info = write_sprite_testbed(root, per_type=2, n_train=8)
    labels = {row["id"]: row for row in map(json.loads, (root / "labels.jsonl").read_text().splitlines())}
    return info, labels


def test_video_audit_of_a_folder_finds_the_planted_copies(testbed, tmp_path):
    info, labels = testbed
    out = tmp_path / "audit"
    args = [
        "video-audit",
        "--generated",
        info["generated"],
        "--training",
        info["training"],
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, [*args, *SMALL])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    assert set(rows) == set(labels)
    # every planted content copy is found, and nothing else is called one
    assert {i for i, r in rows.items() if r["content_mem"]} == {
        i for i, lab in labels.items() if lab["content"]
    }
    # static and camera-pan videos are never motion copies; a copy of content and motion is
    for i, lab in labels.items():
        if lab["type"] in ("static", "pan"):
            assert not rows[i]["motion_mem"], i
        if lab["type"] == "both":
            assert rows[i]["motion_mem"], i
    n_content = sum(r["content_mem"] for r in rows.values())
    assert f"{len(rows)} videos: {n_content} content copies" in result.output
    assert (out / "report.html").is_file()
    again = CliRunner().invoke(app, [*args, *SMALL])  # resumes: nothing is scored twice
    assert again.exit_code == 0
    assert len((out / "scores.jsonl").read_text().splitlines()) == len(rows)


def test_video_audit_generates_with_a_local_video_pipeline(testbed, tmp_path):
    from difflab_core.tiny import tiny_video_pipeline

    info, _ = testbed
    model = tmp_path / "tiny-video"
    tiny_video_pipeline().save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\n")
    out = tmp_path / "audit"
    args = ["video-audit", "--model", str(model), "--prompts", str(prompts), "--training", info["training"]]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--steps", "2", "--frames", "4", *SMALL])
    assert result.exit_code == 0, result.output
    assert len(list((out / "generated" / "videos").iterdir())) == 2
    assert json.loads((out / "summary.json").read_text())["n_videos"] == 2


def test_video_audit_bad_inputs_print_one_line(testbed, tmp_path):
    info, _ = testbed
    runner = CliRunner()
    cases = [
        (["--generated", info["labels"], "--training", info["training"]], "labels.jsonl"),
        (["--generated", info["generated"], "--training", str(tmp_path)], "no videos"),
        (["--training", info["training"]], "--generated"),
        (["--model", str(tmp_path), "--training", info["training"]], "--prompts"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["video-audit", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
