import pytest
import torch

from difflab_core.metrics import tpr_at_fpr
from mem_video import (
    MemorizationDetector,
    MemVideoError,
    evaluate,
    frame_magnitudes,
    oracle_prompts,
    prompt_scores,
)
from mem_video.evaluation import calibrate_threshold


def test_hook_records_per_frame_norms(video_pipe):
    seen = []
    handle = video_pipe.unet.register_forward_hook(
        lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o.sample).detach().clone())
    )
    try:
        det = MemorizationDetector(video_pipe, steps=1, num_inference_steps=3, guidance_scale=7.5)
        recs = det.score(["a red ball"], num_videos_per_prompt=2, num_frames=4)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (4, 4, 4, 16, 16)  # [2B,C,F,h,w]
    uncond, cond = seen[0].chunk(2)
    d = cond - uncond
    for b, rec in enumerate(recs):
        step = rec.steps[0]
        manual = [float(d[b, :, f].norm()) for f in range(4)]
        assert step["content_per_frame"] == pytest.approx(manual, rel=1e-4)
        assert step["content"] == pytest.approx(max(manual), rel=1e-4)
        motion = sum(float((d[b, :, f + 1] - d[b, :, f]).norm()) for f in range(3)) / 3
        assert step["motion"] == pytest.approx(motion, rel=1e-4)
        assert step["motion_norm"] == pytest.approx(motion / (sum(manual) / 4), rel=1e-4)
        assert step["wen"] == pytest.approx(float(d[b].norm()), rel=1e-4)


def test_early_stop_never_decodes(video_pipe, monkeypatch, tmp_path):
    calls = []
    handle = video_pipe.unet.register_forward_hook(lambda *a: calls.append(1))

    def no_decode(*a, **k):
        raise AssertionError("the VAE must not decode")

    monkeypatch.setattr(video_pipe.vae, "decode", no_decode)
    try:
        det = MemorizationDetector(video_pipe, steps=2, num_inference_steps=10, guidance_scale=5.0)
        recs = det.score(["x", "y"], num_videos_per_prompt=1, num_frames=4, out=tmp_path)
    finally:
        handle.remove()
    assert len(calls) == 4  # J = 2 denoiser calls per prompt, out of 10 steps
    assert [len(r.steps) for r in recs] == [2, 2]
    again = det.score(["x", "y"], num_videos_per_prompt=1, num_frames=4, out=tmp_path)
    assert len(calls) == 4 and [r.key for r in again] == ["p0000_0", "p0001_0"]


def test_detector_bad_inputs(video_pipe):
    with pytest.raises(MemVideoError, match="guidance_scale"):
        MemorizationDetector(video_pipe, guidance_scale=1.0)
    with pytest.raises(MemVideoError, match="frame_axis"):
        MemorizationDetector(video_pipe, frame_axis=5)
    video_pipe._free_init_num_iters = 3
    try:
        with pytest.raises(MemVideoError, match="FreeInit"):
            MemorizationDetector(video_pipe)
    finally:
        del video_pipe._free_init_num_iters
    from difflab_core.tiny import tiny_ddpm_pipeline

    with pytest.raises(MemVideoError, match="audit"):
        MemorizationDetector(tiny_ddpm_pipeline())
    det = MemorizationDetector(video_pipe)
    with pytest.raises(MemVideoError, match="twice the sample batch"):
        det._delta(torch.zeros(3, 4, 2, 8, 8), batch=2, frames=2, where="test")
    folded = torch.randn(2 * 3, 4, 8, 8)  # [2B·F, C, h, w] with B = 1, F = 3
    d = det._delta(folded, batch=1, frames=3, where="test")
    assert torch.equal(d[0, :, 1], folded[4] - folded[1])
    with pytest.raises(MemVideoError, match="NaN"):
        det._delta(torch.full((2, 4, 2, 8, 8), float("nan")), batch=1, frames=2, where="prompt 'p', step 0")


def test_oracle_detection_quality():
    pipe, prompts = oracle_prompts()
    det = MemorizationDetector(pipe, steps=1, num_inference_steps=20, guidance_scale=7.5)
    recs = det.score(prompts, num_videos_per_prompt=2, num_frames=8)
    label = {p["prompt_id"]: p["label"] for p in prompts}

    def auc(stat, pos, neg):
        s = prompt_scores(recs, stat)
        keys = [k for k in s if label[k] in pos + neg]
        return evaluate({k: s[k] for k in keys}, {k: label[k] in pos for k in keys})["auc"]

    assert auc("content", ("content", "both"), ("none",)) >= 0.9
    assert auc("motion", ("motion", "both"), ("none",)) >= 0.9
    assert auc("motion_norm", ("motion",), ("content",)) >= 0.85


def test_evaluate_wen_convention():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    labels = [1, 0, 1, 1, 0, 0]
    # ROC points (FPR, TPR): (0,0) (0,1/3) (1/3,1/3) (1/3,2/3) (1/3,1) ...; last FPR < 0.01 is (0, 1/3)
    out = evaluate(scores, labels)
    assert out["tpr_at_1fpr"] == pytest.approx(1 / 3)
    assert out["auc"] == pytest.approx(7 / 9)
    assert out["n_pos"] == 3 and out["n_neg"] == 3
    assert tpr_at_fpr(scores, labels, 0.5) == 1.0
    assert calibrate_threshold(scores, labels, 0.0) == 0.9
    assert calibrate_threshold(scores, labels, 0.34) == 0.6
    with pytest.raises(MemVideoError, match="one class"):
        evaluate([0.1, 0.2], [1, 1])


def test_frame_magnitudes_reduce():
    d = torch.zeros(1, 1, 3, 2, 2)
    d[0, 0, 1] = 1.0  # one frame differs: norm 2
    m = frame_magnitudes(d, "max")
    assert float(m["content"][0]) == 2.0
    assert float(frame_magnitudes(d, "mean")["content"][0]) == pytest.approx(2 / 3)
    assert float(m["motion"][0]) == 2.0


def test_animatediff_detect_and_generate(animatediff_pipe, tmp_path):
    from mem_video import generate_videos, read_video

    seen = []
    handle = animatediff_pipe.unet.register_forward_hook(
        lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o.sample).shape)
    )
    try:
        recs = MemorizationDetector(animatediff_pipe, num_inference_steps=3, guidance_scale=7.5).score(
            ["a cat"], num_videos_per_prompt=2, num_frames=4
        )
    finally:
        handle.remove()
    assert seen == [torch.Size([4, 4, 4, 16, 16])]  # [2B,C,F,h,w], one call then stop
    assert len(recs) == 2 and len(recs[0].steps[0]["content_per_frame"]) == 4
    rows = generate_videos(
        animatediff_pipe,
        ["a cat"],
        tmp_path,
        num_videos_per_prompt=1,
        num_inference_steps=2,
        num_frames=4,
        guidance_scale=7.5,
    )
    assert read_video(tmp_path / rows[0]["path"]).frames.shape == (4, 3, 32, 32)
