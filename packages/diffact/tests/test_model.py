"""The network: parameter counts, shapes, masks, boundary targets, official checkpoints, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffact.config import preset
from diffact.convert import SCHEDULE_BUFFERS, convert_state_dict, load_official_checkpoint
from diffact.data import boundary_target
from diffact.errors import DiffActError
from diffact.masks import apply_condition_mask, condition_mask
from diffact.model import DiffActModel


@pytest.mark.parametrize(
    ("name", "count"), [("gtea", 1_204_438), ("50salads", 1_214_566), ("breakfast", 11_912_800)]
)
def test_parameter_counts(name: str, count: int) -> None:
    model = DiffActModel.from_diffact_config(preset(name))
    assert sum(p.numel() for p in model.parameters()) == count


def test_official_module_paths() -> None:
    keys = set(DiffActModel.from_diffact_config(preset("tiny")).state_dict())
    for key in (
        "encoder.conv_in.weight",
        "encoder.conv_out.bias",
        "encoder.encoder.layers.0.conv_block.0.weight",
        "encoder.encoder.layers.5.att_linear_q.weight",
        "encoder.encoder.layers.5.ffn_block.2.bias",
        "decoder.time_in.0.weight",
        "decoder.time_in.1.bias",
        "decoder.conv_in.weight",
        "decoder.conv_out.weight",
        "decoder.module.time_proj.weight",
        "decoder.module.layers.3.att_linear_k.weight",
    ):
        assert key in keys, key


@pytest.mark.parametrize("length", [1, 7, 300])
def test_shapes(length: int) -> None:
    torch.manual_seed(0)
    model = DiffActModel.from_diffact_config(preset("tiny")).eval()
    feats = torch.randn(1, 16, length)
    enc, cond = model.encode(feats)
    assert enc.shape == (1, 5, length) and cond.shape == (1, 96, length)
    logits = model.denoise(cond, torch.tensor([500]), torch.rand(1, 5, length))
    assert logits.shape == (1, 5, length)
    probs = model.sample(feats, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (1, 5, length)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, length))


def test_sampling_is_deterministic_given_a_generator() -> None:
    torch.manual_seed(1)
    model = DiffActModel.from_diffact_config(preset("tiny")).eval()
    feats = torch.randn(1, 16, 40)
    a = model.sample(feats, 5, torch.Generator().manual_seed(3))
    b = model.sample(feats, 5, torch.Generator().manual_seed(3))
    c = model.sample(feats, 5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_save_and_load_pretrained(tmp_path) -> None:
    model = DiffActModel.from_diffact_config(preset("tiny"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiffActModel.from_pretrained(tmp_path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_masks() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    boundary = torch.from_numpy(boundary_target(labels.numpy(), 1.0))
    cond = torch.randn(1, 6, 10)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(apply_condition_mask(cond, "zero", labels, boundary, g), torch.zeros_like(cond))
    assert torch.equal(apply_condition_mask(cond, "full", labels, boundary, g), cond)
    b03 = condition_mask("boundary03-", labels, boundary, g)
    assert torch.equal(b03 == 0, boundary >= 0.3)
    assert torch.equal(condition_mask("boundary05-", labels, boundary, g) == 0, boundary >= 0.5)
    for seed in range(20):
        mask = condition_mask("segment=1", labels, boundary, torch.Generator().manual_seed(seed))
        zeroed = labels[mask == 0].unique()
        assert zeroed.numel() == 1 and torch.equal(mask == 0, labels == zeroed)
        two = condition_mask("segment=2", labels, boundary, torch.Generator().manual_seed(seed))
        assert 1 <= labels[two == 0].unique().numel() <= 2
        assert all(torch.all(two[labels == c] == 0) for c in labels[two == 0].unique())
    masked = apply_condition_mask(cond, "segment=1", labels, boundary, torch.Generator().manual_seed(0))
    assert masked.shape == cond.shape
    with pytest.raises(DiffActError):
        condition_mask("other", labels, boundary, g)


def test_training_masks_leave_features_untouched(data_root, tiny_cfg) -> None:
    from diffact.data import MSTCNDataset
    from diffact.losses import training_losses

    ds = MSTCNDataset(data_root, "synthetic", 1, "train", tiny_cfg)
    item = ds[(0, 0)]
    before = item["features"].clone()
    model = DiffActModel.from_diffact_config(tiny_cfg)
    parts = training_losses(model, item, tiny_cfg)
    assert torch.equal(item["features"], before)
    assert set(parts) == {"ce_enc", "smooth_enc", "ce_dec", "smooth_dec", "boundary_dec", "loss"}
    assert all(torch.isfinite(v) for v in parts.values())
    again = training_losses(model.eval(), item, tiny_cfg)["loss"]
    assert torch.equal(training_losses(model, item, tiny_cfg)["loss"], again)  # same item seed, eval mode


def test_boundary_target() -> None:
    ids = np.array([0] * 20 + [1] * 15 + [2] * 25)
    b = boundary_target(ids, 1.0)
    assert b.max() == pytest.approx(1.0)
    assert set(np.flatnonzero(b == b.max())) <= {19, 20, 34, 35}
    assert b[0] < 0.01 and b.min() >= 0
    assert np.all(boundary_target(np.zeros(30, dtype=int), 1.0) == 0)  # a single segment gives 0
    unsmoothed = boundary_target(ids, 0.0)
    assert np.flatnonzero(unsmoothed).tolist() == [19, 20, 34, 35]


def test_decoder_input_in_unit_interval() -> None:
    from difflab_core.seqdiff import make_ddim_scheduler, noisy_input, to_signal

    sched = make_ddim_scheduler()
    x0 = to_signal(torch.nn.functional.one_hot(torch.randint(5, (50,)), 5).T.float()[None], 0.5)
    for t in (0, 10, 500, 999):
        u = noisy_input(x0, torch.tensor([t]), torch.randn_like(x0), sched, 0.5)
        assert u.min() >= 0 and u.max() <= 1


def test_official_state_dict_loads(tmp_path) -> None:
    cfg = preset("gtea")
    model = DiffActModel.from_diffact_config(cfg)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    state |= {name: torch.rand(1000, dtype=torch.float64) for name in SCHEDULE_BUFFERS}
    path = tmp_path / "release.model"
    torch.save(state, path)
    loaded = load_official_checkpoint(path, cfg)
    assert torch.equal(
        loaded.state_dict()["decoder.module.time_proj.weight"], state["decoder.module.time_proj.weight"]
    )
    del state["encoder.conv_in.weight"]
    with pytest.raises(DiffActError, match="gtea"):
        convert_state_dict(state, cfg)
    with pytest.raises(DiffActError, match="does not exist"):
        load_official_checkpoint(tmp_path / "missing.model", cfg)
