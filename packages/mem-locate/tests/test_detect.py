import json
import math

import numpy as np
import pytest
import torch

from mem_locate.data import PromptRecord
from mem_locate.detect import (
    AuditConfig,
    Auditor,
    PromptScores,
    aggregate,
    entropy,
    masked_magnitude,
    ren_entropy_scores,
    two_pass_be,
    wen_magnitude,
)
from mem_locate.errors import MemLocateError


@pytest.mark.parametrize("layout", ["diffusers-test", "sd1"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_pass_equals_two_pass(pipes, layout, eta):
    pipe = pipes[layout]
    cfg = AuditConfig(
        num_inference_steps=3, guidance_scale=3.0, num_images_per_prompt=2, eta=eta, batch_prompts=2
    )
    prompts = ["a photo of a cat", "a dog"]
    scores, _ = Auditor(pipe, cfg).score_prompts(prompts, [0, 1])
    for i, prompt in enumerate(prompts):
        ref = two_pass_be(
            pipe, prompt, num_inference_steps=3, guidance_scale=3.0, num_images_per_prompt=2, seed=i, eta=eta
        )
        np.testing.assert_allclose(scores[i].be, ref.be, rtol=1e-5)
        np.testing.assert_allclose(scores[i].wen, ref.wen, rtol=1e-5)
        assert scores[i].steps == ref.steps == [0, 1, 2]


def test_masked_magnitude():
    torch.manual_seed(0)
    s = torch.rand(3, 2, 8, 8)
    np.testing.assert_allclose(masked_magnitude(s, torch.ones(1, 8, 8)), wen_magnitude(s), rtol=1e-6)
    np.testing.assert_allclose(masked_magnitude(s, torch.full((2, 8, 8), 0.3)), wen_magnitude(s), rtol=1e-6)
    m = torch.zeros(2, 8, 8)
    m[:, :2] = 1  # fraction f = 1/4
    expect = s[..., :2, :].sum(dim=(-2, -1)).sqrt() / 0.25
    np.testing.assert_allclose(masked_magnitude(s, m), expect, rtol=1e-6)
    # a 4×4 mask is bilinearly resized to the 8×8 latent
    assert masked_magnitude(s, torch.rand(2, 4, 4)).shape == (3, 2)


def test_ren_entropies():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    h = entropy(p)
    assert not torch.isnan(h).any()
    np.testing.assert_allclose(h, [math.log(2), math.log(4)], rtol=1e-6)
    np.testing.assert_allclose(
        entropy(p, start=torch.tensor([1, 2])), [0.5 * math.log(2), 0.5 * math.log(4)], rtol=1e-6
    )
    # AE on N = 5: window = last ⌈5/5⌉ = 1 step (index 4)
    steps = list(range(5))
    tokens = torch.full((5, 2, 1, 4), 0.25)
    tokens[4, :, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    out = ren_entropy_scores(
        tokens, steps, ["a", "b"], torch.tensor([2]), num_inference_steps=5, modes=("le", "ae")
    )
    np.testing.assert_allclose(out["ren_le"], [math.log(4)], rtol=1e-6)
    np.testing.assert_allclose(out["ren_ae"], [0 + 0 - 0.5 * math.log(4)], rtol=1e-6)


def test_aggregate_windows_and_n():
    ps = PromptScores(
        key="k",
        prompt="p",
        seed=0,
        n=2,
        num_inference_steps=3,
        steps=[0, 1, 2],
        wen=[[1, 2, 3], [3, 4, 5]],
        be=[[1, 1, 1], [2, 2, 2]],
    )
    assert aggregate([ps], "wen")[0] == pytest.approx(3.0)
    assert aggregate([ps], "wen", n=1)[0] == pytest.approx(2.0)
    assert aggregate([ps.to_record()], "wen", window=(1, 2))[0] == pytest.approx(3.0)
    assert aggregate([ps], "wen1")[0] == pytest.approx(2.0)
    assert aggregate([ps], "be")[0] == pytest.approx(1.5)
    with pytest.raises(MemLocateError, match="window"):
        aggregate([ps], "wen", window=(0, 4))


def test_audit_config_validation(pipes):
    with pytest.raises(MemLocateError, match="guidance_scale"):
        Auditor(pipes["sd1"], AuditConfig(guidance_scale=1.0))
    with pytest.raises(MemLocateError, match="num_inference_steps"):
        AuditConfig(num_inference_steps=0).validate()


def _records(k=6):
    return [PromptRecord(key=f"p{i}", caption=f"a photo of thing {i}", label=i % 2) for i in range(k)]


CFG = AuditConfig(
    num_inference_steps=2, guidance_scale=3.0, num_images_per_prompt=1, methods=("be", "wen", "ren")
)


def test_resume_after_failure(pipes, tmp_path, monkeypatch):
    pipe = pipes["sd1"]
    full = Auditor(pipe, CFG).run(_records(), tmp_path / "full")
    auditor = Auditor(pipe, CFG)
    real = auditor._run_batch
    calls = {"n": 0}

    def failing(batch, store, out):
        if calls["n"] == 3:
            raise RuntimeError("boom")
        calls["n"] += 1
        real(batch, store, out)

    monkeypatch.setattr(auditor, "_run_batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        auditor.run(_records(), tmp_path / "run")
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3
    resumed = Auditor(pipe, CFG).run(_records(), tmp_path / "run")
    keys = [json.loads(line)["key"] for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert sorted(keys) == [f"p{i}" for i in range(6)]
    for method in ("be", "wen", "ren_le"):
        a = dict(zip([r["key"] for r in full.records], full.scores(method), strict=True))
        b = dict(zip([r["key"] for r in resumed.records], resumed.scores(method), strict=True))
        assert a == b
    assert (tmp_path / "run" / "maps" / "p0.safetensors").is_file()
    # a changed fingerprint raises unless new_run
    other = AuditConfig(num_inference_steps=3, guidance_scale=3.0, num_images_per_prompt=1)
    with pytest.raises(MemLocateError, match="fingerprint"):
        Auditor(pipe, other).run(_records(), tmp_path / "run")
    again = Auditor(pipe, other).run(_records(2), tmp_path / "run", new_run=True)
    assert len(again.records) == 2


def test_two_simulated_ranks_cover_the_set(pipes, tmp_path):
    pipe = pipes["sd1"]
    cfg = AuditConfig(num_inference_steps=2, guidance_scale=3.0, num_images_per_prompt=1)
    for rank in (0, 1):
        Auditor(pipe, cfg).run(_records(5), tmp_path, rank=rank, world_size=2)
    assert len(list(tmp_path.glob("results.rank*.jsonl"))) == 2
    merged = Auditor(pipe, cfg).run(_records(5), tmp_path)
    assert sorted(r["key"] for r in merged.records) == [f"p{i}" for i in range(5)]
    assert not list(tmp_path.glob("results.rank*.jsonl"))
    single = Auditor(pipe, cfg).run(_records(5), tmp_path / "single")
    by_key = {r["key"]: r["wen"] for r in single.records}
    for r in merged.records:
        np.testing.assert_allclose(r["wen"], by_key[r["key"]], rtol=1e-6)


def test_flag_prompts_cuts_at_the_clean_quantile():
    import numpy as np

    from mem_locate.detect import flag_prompts

    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, 40)
    memorized = rng.normal(3, 1, 10)
    records = [
        {"key": str(i), "prompt": "p", "seed": i, "label": int(i >= 40), "n": 1}
        | {"num_inference_steps": 1, "steps": [0], "wen": [[v]]}
        for i, v in enumerate(np.concatenate([clean, memorized]))
    ]
    flags = flag_prompts(records, "wen", quantile=0.9)
    assert flags.threshold == pytest.approx(float(np.quantile(clean, 0.9)))
    assert flags.n_calibration == 40
    expected = np.concatenate([clean, memorized]) > np.quantile(clean, 0.9)
    assert flags.flagged.tolist() == expected.tolist()
    assert 3 <= flags.flagged[:40].sum() <= 4  # about 10% of the clean prompts
    with pytest.raises(MemLocateError, match="known-clean"):
        flag_prompts(records[40:], "wen")


def test_saved_images_read_back_from_the_run(pipes, tmp_path):
    from mem_locate.data import load_run

    pipe = pipes["sd1"]
    cfg = AuditConfig(num_inference_steps=2, num_images_per_prompt=2, save_images=True, guidance_scale=3.0)
    auditor = Auditor(pipe, cfg)
    auditor.run([PromptRecord(key="a/b", caption="a photo of a cat")], tmp_path)
    _, tensors = auditor.score_prompts(["a photo of a cat"], [0])
    images = load_run(tmp_path).images("a/b")
    assert images.shape == tensors["images"].shape
    assert (images - tensors["images"].float()).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(MemLocateError, match="no saved images"):
        load_run(tmp_path).images("nope")
