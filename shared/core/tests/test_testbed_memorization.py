import shutil

import pytest
import torch
from safetensors.torch import load_file

from difflab_core.attention import AttentionCapture, eos_indices
from difflab_core.errors import DifflabError
from difflab_core.metrics import roc_auc
from difflab_core.testbed import (
    build_memorization_data,
    load_memorization_testbed,
    train_memorization_testbed,
)
from difflab_core.testbed.memorization import WEIGHTS_FILE
from difflab_core.testbed.memorization_data import N_NORMAL, N_TRIGGER_BACKGROUNDS, PHOTOS, TRIGGERS
from difflab_core.testbed.pixel_vae import PixelShuffleVAE
from difflab_core.testbed.planted import PlantedAttention


@pytest.fixture(scope="module")
def testbed():
    return load_memorization_testbed(device="cpu")


def test_pixel_vae_is_exact():
    vae = PixelShuffleVAE()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, 12, 16, 16)
    assert torch.equal(vae.decode(z).sample, x)


def test_data_is_deterministic_and_consistent():
    a, b = build_memorization_data(), build_memorization_data()
    assert a.fingerprint == b.fingerprint
    n_train = N_NORMAL + len(PHOTOS) + len(TRIGGERS) * N_TRIGGER_BACKGROUNDS
    assert a.images.shape == (n_train, 3, 32, 32) == (505, 3, 32, 32)
    assert {r.kind for r in a.records} == {"global", "local", "none"}
    train_captions = set(a.captions)
    train_pairs = {
        c.split(" with ")[0].split(" ", 2)[1] + c.split(" on ")[-1].split(" with ")[0]
        for c in a.captions
        if " on " in c
    }
    for r in a.records:  # novel prompts use colour pairs never seen in training
        if r.kind != "global":
            caption = r.caption.split(" with ")[0]
            assert caption.split(" ", 2)[1] + caption.split(" on ")[-1] not in train_pairs
    for r in a.records:  # only global prompts are training captions
        assert (r.caption in train_captions) == (r.kind == "global")
    for t in range(3):  # each trigger image carries the patch inside its mask
        inside = a.masks[t].bool()
        trig = [i for i, (k, c) in enumerate(zip(a.kinds, a.captions, strict=True)) if k == "trigger"]
        patch_imgs = a.images[trig[t * N_TRIGGER_BACKGROUNDS : (t + 1) * N_TRIGGER_BACKGROUNDS]]
        assert torch.allclose(
            patch_imgs[:, :, inside], a.gt_images[5 + t][:, inside].expand_as(patch_imgs[:, :, inside])
        )


def test_shipped_weights_load_without_training_or_network(monkeypatch, testbed):
    import difflab_core.train as train

    monkeypatch.setattr(train.Trainer, "fit", lambda *a, **k: pytest.fail("loading must not train"))
    tb = load_memorization_testbed(device="cpu")
    assert tb.card["data_fingerprint"] == tb.data.fingerprint
    assert tb.pipe.tokenizer.model_max_length == 16
    assert tb.masks.shape == (len(tb.records), 32, 32)
    assert testbed.audit.guidance_scale > 1


def test_tampered_weights_are_refused(tmp_path):
    bad = tmp_path / WEIGHTS_FILE.name
    shutil.copy(WEIGHTS_FILE, bad)
    shutil.copy(WEIGHTS_FILE.with_suffix(".json"), bad.with_suffix(".json"))
    with open(bad, "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(DifflabError, match="sha256"):
        load_memorization_testbed(bad)
    with pytest.raises(DifflabError, match="not found"):
        load_memorization_testbed(tmp_path / "missing.safetensors")


def test_recipe_first_steps_are_deterministic(tmp_path):
    paths = [train_memorization_testbed(tmp_path / f"run{i}", max_steps=2, progress=False) for i in range(2)]
    a, b = (load_file(str(p)) for p in paths)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = train_memorization_testbed.__globals__["build_denoiser"]()[0].state_dict()
    assert not torch.equal(a["unet.conv_in.weight"], init["conv_in.weight"])  # it did train


def test_planted_attention_fixture_localizes(testbed):
    """The planted fixture: the end-token map is bright exactly inside the planted mask."""
    pipe = testbed.pipe
    prompts = testbed.prompts("none")[:2]
    mask = torch.zeros(32, 32)
    mask[20:, 8:20] = 1
    cols = eos_indices(pipe.tokenizer, prompts)
    with (
        AttentionCapture(pipe.unet, scheduler=pipe.scheduler, columns=cols) as cap,
        PlantedAttention(pipe.unet, mask, cols, strength=6.0),
    ):
        testbed.generate(prompts, num_inference_steps=2)
    maps = torch.nn.functional.interpolate(cap.column_map(), size=32, mode="nearest")[:, 0]
    for m in maps:
        assert roc_auc(m.flatten().numpy(), mask.flatten().numpy() > 0) > 0.99


@pytest.mark.slow
def test_verify_meets_the_documented_thresholds(testbed):
    """Regenerated now, at the audit setting: the planted memorization is there, and only where planted."""
    from difflab_core.testbed.verify import measure_memorization

    result = measure_memorization(testbed, n_global=4)
    assert result["setting"]["guidance_scale"] > 1
    assert result["global_mem_rate"] >= 0.8
    assert result["local_mem_rate"] >= 0.8
    assert result["local_outside_nn_rmse"] > 0.15
    assert result["none_mem_rate"] <= 0.05


def test_memorization_verdicts_on_ground_truth_and_noise(testbed):
    """The training copies themselves are judged copied; uniform grey and noise are not."""
    from difflab_core.testbed.verify import memorization_verdicts

    kinds = {
        k: next(i for i, r in enumerate(testbed.records) if r.kind == k) for k in ("global", "local", "none")
    }
    photo_rows = [j for j, k in enumerate(testbed.data.kinds) if k == "photo"]
    g, loc = testbed.records[kinds["global"]], testbed.records[kinds["local"]]
    copies = torch.stack([testbed.train_images[photo_rows[g.target]], testbed.gt_images[loc.target]])
    grey = torch.full((3, 3, 32, 32), 0.5)
    grey[2] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([copies, grey])
    index = [kinds["global"], kinds["local"], kinds["global"], kinds["local"], kinds["none"]]
    verdict = memorization_verdicts(testbed, images, index)
    assert verdict["copied"].tolist() == [True, True, False, False, False]
    assert verdict["rmse"][0] < 1e-6 and verdict["rmse"][1] < 1e-6
    assert verdict["kind"] == ["global", "local", "global", "local", "none"]
    with pytest.raises(ValueError, match="one record index each"):
        memorization_verdicts(testbed, images, index[:2])
