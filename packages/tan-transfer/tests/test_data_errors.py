"""Spec §5 test 12 (§7 bad input), the data tasks and the config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from tan_transfer import (
    TANConfig,
    TanTransferError,
    digits_task,
    load_dpm,
    load_image_folder,
    photo_patch_task,
    save_image_folder,
    train_tan,
)


def test_load_dpm_errors(tmp_path):
    with pytest.raises(TanTransferError, match="not found"):
        load_dpm(tmp_path / "nope")
    with pytest.raises(TanTransferError, match="hub id"):
        load_dpm("google/ddpm-cifar10-32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TanTransferError, match="not a diffusers folder"):
        load_dpm(tmp_path / "empty")
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    with pytest.raises(TanTransferError, match="UNet3DConditionModel"):
        load_dpm(tmp_path / "video")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(
        json.dumps({"_class_name": "X", "transformer": ["a", "B"]})
    )
    with pytest.raises(TanTransferError, match="no unet"):
        load_dpm(tmp_path / "pipe")


def test_image_folder_conversion_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 20, 12, generator=g) * 2 - 1
    save_image_folder(imgs, tmp_path / "rgb", "x")
    gray = load_image_folder(tmp_path / "rgb", 8, 1)
    assert gray.shape == (3, 1, 8, 8) and gray.min() >= -1 and gray.max() <= 1
    assert load_image_folder(tmp_path / "rgb", 10, 3).shape == (3, 3, 10, 10)
    with pytest.raises(TanTransferError, match="20"):
        load_image_folder(tmp_path / "rgb", 8, 3, resize=False)
    # corrupt files are listed, or skipped with --skip-bad
    (tmp_path / "rgb" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TanTransferError, match=r"broken\.png.*--skip-bad"):
        load_image_folder(tmp_path / "rgb", 8, 3)
    with pytest.warns(UserWarning, match="skipped"):
        assert len(load_image_folder(tmp_path / "rgb", 8, 3, skip_bad=True)) == 3
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("hi")
    with pytest.raises(TanTransferError, match="no readable images"):
        load_image_folder(tmp_path / "none", 8, 3)
    with pytest.raises(TanTransferError, match="not found"):
        load_image_folder(tmp_path / "missing", 8, 3)


def test_few_and_duplicate_images_warn(tmp_path):
    x = torch.zeros(1, 1, 8, 8)
    save_image_folder(x, tmp_path / "one", "a")
    with pytest.warns(UserWarning, match="only 1 image"):
        load_image_folder(tmp_path / "one", 8, 1)
    save_image_folder(torch.cat([x, x]), tmp_path / "dup", "a")
    with pytest.warns(UserWarning, match="duplicates"):
        load_image_folder(tmp_path / "dup", 8, 1)


def test_train_tan_rejects_wrong_target_shape(bundle8, tmp_path):
    with pytest.raises(TanTransferError, match="target"):
        train_tan(bundle8, torch.zeros(4, 3, 8, 8), TANConfig(), output_dir=tmp_path)
    with pytest.raises(TanTransferError, match="resume"):
        train_tan(bundle8, torch.zeros(4, 1, 8, 8), TANConfig(), output_dir=tmp_path, resume="maybe")


def test_config_validation_and_json_round_trip(tmp_path):
    cfg = TANConfig(gamma=3.0, adapter="lora", batch_size=20, micro_batch=5)
    assert TANConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert TANConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.grad_accum == 4
    for bad in (
        {"adapter": "dora"},
        {"batch_size": 30, "micro_batch": 7},
        {"ant_dim": 6, "ant_heads": 4},
        {"gamma": -1.0},
        {"s_schedule": "x"},
        {"iterations": 0},
    ):
        with pytest.raises(TanTransferError, match="TANConfig"):
            TANConfig(**bad)
    with pytest.raises(TanTransferError, match="unknown fields"):
        TANConfig.from_json('{"gama": 3}')


def test_defaults_follow_the_paper():
    cfg = TANConfig()
    assert (cfg.ant_dim, cfg.ant_heads, cfg.ant_pool, cfg.ant_dropout) == (8, 2, 4, 0.1)
    assert (cfg.gamma, cfg.ascent_steps, cfg.omega, cfg.iterations, cfg.batch_size) == (
        5.0,
        10,
        0.02,
        300,
        40,
    )
    assert (cfg.betas, cfg.weight_decay, cfg.ema_decay, cfg.s_schedule) == (
        (0.5, 0.999),
        1e-2,
        0.9,
        "one_minus_alphabar",
    )


def test_tasks():
    task = digits_task(shots=10, seed=0)
    assert task.shots.shape == (10, 1, 16, 16) and task.target_class == 9
    assert task.source.min() >= -1 and task.source.max() <= 1
    assert not torch.equal(digits_task(seed=1).shots, task.shots)
    with pytest.raises(TanTransferError, match="target_class"):
        digits_task(target_class=3)
    photos = photo_patch_task(size=16, shots=10)
    assert photos.shots.shape == (10, 1, 16, 16) and len(photos.source) > 100
