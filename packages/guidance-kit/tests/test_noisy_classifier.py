import json
import math

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from difflab_core.tiny import TinyNoisyClassifier
from guidance_kit import GuidanceKitError, load_noisy_classifier, train_noisy_classifier


def _two_classes(n=64):
    """Class 0: dark images, class 1: bright ones ([N,1,8,8] in [−1, 1])."""
    labels = torch.arange(n) % 2
    images = (labels.float() * 1.6 - 0.8)[:, None, None, None].expand(n, 1, 8, 8).clone()
    return images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)), labels


def test_tiny_classifier_learns_and_writes_its_files(tmp_path):
    images, labels = _two_classes()
    sched = DDPMScheduler(num_train_timesteps=1000)
    model = train_noisy_classifier(
        images, labels, sched, arch="tiny", out_dir=tmp_path, steps=60, batch_size=32
    )
    config = json.loads((tmp_path / "classifier_config.json").read_text())
    assert config["arch"] == "tiny" and config["num_classes"] == 2 and config["steps"] == 60
    assert config["final_loss"] < math.log(2)  # below chance
    reloaded = TinyNoisyClassifier(1, 2, 8)
    reloaded.load_state_dict(load_file(tmp_path / "classifier.safetensors"))
    t = torch.full((len(images),), 50)
    with torch.no_grad():
        assert torch.equal(reloaded(images, t), model(images, t))
        assert float((model(images, t).argmax(1) == labels).float().mean()) > 0.9


def test_encoder_classifier_trains_only_its_head(tmp_path):
    from difflab_core.tiny import tiny_unet_2d

    images, labels = _two_classes(32)
    unet = tiny_unet_2d(8, 1, seed=0)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    train_noisy_classifier(
        images, labels, DDPMScheduler(), arch="encoder", unet=unet, out_dir=tmp_path, steps=5, batch_size=16
    )
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert set(load_file(tmp_path / "classifier.safetensors")) == {"head.weight", "head.bias"}
    with pytest.raises(GuidanceKitError, match="needs unet"):
        load_noisy_classifier(tmp_path)
    x, t = images[:4], torch.full((4,), 300)
    trained = torch.nn.Linear(unet.config.block_out_channels[-1], 2)
    trained.load_state_dict(
        {k.removeprefix("head."): v for k, v in load_file(tmp_path / "classifier.safetensors").items()}
    )
    with torch.no_grad():
        expected = trained(load_noisy_classifier(tmp_path, unet=unet).features(x, t))
        assert torch.equal(load_noisy_classifier(tmp_path, unet=unet)(x, t), expected)


def test_load_noisy_classifier_round_trip_and_bad_files(tmp_path):
    images, labels = _two_classes(32)
    model = train_noisy_classifier(images, labels, DDPMScheduler(), out_dir=tmp_path, steps=3, batch_size=16)
    t = torch.full((len(images),), 10)
    with torch.no_grad():
        assert torch.equal(load_noisy_classifier(tmp_path)(images, t), model(images, t))
    with pytest.raises(GuidanceKitError, match="not found"):
        load_noisy_classifier(tmp_path / "nowhere")
    (tmp_path / "classifier.safetensors").write_bytes(b"garbage")
    with pytest.raises(GuidanceKitError, match="unreadable"):
        load_noisy_classifier(tmp_path)
    (tmp_path / "classifier_config.json").write_text("{")
    with pytest.raises(GuidanceKitError, match="not a classifier config"):
        load_noisy_classifier(tmp_path)


def test_bad_trainer_inputs(tmp_path):
    images, labels = _two_classes(8)
    with pytest.raises(GuidanceKitError, match="arch"):
        train_noisy_classifier(images, labels, DDPMScheduler(), arch="resnet", out_dir=tmp_path)
    with pytest.raises(GuidanceKitError, match="labels"):
        train_noisy_classifier(images, labels[:3], DDPMScheduler(), out_dir=tmp_path)
    with pytest.raises(GuidanceKitError, match="unet"):
        train_noisy_classifier(images, labels, DDPMScheduler(), arch="encoder", out_dir=tmp_path)
