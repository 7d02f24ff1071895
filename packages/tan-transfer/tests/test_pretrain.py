"""`pretrain_source`: the photo task's source DDPM — written as a diffusers folder, reloaded, resumed exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import tan_transfer.pretrain as pretrain_module
from tan_transfer import TanTransferError, load_dpm, pretrain_source

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
}
RUN = dict(steps=30, batch_size=8, checkpoint_every=10, unet_config=TINY_UNET)


@pytest.fixture(scope="module")
def images():
    return torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def straight(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "straight"
    return out, pretrain_source(images, out_dir=out, **RUN)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_writes_a_diffusers_folder_that_reloads_equal(straight, images, monkeypatch):
    out, bundle = straight
    for name in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        assert (out / "pipeline" / name).is_file()
    card = json.loads((out / "pretrain.json").read_text())
    assert card["steps"] == 30 and card["weights"] == "ema"
    assert bundle.noise_scheduler.config.beta_schedule == "squaredcos_cap_v2"  # core's digits DDPM schedule
    # the folder holds the Trainer's EMA weights (written independently by difflab_core.train)
    ema = load_file(str(out / "model_ema.safetensors"))
    assert _equal(bundle.unet.state_dict(), ema)
    init = pretrain_module._build_unet(dict(TINY_UNET), 0).state_dict()
    assert not _equal(bundle.unet.state_dict(), init)  # it trained
    assert _equal(load_dpm(out / "pipeline").unet.state_dict(), ema)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished out_dir must only be loaded")

    monkeypatch.setattr(pretrain_module.Trainer, "fit", no_training)
    again = pretrain_source(images, out_dir=out, **RUN)
    assert _equal(again.unet.state_dict(), bundle.unet.state_dict())


class _Stop(RuntimeError):
    pass


def test_resume_after_a_stop_equals_an_uninterrupted_run(straight, images, tmp_path, monkeypatch):
    out_a, bundle_a = straight
    real, calls = pretrain_module.denoising_loss, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 15:  # inside step 16, after the step-10 checkpoint
            raise _Stop("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "denoising_loss", dying)
    with pytest.raises(_Stop):
        pretrain_source(images, out_dir=tmp_path, **RUN)
    assert not (tmp_path / "pretrain.json").exists()
    monkeypatch.setattr(pretrain_module, "denoising_loss", real)
    bundle_b = pretrain_source(images, out_dir=tmp_path, **RUN)
    assert _equal(bundle_a.unet.state_dict(), bundle_b.unet.state_dict())  # EMA weights, bitwise
    raw_a, raw_b = (load_file(str(d / "model.safetensors")) for d in (out_a, tmp_path))
    assert _equal(raw_a, raw_b)
    card_a, card_b = (json.loads((d / "pretrain.json").read_text()) for d in (out_a, tmp_path))
    assert card_a["loss_history"] == card_b["loss_history"]


def test_bad_inputs_raise_clear_errors(straight, images, tmp_path):
    out, _ = straight
    cases = [
        (images[0], "images"),
        (images * 255, "[-1, 1]"),
        (images[:, :, :, :6], "square"),
        (images[:4], "fewer than batch_size"),
    ]
    for bad, words in cases:
        with pytest.raises(TanTransferError, match=words.replace("[", r"\[").replace("]", r"\]")):
            pretrain_source(bad, out_dir=tmp_path / "x", **RUN)
    with pytest.raises(TanTransferError, match="unet_config"):
        pretrain_source(
            images, out_dir=tmp_path / "x", **(RUN | {"unet_config": TINY_UNET | {"sample_size": 16}})
        )
    with pytest.raises(TanTransferError, match="steps"):
        pretrain_source(images, out_dir=tmp_path / "x", **(RUN | {"steps": 0}))
    with pytest.raises(TanTransferError, match="other settings"):  # a finished folder, other settings
        pretrain_source(images, out_dir=out, **(RUN | {"steps": 31}))
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    weights = copy / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(TanTransferError, match="changed"):
        pretrain_source(images, out_dir=copy, **RUN)
