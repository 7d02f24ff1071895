"""`videolab segment ...` and `videolab triplet ...` run the packages' commands on users' data."""

import json

import pytest
from typer.testing import CliRunner

from videolab.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [*map(str, args)])


def test_segment_commands_train_and_evaluate_a_synthetic_split(tmp_path):
    made = _run("segment", "make-synthetic", "--out", tmp_path / "data", "--videos", 6, "--test-videos", 2)
    assert made.exit_code == 0, made.output
    args = [
        "segment",
        "train",
        "--preset",
        "tiny",
        "--dataset",
        "synthetic",
        "--data-root",
        tmp_path / "data",
    ]
    trained = _run(*args, "--split", 1, "--out", tmp_path / "run", "--max-steps", 4, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    scored = _run("segment", "evaluate", "--run", tmp_path / "run")
    assert scored.exit_code == 0 and "Acc" in scored.output


def test_triplet_commands_train_and_evaluate_a_synthetic_fold(tmp_path):
    from difftriplet.train import fold_split

    split = fold_split("cholect50", 1)  # the official fold: every CholecT50 video, short synthetic ones
    videos = ",".join([*split.train, *split.val, *split.test])
    made = _run(
        "triplet", "make-synthetic", "--out", tmp_path / "t50", "--videos", videos, "--no-frames",
        "--min-frames", 12, "--max-frames", 12,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    args = [
        "triplet",
        "train",
        "--data",
        tmp_path / "t50",
        "--features",
        "synthetic",
        "--out",
        tmp_path / "run",
    ]
    trained = _run(*args, "--preset", "tiny", "--max-steps", 4, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    scored = _run("triplet", "evaluate", "--run", tmp_path / "run")
    assert scored.exit_code == 0, scored.output
    assert "AP_IVT" in json.loads(scored.output.split(": ", 1)[1])


@pytest.mark.parametrize(
    "args",
    [
        ["segment", "train", "--preset", "tiny", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/run"],
        ["triplet", "train", "--data", "{tmp}/nowhere", "--features", "synthetic", "--out", "{tmp}/run"],
        ["triplet", "make-synthetic", "--out", "{tmp}/d", "--variant", "cholect99"],
    ],
)
def test_bad_inputs_print_one_error_line(tmp_path, args):
    result = _run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
