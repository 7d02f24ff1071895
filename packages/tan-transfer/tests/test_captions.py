"""Per-image captions: `load_captioned_folder` and text-conditional training on one text per shot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tan_transfer import TanTransferError, load_captioned_folder, load_dpm, train_tan


def _folder(path, n=3, size=32, captions=None):
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"im{i}.png")
    if captions is not None:
        lines = [json.dumps({"file": f, "text": t}) for f, t in captions.items()]
        (path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_captions_follow_files_and_default_fills_gaps(tmp_path):
    folder = _folder(tmp_path / "t", captions={"im2.png": "a cat", "im0.png": "a dog"})
    images, texts = load_captioned_folder(folder, 32, 3, default="a photo")
    assert images.shape == (3, 3, 32, 32)
    assert texts == ["a dog", "a photo", "a cat"]  # sorted file order, like load_image_folder


def test_caption_for_a_missing_file_is_named(tmp_path):
    folder = _folder(tmp_path / "t", captions={"im0.png": "a dog", "imm1.png": "typo"})
    with pytest.raises(TanTransferError, match=r"captions\.jsonl.*imm1\.png"):
        load_captioned_folder(folder, 32, 3)


@pytest.fixture(scope="module")
def sd_bundle(sd_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "pipe"
    sd_pipe.save_pretrained(path)
    return load_dpm(path, device="cpu")


@pytest.fixture
def cfg(small_cfg):
    def make(**kw):
        return small_cfg(**({"similarity_guidance": False, "prompt": "a photo"} | kw))

    return make


def _train(bundle, target, out, cfg, captions=None):
    result = train_tan(bundle, target, cfg, output_dir=out, captions=captions, resume="never")
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_conditional_training_uses_one_text_per_shot(sd_bundle, cfg, tmp_path):
    images = load_captioned_folder(_folder(tmp_path / "plain"), 32, 3)[0]
    prompt_only = _train(sd_bundle, images, tmp_path / "r0", cfg())
    # captions equal to the prompt are the prompt-only run, bit for bit (same data and noise draws)
    assert _same(prompt_only, _train(sd_bundle, images, tmp_path / "r1", cfg(), ["a photo"] * 3))
    captioned = _train(sd_bundle, images, tmp_path / "r2", cfg(), ["a dog", "a photo", "a cat"])
    assert not _same(prompt_only, captioned)
    # a folder's captions.jsonl gives the same run as passing the same texts
    folder = _folder(tmp_path / "cap", captions={"im0.png": "a dog", "im2.png": "a cat"})
    assert _same(captioned, _train(sd_bundle, folder, tmp_path / "r3", cfg()))
    # the run's config records the captions: other captions in the same folder refuse to resume
    with pytest.raises(TanTransferError, match="config"):
        train_tan(sd_bundle, images, cfg(), output_dir=tmp_path / "r2", captions=["a", "b", "c"])


def test_captions_with_similarity_guidance(sd_bundle, cfg, tmp_path):
    from difflab_core.tiny import seeded
    from tan_transfer import SmallNoisyClassifier

    with seeded(1):
        clf = SmallNoisyClassifier(4, 16, width=8).eval().requires_grad_(False)
    images = load_captioned_folder(_folder(tmp_path / "plain"), 32, 3)[0]
    guided = cfg(similarity_guidance=True, gamma=1.0)
    result = train_tan(
        sd_bundle,
        images,
        guided,
        classifier=clf,
        output_dir=tmp_path / "sg",
        captions=["a dog", "a photo", "a cat"],
    )
    assert result.steps == guided.iterations and np.isfinite(result.last_loss)


def test_bad_captions(sd_bundle, bundle8, shots8, cfg, tmp_path):
    images = load_captioned_folder(_folder(tmp_path / "plain"), 32, 3)[0]
    with pytest.raises(TanTransferError, match="2 captions for 3"):
        train_tan(sd_bundle, images, cfg(), output_dir=tmp_path / "a", captions=["x", "y"])
    with pytest.raises(TanTransferError, match="unconditional"):
        train_tan(bundle8, shots8, cfg(), output_dir=tmp_path / "b", captions=["x"] * len(shots8))
