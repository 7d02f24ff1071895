"""The digits testbeds: shipped weights load offline and match their cards, recipes are deterministic,
corrupted files are refused, the memorized model copies its planted digits, the proxy classifier works."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from difflab_core.errors import DifflabError
from difflab_core.testbed import digits as tb

SHIPPED = ["digits-classifier", "digits", "digits-subset", "digits-memorized", "digits-noisy-classifier"]


@pytest.fixture(scope="module")
def proxy():
    return tb.digits_classifier()


@pytest.fixture(scope="module")
def memorized():
    return tb.digits_ddpm_memorized()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_their_card_and_recipe(name):
    recipe = tb.RECIPES[name]
    path = tb.WEIGHTS_DIR / f"{recipe.file}.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["weights_sha256"] == tb.file_sha256(path)
    assert card["name"] == name
    assert tb._recipe_from_card(card, path) == recipe, "shipped weights were made by another recipe"
    assert path.stat().st_size < 4 * 2**20


def test_loaders_need_no_training(monkeypatch):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from difflab_core import train

    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to train")

    monkeypatch.setattr(train.Trainer, "fit", refuse)
    full = tb.digits_ddpm()
    assert isinstance(full.unet, UNet2DModel) and isinstance(full.scheduler, DDPMScheduler)
    assert full.unet.config.num_class_embeds is None and full.unet.config.sample_size == 16
    assert (
        full.scheduler.config.prediction_type == "epsilon"
        and full.scheduler.config.num_train_timesteps == 1000
    )
    assert full.classes == tuple(range(10)) and full.train_images.shape == (1797, 1, 16, 16)
    pipe = full.pipeline()
    assert isinstance(pipe, DDPMPipeline)
    assert pipe(batch_size=2, num_inference_steps=2, output_type="np").images.shape == (2, 16, 16, 1)
    subset = tb.digits_ddpm(classes=[4, 3, 2, 1, 0])
    assert subset.classes == tb.SHIPPED_SUBSET and set(subset.train_labels.tolist()) == set(tb.SHIPPED_SUBSET)
    mem = tb.digits_ddpm_memorized()
    assert mem.unet.config.num_class_embeds == 11 and mem.null_class == 10
    assert mem.planted.shape == (4, 1, 16, 16) and mem.planted_labels.tolist() == [2, 3, 5, 8]
    assert torch.equal(mem.train_images[mem.planted_index], mem.planted)
    assert mem.noisy_classifier(torch.zeros(2, 1, 16, 16), torch.tensor([10, 900])).shape == (2, 10)


def test_unshipped_subset_says_how_to_train_it():
    with pytest.raises(DifflabError, match=r"train digits --classes 0,1,2"):
        tb.digits_ddpm(classes=[2, 1, 0])


def test_corrupted_weights_are_refused(tmp_path):
    src = tb.WEIGHTS_DIR / "digits_classifier.safetensors"
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    tb.digits_classifier(weights=tmp_path)  # an intact copy loads
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(DifflabError, match="sha256") as err:
        tb.digits_classifier(weights=dst)
    assert str(dst) in str(err.value)
    dst.with_suffix(".json").unlink()
    with pytest.raises(DifflabError, match="card"):
        tb.digits_classifier(weights=dst)


def test_recipe_first_steps_are_deterministic(tmp_path):
    runs = []
    for run in ("a", "b"):
        path = tb.train_digits(
            "digits-memorized", tmp_path / run, max_steps=3, progress=False, checkpoint_every=0
        )
        runs.append(load_file(str(path)))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    card = json.loads((tmp_path / "a" / "digits_ddpm_memorized.json").read_text())
    shipped = json.loads((tb.WEIGHTS_DIR / "digits_ddpm_memorized.json").read_text())
    assert card["steps"] == 3 and card["planted_index"] == shipped["planted_index"]
    assert card["data_fingerprint"] == shipped["data_fingerprint"]


def test_recipe_resumes_exactly(tmp_path):
    straight = tb.train_digits("digits-noisy-classifier", tmp_path / "a", max_steps=4, progress=False)
    resumed_dir = tmp_path / "b"
    tb.train_digits("digits-noisy-classifier", resumed_dir, max_steps=4, progress=False, checkpoint_every=2)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-00000004")  # as if killed after step 2
    resumed = tb.train_digits("digits-noisy-classifier", resumed_dir, max_steps=4, progress=False)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_trained_subset_loads_from_its_directory(tmp_path):
    tb.train_digits("digits", tmp_path, classes=[2, 0, 1], max_steps=2, progress=False, checkpoint_every=0)
    model = tb.digits_ddpm(classes=(0, 1, 2), weights=tmp_path)
    assert model.classes == (0, 1, 2) and model.card["steps"] == 2
    assert model.sample(2, num_inference_steps=2).shape == (2, 1, 16, 16)


def test_memorized_model_copies_a_planted_digit(memorized):
    k = 0  # planted digit 2
    label = int(memorized.planted_labels[k])
    images = memorized.generate(label, n=8, guidance_scale=3.0, num_inference_steps=20, seed=0)
    rmse, index = memorized.nearest(images, "planted")
    copies = (rmse < 0.1) & (index == k)
    assert int(copies.sum()) >= 2, rmse
    assert torch.equal(memorized.is_memorized(images, 0.1), rmse < 0.1)
    assert not memorized.is_memorized(memorized.train_images[:50]).all()


def test_clean_classifier_is_accurate_on_held_out_digits(proxy):
    images, labels = tb.real_digits()
    _, test_idx = tb.digits_split(0)
    assert proxy.accuracy(images[test_idx], labels[test_idx]) > 0.9
    assert proxy.features(images[:5]).shape == (5, 128)
    real_fd = proxy.frechet(images[test_idx])
    noise_fd = proxy.frechet(torch.rand(len(test_idx), 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert real_fd < noise_fd / 10
    with pytest.raises(DifflabError, match=r"\[0, 1\]"):
        proxy.features(images[:4] * 2 - 1)
