"""Spec §5 tests 2 and 9: freezing during training, and exact resume after a kill."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

import tan_transfer.train as train_module
from tan_transfer import TanTransferError, train_tan


def _sha(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_freezing_base_hash_unchanged(bundle8, shots8, clf8, small_cfg, tmp_path):
    before = _sha(bundle8.unet.state_dict())
    res = train_tan(bundle8, shots8, small_cfg(), classifier=clf8, output_dir=tmp_path)
    assert res.steps == 3 and torch.isfinite(torch.tensor(res.last_loss))
    assert _sha(res.model.unet.state_dict()) == before  # hooks: base keys and values unchanged
    assert _sha(bundle8.unet.state_dict()) == before
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("adapters.") for n in trainable)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            res.model.adapters.state_dict().values(),
            _fresh_adapters(bundle8, small_cfg()).values(),
            strict=True,
        )
    ]
    assert any(moved)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["tan_config"]["iterations"] == 3


def _fresh_adapters(bundle, cfg):
    return train_module.build_model(bundle.unet, cfg).adapters.state_dict()


def test_full_and_lora_variants_train(bundle8, shots8, clf8, small_cfg, tmp_path):
    for kind in ("full", "lora"):
        res = train_tan(
            bundle8,
            shots8,
            small_cfg(adapter=kind, iterations=2),
            classifier=clf8,
            output_dir=tmp_path / kind,
        )
        assert res.trainable_fraction == (1.0 if kind == "full" else pytest.approx(res.trainable_fraction))
        assert 0 < res.trainable_fraction <= 1.0


class _Kill(RuntimeError):
    pass


def test_resume_after_kill_is_bitwise_identical(bundle8, shots8, clf8, small_cfg, tmp_path, monkeypatch):
    cfg = small_cfg(iterations=6, checkpoint_every=3, monitor_every=2, monitor_samples=4, monitor_steps=2)
    straight = train_tan(bundle8, shots8, cfg, classifier=clf8, output_dir=tmp_path / "a")

    calls = {"n": 0}
    real_loss = train_module.tan_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3 * cfg.grad_accum:  # die inside iteration 4, after the step-3 checkpoint
            raise _Kill("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "tan_loss", dying_loss)
    with pytest.raises(_Kill):
        train_tan(bundle8, shots8, cfg, classifier=clf8, output_dir=tmp_path / "b")
    monkeypatch.setattr(train_module, "tan_loss", real_loss)
    resumed = train_tan(bundle8, shots8, cfg, classifier=clf8, output_dir=tmp_path / "b")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-00000003"
    a, b = straight.model.adapter_state_dict(), resumed.model.adapter_state_dict()  # EMA weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.last_loss == resumed.last_loss
    # the monitor log survives the kill: records up to the checkpoint are kept, later ones recomputed identically
    log_a, log_b = ((tmp_path / d / "metrics.jsonl").read_text() for d in "ab")
    assert [json.loads(x)["step"] for x in log_a.splitlines()] == [2, 4, 6] and log_a == log_b
    # and the raw (non-EMA) weights of the last checkpoint agree too
    from safetensors.torch import load_file

    ca = load_file(str(tmp_path / "a/checkpoints/step-00000006/model.safetensors"))
    cb = load_file(str(tmp_path / "b/checkpoints/step-00000006/model.safetensors"))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_changed_config_raises_unless_override(bundle8, shots8, clf8, small_cfg, tmp_path):
    train_tan(bundle8, shots8, small_cfg(iterations=1), classifier=clf8, output_dir=tmp_path)
    with pytest.raises(TanTransferError, match="override"):
        train_tan(bundle8, shots8, small_cfg(iterations=2, gamma=3.0), classifier=clf8, output_dir=tmp_path)
    res = train_tan(
        bundle8,
        shots8,
        small_cfg(iterations=2, gamma=3.0),
        classifier=clf8,
        output_dir=tmp_path,
        override_config=True,
    )
    assert res.steps == 2 and res.resumed_from is not None


def test_classifier_trained_when_missing_and_source_sampled(bundle8, shots8, small_cfg, tmp_path):
    cfg = small_cfg(iterations=1, source_from_model=4)
    res = train_tan(copy.copy(bundle8), shots8, cfg, output_dir=tmp_path)
    assert res.classifier_report["n_target"] == len(shots8)
    assert (tmp_path / "classifier" / "classifier.safetensors").is_file()


def test_overfitting_monitor_logs_and_keeps_best(bundle8, shots8, clf8, small_cfg, tmp_path):
    from tan_transfer import load_adapters, sample
    from tan_transfer.monitor import MONITOR_SEED_OFFSET, monitor_score

    cfg = small_cfg(iterations=5, monitor_every=2, monitor_samples=6, monitor_steps=3)
    res = train_tan(bundle8, shots8, cfg, classifier=clf8, output_dir=tmp_path / "on")
    lines = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 5]  # every 2 iterations, plus the last one
    assert lines == [vars(r) for r in res.monitor]
    best = max(lines, key=lambda r: r["score"])  # max() keeps the first of equal scores, like the monitor
    assert lines[-1]["best_step"] == best["step"]
    assert all(0 <= r["copy_rate"] <= 1 and 0 <= r["target_prob"] <= 1 for r in lines)
    # the kept adapters reproduce the logged score when re-sampled independently of the training run
    model = load_adapters(bundle8.unet, res.best_adapter_dir, copy_unet=True).eval()
    images = sample(model, bundle8, 6, steps=3, eta=1.0, seed=cfg.seed + MONITOR_SEED_OFFSET, batch_size=6)
    copy, prob, score = monitor_score(images, shots8, clf8, bundle8)
    assert (copy, prob, score) == pytest.approx(
        (best["copy_rate"], best["target_prob"], best["score"]), abs=1e-6
    )
    # monitoring never changes training: the same run without it ends with identical weights
    off = train_tan(
        bundle8,
        shots8,
        small_cfg(iterations=5, monitor_every=0),
        classifier=clf8,
        output_dir=tmp_path / "off",
    )
    a, b = res.model.adapter_state_dict(), off.model.adapter_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert off.monitor == [] and not (tmp_path / "off" / "adapter_best").exists()


def test_guidance_reference_dim_rescales_gamma(bundle8, shots8, clf8, small_cfg, tmp_path):
    from tan_transfer import TANConfig
    from tan_transfer.train import effective_gamma

    d = shots8[0].numel()  # 1×8×8 = 64
    assert effective_gamma(TANConfig(gamma=5.0), d) == 5.0  # default: the paper's γ, untouched
    assert effective_gamma(TANConfig(gamma=5.0, guidance_reference_dim=4 * d), d) == pytest.approx(2.5)
    with pytest.raises(TanTransferError, match="guidance_reference_dim"):
        TANConfig(guidance_reference_dim=0)
    # γ = 6 at D_ref = 4·D trains exactly like γ = 3 without rescaling (√(1/4) = 1/2)
    kw = dict(iterations=2, monitor_every=0, ascent_steps=0)
    scaled = train_tan(
        bundle8,
        shots8,
        small_cfg(gamma=6.0, guidance_reference_dim=4 * d, **kw),
        classifier=clf8,
        output_dir=tmp_path / "a",
    )
    plain = train_tan(bundle8, shots8, small_cfg(gamma=3.0, **kw), classifier=clf8, output_dir=tmp_path / "b")
    other = train_tan(bundle8, shots8, small_cfg(gamma=6.0, **kw), classifier=clf8, output_dir=tmp_path / "c")
    a, b, c = (r.model.adapter_state_dict() for r in (scaled, plain, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
