"""Training: accumulation windows across epochs, exact resume, the full fold, and overfitting the synthetic set."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from diffact.data import ItemSampler, MSTCNDataset, single_item
from diffact.metrics import SegmentationMetrics
from diffact.predict import DiffActSegmenter
from diffact.synthetic import make_mstcn_dataset
from diffact.train import build_model, make_trainer, train_fold
from difflab_core.train import TrainConfig as CoreTrainConfig
from difflab_core.train import Trainer, load_weights


def test_steps_fall_every_four_videos_across_epochs(data_root, tiny_cfg, tmp_path) -> None:
    ds = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)
    assert len(ds) == 6
    model = build_model(tiny_cfg)
    seen, snapshots = [], []

    def loss_fn(m, item, step):
        seen.append((step, item["epoch"]))
        snapshots.append(m.decoder.conv_out.weight.detach().clone())
        return m(item["features"][None], torch.tensor([5]), torch.rand(1, 5, item["features"].shape[1]))[
            1
        ].mean()

    loader = DataLoader(ds, batch_size=1, sampler=ItemSampler(len(ds), 0), collate_fn=single_item)
    core = CoreTrainConfig(max_steps=3, lr=1e-2, grad_accum=4, max_grad_norm=None, progress=False)
    Trainer(
        model, loss_fn, loader, core, tmp_path, optimizer=torch.optim.Adam(model.parameters(), 1e-2)
    ).fit()
    assert [s for s, _ in seen] == [1] * 4 + [2] * 4 + [3] * 4
    assert [e for _, e in seen] == [0] * 6 + [1] * 6  # the second window spans the epoch boundary
    changed = [not torch.equal(a, b) for a, b in itertools.pairwise(snapshots)]
    assert [i + 1 for i, c in enumerate(changed) if c] == [4, 8]  # the weights move after items 4 and 8


def test_resume_is_bit_identical(data_root, tiny_cfg, tmp_path) -> None:
    ds = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)
    cfg = tiny_cfg.with_updates(train={"accumulation": 2})
    make_trainer(build_model(cfg), ds, cfg, None, tmp_path / "straight", 8).fit()
    make_trainer(build_model(cfg), ds, cfg, None, tmp_path / "cut", 4, checkpoint_every=2).fit()
    resumed = make_trainer(build_model(cfg), ds, cfg, None, tmp_path / "cut", 8).fit(resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-00000004"
    a, b = build_model(cfg), build_model(cfg)
    load_weights(a, tmp_path / "straight" / "model.safetensors")
    load_weights(b, tmp_path / "cut" / "model.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name

    def losses(run):
        return [
            json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        ]

    assert losses("straight") == losses("cut") and len(losses("cut")) == 8


def test_train_fold_outputs_and_resume(data_root, tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg.with_updates(train={"max_steps": 4, "eval_every": 1}, diffusion={"sampling_steps": 4})
    result = train_fold(cfg, data_root, 1, tmp_path / "run")
    run = tmp_path / "run"
    assert result.steps == 4 and result.selection == "val"
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]  # 5 train videos / 4 per step: eval every step
    for sub in ("model", "best", "last"):
        assert (run / sub / "diffusion_pytorch_model.safetensors").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["selection"] == "val" and set(report["test_metrics"]) == {"mstcn", "asformer"}
    test_names = ["video006", "video007"]
    for name in test_names:
        assert (
            (run / "prediction" / f"{name}.txt").read_text().startswith("### Frame level recognition: ###\n")
        )
        segs = json.loads((run / "segments" / f"{name}.json").read_text())
        assert segs[0]["start"] == 0 and segs[-1]["end_s"] == pytest.approx(segs[-1]["end"] / 15.0)
    again = train_fold(cfg, data_root, 1, run)
    assert again.test_metrics == result.test_metrics and again.selected_step == result.selected_step


def train_accuracy(model, cfg, ds) -> dict[str, float]:
    segmenter = DiffActSegmenter(model, cfg, ds.class_names, "cpu")
    metrics = SegmentationMetrics()
    for video in ds.videos:
        metrics.update(segmenter.predict(video.features, name=video.name).names, video.labels)
    model.train()
    return metrics.compute()


def test_short_run_learns(tmp_path, tiny_cfg) -> None:
    """A 100-step run on two videos moves frame accuracy well above where it starts."""
    make_mstcn_dataset(tmp_path, num_videos=3, num_test=1, frames=(80, 80), seed=0)
    cfg = tiny_cfg.with_updates(train={"lr": 2e-3, "accumulation": 1})
    ds = MSTCNDataset(tmp_path, "synthetic", 1, "train", cfg)
    model = build_model(cfg)
    before = train_accuracy(model, cfg, ds)
    make_trainer(model, ds, cfg, None, tmp_path / "run", 100).fit()
    after = train_accuracy(model, cfg, ds)
    assert before["Acc"] <= 50 and after["Acc"] >= before["Acc"] + 25


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DIFFACT_SLOW") != "1", reason="about 45 CPU-seconds; DIFFACT_SLOW=1 runs it"
)
def test_overfits_synthetic_set(tmp_path, tiny_cfg) -> None:
    """The spec's overfit run: 4 videos of 80 frames, lr 2e-3, 200 steps of 4 videos, 25-step DDIM."""
    make_mstcn_dataset(tmp_path, num_videos=5, num_test=1, frames=(80, 80), seed=0)
    cfg = tiny_cfg.with_updates(train={"lr": 2e-3, "accumulation": 4})
    ds = MSTCNDataset(tmp_path, "synthetic", 1, "train", cfg)
    model = build_model(cfg)
    before = train_accuracy(model, cfg, ds)
    make_trainer(model, ds, cfg, None, tmp_path / "run", 200).fit()
    after = train_accuracy(model, cfg, ds)
    assert before["Acc"] <= 50
    assert after["Acc"] >= 85 and after["F1@50"] >= 75


def test_predict_dataset_resumes_and_repairs_exports(data_root, tiny_cfg, tmp_path) -> None:
    from diffact.predict import predict_dataset

    cfg = tiny_cfg.with_updates(diffusion={"sampling_steps": 2})
    segmenter = DiffActSegmenter(build_model(cfg), cfg, [str(i) for i in range(5)], "cpu")
    test_set = MSTCNDataset(data_root, "synthetic", 1, "test", cfg)
    first = predict_dataset(segmenter, test_set, tmp_path)
    pred_file = tmp_path / "prediction" / "video006.txt"
    stamp = pred_file.stat().st_mtime_ns
    assert predict_dataset(segmenter, test_set, tmp_path) == first
    assert pred_file.stat().st_mtime_ns == stamp  # skipped, not recomputed
    pred_file.write_text(
        "### Frame level recognition: ###\n" + " ".join(["0"] * test_set.videos[0].num_frames)
    )
    assert predict_dataset(segmenter, test_set, tmp_path) == first  # an overwritten export is redone
    assert pred_file.read_text() != "### Frame level recognition: ###\n" + " ".join(
        ["0"] * test_set.videos[0].num_frames
    )
