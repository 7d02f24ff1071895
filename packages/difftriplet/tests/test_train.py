"""Training on core train: overfitting the synthetic set, exact resume, a short fold run (§5)."""

from __future__ import annotations

import json

import pytest
import torch

from difflab_core.train import load_weights
from difftriplet.data import TripletFeatureDataset
from difftriplet.predict import TripletRecognizer, build_model
from difftriplet.splits import Split
from difftriplet.synthetic import make_cholect50_dataset
from difftriplet.train import evaluate_videos, make_trainer, train_fold

OVERFIT_VIDEOS = ("VID79", "VID02", "VID51", "VID80")


@pytest.fixture(scope="module")
def overfit_set(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("overfit")
    make_cholect50_dataset(root, videos=OVERFIT_VIDEOS, frames=(120, 120), seed=1, write_frames=False)
    split = Split(OVERFIT_VIDEOS, (), ())
    return TripletFeatureDataset(root, "cholect50", split, "train", "synthetic", tiny_cfg, seed=0)


def test_tiny_model_overfits_the_training_set(overfit_set, tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_updates(train={"lr": 2e-3, "max_steps": 400})
    model = build_model(cfg)
    before = evaluate_videos(model, cfg, overfit_set)  # canonical policy, S = 8, w = 1 (I)
    result = make_trainer(model, overfit_set, cfg, tmp_path, 400).fit()
    after = evaluate_videos(model, cfg, overfit_set)
    assert result.step == 400
    assert before["AP_IVT"] <= 0.40
    assert after["AP_IVT"] >= 0.90 and after["AP_I"] >= 0.90


def test_resume_is_exact(overfit_set, tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_updates(train={"max_steps": 8})
    straight = build_model(cfg)
    make_trainer(straight, overfit_set, cfg, tmp_path / "straight", 8).fit()
    first = build_model(cfg)
    make_trainer(first, overfit_set, cfg, tmp_path / "split", 4).fit()
    resumed = build_model(cfg)  # a fresh model and Trainer pick up the step-4 checkpoint
    result = make_trainer(resumed, overfit_set, cfg, tmp_path / "split", 8).fit(resume=True)
    assert result.resumed_from is not None and result.resumed_from.name == "step-00000004"
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    check = build_model(cfg)
    load_weights(check, tmp_path / "split" / "model.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(check.state_dict().values(), straight.state_dict().values(), strict=True)
    )


def test_train_fold_selects_on_validation_and_exports(t50, split, tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_updates(train={"max_steps": 6, "eval_every": 1}, diffusion={"sampling_steps": 2})
    out = tmp_path / "run"
    result = train_fold(cfg, t50.root, "cholect50", 1, "synthetic", out, split=split)
    assert [r["step"] for r in result.history] == [3, 6] and {r["set"] for r in result.history} == {"val"}
    assert result.selected_step in (3, 6)
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["nan_policy"] == "canonical" and report["test"]["versions"]["ivtmetrics"] == "0.1.5"
    assert set(report["test"]) >= {"AP_I", "AP_V", "AP_T", "AP_IV", "AP_IT", "AP_IVT", "Top5_IVT"}
    for video, frames in ((v, t50.frames[v]) for v in split.test):
        assert (out / "probs" / f"{video}.npy").is_file() and (out / "pred" / f"{video}.json").is_file()
        assert len((out / "top" / f"{video}.csv").read_text().splitlines()) == frames + 1
    recognizer = TripletRecognizer.from_pretrained(out / "model", device="cpu")
    assert recognizer.predict(torch.randn(32, 10).numpy(), "VID32").shape == (10, 131)
    again = train_fold(cfg, t50.root, "cholect50", 1, "synthetic", out, split=split)  # resumes: nothing to do
    assert again.history == result.history and again.test_metrics == pytest.approx(
        result.test_metrics, nan_ok=True
    )


def test_test_window_selection_is_labelled(t50, split, tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_updates(
        train={"max_steps": 6, "eval_every": 1},
        diffusion={"sampling_steps": 1},
        eval={"selection": "test-window"},
    )
    result = train_fold(cfg, t50.root, "cholect50", 1, "synthetic", tmp_path / "run", split=split)
    assert {r["set"] for r in result.history} == {"test"}
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "TEST set" in report["selection_note"] and report["selection"] == "test-window"
