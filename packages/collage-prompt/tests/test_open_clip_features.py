"""OpenClipFeatures: a tiny open_clip ViT built offline from a config dict/JSON, weights from a local file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from collage_prompt.errors import CollagePromptError
from collage_prompt.features import FeatureExtractor, OpenClipFeatures

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny CLIP (built directly with open_clip) and its weights on disk."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY).eval()
    root = tmp_path_factory.mktemp("clip")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "tiny.safetensors"))
    torch.save(model.state_dict(), root / "tiny.pt")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return model, root


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_features_equal_the_in_memory_model(tiny_clip):
    import open_clip

    model, root = tiny_clip
    images = _images(5)
    transform = open_clip.image_transform(
        32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    with torch.no_grad():
        ref = model.encode_image(torch.stack([transform(im) for im in images]))
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    for arch, ckpt in [(TINY, "tiny.safetensors"), (root / "tiny.json", "tiny.pt")]:
        feats = OpenClipFeatures(arch, root / ckpt, device="cpu", batch_size=2)
        assert isinstance(feats, FeatureExtractor)
        out = feats(images)
        assert out.shape == (5, 16) and out.dtype == np.float32 and feats([]).shape == (0, 16)
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_bad_checkpoints_and_architectures(tiny_clip, tmp_path):
    _, root = tiny_clip
    with pytest.raises(CollagePromptError, match=r"missing\.safetensors: checkpoint file not found"):
        OpenClipFeatures(TINY, tmp_path / "missing.safetensors", device="cpu")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CollagePromptError, match=r"corrupt\.safetensors: unreadable checkpoint"):
        OpenClipFeatures(TINY, tmp_path / "corrupt.safetensors", device="cpu")
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip")
    with pytest.raises(CollagePromptError, match=r"corrupt\.pt: unreadable checkpoint"):
        OpenClipFeatures(TINY, tmp_path / "corrupt.pt", device="cpu")
    wider = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 64, "head_width": 32}}
    with pytest.raises(CollagePromptError, match="do not fit the architecture"):
        OpenClipFeatures(wider, root / "tiny.safetensors", device="cpu")
    deeper = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": 3}}
    with pytest.raises(
        CollagePromptError, match=r"image tower \(missing \['visual\.transformer\.resblocks\.2"
    ):
        OpenClipFeatures(deeper, root / "tiny.safetensors", device="cpu")
    with pytest.raises(CollagePromptError, match="unknown open_clip architecture 'ViT-Nope'"):
        OpenClipFeatures("ViT-Nope", root / "tiny.safetensors", device="cpu")
    with pytest.raises(CollagePromptError, match="unknown open_clip architecture"):
        OpenClipFeatures("hf-hub:org/model", root / "tiny.safetensors", device="cpu")
    with pytest.raises(CollagePromptError, match="needs embed_dim"):
        OpenClipFeatures({"vision_cfg": {}}, root / "tiny.safetensors", device="cpu")


@pytest.mark.gpu
def test_cuda_features_match_cpu(tiny_clip):
    _, root = tiny_clip
    images = _images(3)
    cpu = OpenClipFeatures(TINY, root / "tiny.safetensors", device="cpu")(images)
    gpu = OpenClipFeatures(TINY, root / "tiny.safetensors", device="auto")
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu(images), cpu, atol=1e-3)
