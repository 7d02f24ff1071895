import json
import logging
import math
import random
import re

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from difflab_core.data import weighted_sampler
from difflab_core.errors import DifflabError
from difflab_core.train import (
    EMA,
    TrainConfig,
    Trainer,
    find_latest_checkpoint,
    load_weights,
    lr_multiplier,
    save_weights,
    seeded_loader,
)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each test starts from a clean slate."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_dataset(n=48, seed=123):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    y = x @ w + 0.3
    return TensorDataset(x, y)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


class SimulatedCrash(RuntimeError):
    pass


def noisy_loss(crash_at=None):
    """MSE against targets jittered by fresh torch/numpy/python random draws each call."""

    def loss_fn(model, batch, step):
        if step == crash_at:
            raise SimulatedCrash(f"killed at step {step}")
        x, y = batch
        noise = 0.05 * torch.randn_like(y)
        scale = 1.0 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return nn.functional.mse_loss(model(x) * scale, y + noise)

    return loss_fn


def config(**overrides):
    base = dict(max_steps=20, lr=1e-2, progress=False, log_every=1, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_goes_down_and_is_logged(tmp_path):
    cfg = config(max_steps=60, lr=3e-2, log_every=5, lr_schedule="cosine", warmup_steps=5)
    trainer = Trainer(make_model(), noisy_loss(), seeded_loader(make_dataset(), 8, seed=1), cfg, tmp_path)
    result = trainer.fit()
    assert result.step == 60
    assert [s for s, _ in result.loss_history] == list(range(5, 65, 5))
    first, last = result.loss_history[0][1], result.loss_history[-1][1]
    assert last < 0.2 * first
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == result.loss_history
    # The logged lr is the schedule's value for that step.
    for r in records:
        expected = 3e-2 * lr_multiplier(r["step"], max_steps=60, warmup_steps=5, schedule="cosine")
        assert r["lr"] == pytest.approx(expected)
    assert result.model_path == tmp_path / "model.safetensors"
    reloaded = make_model(seed=99)
    load_weights(reloaded, result.model_path)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)
    assert result.checkpoint == tmp_path / "checkpoints" / "step-00000060"
    assert (result.checkpoint / "COMPLETE").is_file()
    assert (result.checkpoint / "model.safetensors").is_file()


def test_grad_accum_matches_manual_sgd(tmp_path):
    """One step with grad_accum=2 equals SGD on the mean of the two micro-batch gradients."""
    ds = make_dataset(n=8)
    model = make_model()
    reference = make_model()
    lr = 0.1
    cfg = config(max_steps=1, grad_accum=2, max_grad_norm=None)

    def loss_fn(model, batch, step):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = seeded_loader(ds, 4, shuffle=False)
    Trainer(model, loss_fn, loader, cfg, tmp_path, optimizer=optimizer).fit()

    x, y = ds.tensors
    grads = [torch.zeros_like(p) for p in reference.parameters()]
    for sl in (slice(0, 4), slice(4, 8)):
        reference.zero_grad()
        nn.functional.mse_loss(reference(x[sl]), y[sl]).backward()
        for g, p in zip(grads, reference.parameters(), strict=True):
            g += p.grad / 2
    with torch.no_grad():
        for g, p in zip(grads, reference.parameters(), strict=True):
            p -= lr * g
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def make_loader(kind, ds):
    if kind == "seeded":
        return seeded_loader(ds, 8, seed=1)
    if kind == "shuffle":  # plain shuffling loader: the trainer's accelerator makes it seedable
        return DataLoader(ds, batch_size=8, shuffle=True)
    sampler = weighted_sampler(torch.linspace(0.1, 1.0, len(ds)), num_samples=40, seed=3)
    return DataLoader(ds, batch_size=8, sampler=sampler)


@pytest.mark.parametrize("loader_kind", ["seeded", "shuffle", "weighted"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, monkeypatch, loader_kind):
    cfg = config(
        max_steps=20,
        checkpoint_every=5,
        grad_accum=2,
        ema_decay=0.9,
        warmup_steps=3,
        lr_schedule="linear",
    )
    # 6 batches per epoch (5 for "weighted"): the step-10 checkpoint (20 batches) lands mid-epoch
    # (at an epoch boundary for "weighted").
    ds = make_dataset(n=48)

    # Run A: uninterrupted.
    model_a = make_model()
    result_a = Trainer(model_a, noisy_loss(), make_loader(loader_kind, ds), cfg, tmp_path / "a").fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    # Run B: killed while computing step 13, after the step-10 checkpoint.
    dir_b = tmp_path / "b"
    crashing = Trainer(make_model(), noisy_loss(crash_at=13), make_loader(loader_kind, ds), cfg, dir_b)
    with pytest.raises(SimulatedCrash):
        crashing.fit()
    assert find_latest_checkpoint(dir_b).name == "step-00000010"
    log_lines = (dir_b / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log_lines[-1])["step"] == 12
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    # A fresh process would rebuild everything, differently initialised, and resume. Libraries
    # that draw from the global RNGs during setup (rich does on first import) must not matter.
    torch.manual_seed(12345)
    np.random.seed(12345)
    model_b = make_model(seed=5)
    resumed = Trainer(model_b, noisy_loss(), make_loader(loader_kind, ds), cfg, dir_b)
    start_log = resumed._start_log

    def start_log_drawing_noise(records):
        random.random(), np.random.rand(), torch.rand(3)
        start_log(records)

    monkeypatch.setattr(resumed, "_start_log", start_log_drawing_noise)
    result_b = resumed.fit(resume=True)

    assert result_b.resumed_from == dir_b / "checkpoints" / "step-00000010"
    assert result_b.step == result_a.step == 20
    for k, v in model_a.state_dict().items():
        assert torch.equal(model_b.state_dict()[k], v), k
    ema_a, ema_b = load_file(result_a.ema_path), load_file(result_b.ema_path)
    assert ema_a.keys() == ema_b.keys()
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    assert not torch.equal(ema_a["0.weight"], model_a.state_dict()["0.weight"])
    # Same noise and data order → identical per-step losses, and the log has no duplicate steps.
    assert result_b.loss_history == result_a.loss_history
    assert [s for s, _ in result_b.loss_history] == list(range(1, 21))
    assert result_b.last_loss == result_a.last_loss
    # keep_checkpoints=2 keeps the newest two.
    assert sorted(p.name for p in (dir_b / "checkpoints").iterdir()) == ["step-00000015", "step-00000020"]
    # Trainer state is JSON + safetensors: no pickled custom objects in a checkpoint.
    newest = dir_b / "checkpoints" / "step-00000020"
    assert not list(newest.glob("custom_checkpoint_*"))
    assert (newest / "trainer_state.json").is_file() and (newest / "ema.safetensors").is_file()


def test_incomplete_checkpoint_is_ignored(tmp_path):
    ds = make_dataset()
    cfg = config(max_steps=10, checkpoint_every=5)
    Trainer(make_model(), noisy_loss(), seeded_loader(ds, 8), cfg, tmp_path).fit()
    broken = tmp_path / "checkpoints" / "step-00000015"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"truncated")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000010"
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    result = Trainer(
        make_model(), noisy_loss(), seeded_loader(ds, 8), config(max_steps=20, checkpoint_every=5), tmp_path
    ).fit()
    assert result.resumed_from == tmp_path / "checkpoints" / "step-00000010"
    assert result.step == 20
    # The broken directory was replaced by a real checkpoint when the run got there.
    assert (broken / "COMPLETE").is_file()
    assert load_file(broken / "model.safetensors").keys() == make_model().state_dict().keys()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000020"


def test_fresh_start_refuses_existing_checkpoints(tmp_path):
    ds = make_dataset()
    Trainer(make_model(), noisy_loss(), seeded_loader(ds, 8), config(max_steps=2), tmp_path).fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    trainer = Trainer(make_model(), noisy_loss(), seeded_loader(ds, 8), config(max_steps=2), tmp_path)
    with pytest.raises(DifflabError, match="resume=True"):
        trainer.fit(resume=False)


def test_finished_run_resumes_to_nothing(tmp_path):
    ds = make_dataset()
    first = Trainer(make_model(), noisy_loss(), seeded_loader(ds, 8), config(max_steps=3), tmp_path).fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    model = make_model(seed=3)
    second = Trainer(model, noisy_loss(), seeded_loader(ds, 8), config(max_steps=3), tmp_path).fit()
    assert second.step == 3 and second.checkpoint == first.checkpoint
    assert second.loss_history == first.loss_history
    saved = load_file(first.model_path)
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v)


def test_lr_multiplier_values():
    kw = dict(max_steps=10, warmup_steps=2)
    assert [lr_multiplier(s, **kw) for s in (1, 2, 3, 10)] == [0.5, 1.0, 1.0, 1.0]
    # After warm-up t = (step - 3) / 8.
    assert lr_multiplier(3, schedule="cosine", **kw) == 1.0
    assert lr_multiplier(7, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(7, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_multiplier(10, schedule="linear", **kw) == pytest.approx(1 / 8)


def test_ema_update_formula_and_state():
    model = nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.named_parameters()}
    ema = EMA(model, decay=0.8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    ema.update(model)
    for name, p in model.named_parameters():
        # s1 = .8 s0 + .2 p ; s2 = .8 s1 + .2 p  =>  s2 = .64 s0 + .36 p
        torch.testing.assert_close(ema.shadow[name], 0.64 * start[name] + 0.36 * p.detach())

    restored = EMA(nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.8 and restored.num_updates == 2
    for name in ema.shadow:
        assert torch.equal(restored.shadow[name], ema.shadow[name])

    live = model.weight.detach().clone()
    with ema.average_weights(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, live)
    ema.copy_to(model)
    assert torch.equal(model.bias, ema.shadow["bias"])

    warm = EMA(model, decay=0.99, warmup=True)
    assert warm.current_decay() == pytest.approx(1 / 10)
    warm.update(model)
    assert warm.current_decay() == pytest.approx(2 / 11)


def test_save_load_weights_roundtrip_with_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    src, dst = Tied(), Tied()
    path = save_weights(src, tmp_path / "sub" / "tied.safetensors")
    load_weights(dst, path)
    assert torch.equal(dst.embed.weight, src.embed.weight)
    assert dst.head.weight is dst.embed.weight


def test_load_weights_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(DifflabError, match=re.escape(str(missing))):
        load_weights(nn.Linear(2, 2), missing)

    path = save_weights(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), tmp_path / "two.safetensors")
    with pytest.raises(DifflabError) as err:
        load_weights(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), path)
    message = str(err.value)
    assert str(path) in message
    assert "2.weight" in message  # missing
    assert "1.weight" in message  # unexpected

    with pytest.raises(DifflabError, match="shape"):
        load_weights(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2)), path)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(DifflabError, match=re.escape(str(garbage))):
        load_weights(nn.Linear(2, 2), garbage)


def test_seeded_loader_order_depends_on_seed_and_epoch():
    ds = TensorDataset(torch.arange(10))
    loader = seeded_loader(ds, 5, seed=4)
    order = lambda: torch.cat([b[0] for b in loader]).tolist()  # noqa: E731
    e0, e1 = order(), order()
    assert sorted(e0) == list(range(10)) and e0 != e1
    loader.sampler.set_epoch(1)
    assert order() == e1
    again = seeded_loader(ds, 5, seed=4)
    assert torch.cat([b[0] for b in again]).tolist() == e0
    state = torch.get_rng_state()
    list(seeded_loader(ds, 5, seed=4))
    assert torch.equal(state, torch.get_rng_state())  # iterating never touches the global RNG


def test_config_validation():
    with pytest.raises(DifflabError, match="lr_schedule"):
        TrainConfig(max_steps=10, lr_schedule="step")
    with pytest.raises(DifflabError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(DifflabError, match="ema_decay"):
        TrainConfig(max_steps=1, ema_decay=1.5)
    with pytest.raises(DifflabError, match="mixed_precision"):
        TrainConfig(max_steps=1, mixed_precision="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_fp16_without_cuda_falls_back_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="difflab_core.train"):
        trainer = Trainer(
            make_model(),
            noisy_loss(),
            seeded_loader(make_dataset(), 8),
            config(mixed_precision="fp16"),
            tmp_path,
        )
    assert trainer.accelerator.mixed_precision == "no"
    assert "fp16" in caplog.text


def test_loss_fn_must_return_scalar(tmp_path):
    def bad_loss(model, batch, step):
        x, y = batch
        return (model(x) - y) ** 2

    trainer = Trainer(make_model(), bad_loss, seeded_loader(make_dataset(), 8), config(max_steps=1), tmp_path)
    with pytest.raises(DifflabError, match="scalar"):
        trainer.fit()
