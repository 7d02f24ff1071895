"""Rate limiter and retry policy with a fake clock, replay, metrics, and the official-dataset loader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from collage_prompt.batch import RateLimiter, RetryPolicy
from collage_prompt.client import ItemError, ReplayClient, VLMRequest
from collage_prompt.collect import load_official_dataset
from collage_prompt.errors import CollagePromptError
from collage_prompt.metrics import arrangement_gain, cer, ces_rel, pce


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_rate_limiter_rpm_tpm_and_cooldown():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=600, clock=clock, sleep=clock.sleep)
    for _ in range(60):
        limiter.acquire(1)
    assert clock.now == 0.0  # the bucket starts full
    limiter.acquire(1)
    assert clock.now == pytest.approx(1.0)  # one request per second once empty
    limiter = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)
    start = clock.now
    limiter.acquire(600)
    limiter.acquire(300)
    assert clock.now - start == pytest.approx(30.0)  # 300 tokens at 10 tokens/s
    limiter.cooldown(5.0)
    start = clock.now
    limiter.acquire(0)
    assert clock.now - start == pytest.approx(5.0)
    with pytest.raises(CollagePromptError, match="tpm"):
        limiter.acquire(10_000)


def test_retry_policy_backoff():
    policy = RetryPolicy(base=1.0, cap=8.0, seed=0)
    delays = [policy.delay(n) for n in range(10)]
    assert all(0 <= d <= min(8.0, 2**n) for n, d in enumerate(delays))
    assert policy.delay(3, retry_after=2.5) == 2.5 and policy.delay(0, retry_after=100) == 8.0


def test_replay_client():
    req = VLMRequest(b"png", "prompt")
    replay = ReplayClient([{"key": req.key, "text": "[0: 'a']", "prompt_tokens": 10, "completion_tokens": 2}])
    assert replay.complete(req).text == "[0: 'a']"
    with pytest.raises(ItemError):
        replay.complete(VLMRequest(b"other", "prompt"))


def test_metrics_by_hand():
    assert ces_rel(0.8, 0.9, 0.1, 0.5) == pytest.approx((0.8 / 0.9) * 5)
    assert cer(0.8, 0.9, 0.1, 0.5) == pytest.approx(0.8 / (1 - 0.8 / 0.9))
    assert cer(0.95, 0.9, 0.1, 0.5) == pytest.approx(0.8 / 0.001)
    assert pce(0.8, 0.1, 0.5) == pytest.approx(4.0)
    gain, (lo, hi) = arrangement_gain([1.0, 0.5, 0.75, 1.0], [0.5, 0.5, 0.5, 0.75])
    assert gain == pytest.approx(0.25) and lo <= gain <= hi
    assert arrangement_gain([0.5] * 5, [0.5] * 5) == (0.0, (0.0, 0.0))


def test_load_official_dataset(tmp_path):
    meta = tmp_path / "train" / "metainfo"
    feat = tmp_path / "train" / "subset" / "feat"
    meta.mkdir(parents=True)
    feat.mkdir(parents=True)
    names = [f"n01_{i}.JPEG" for i in range(4)]
    for i, n in enumerate(names):
        np.save(feat / n.replace(".JPEG", ".npy"), np.full(512, i, dtype=np.float32))
    info = {"c0": {"ori": names, "ord": [2, 0, 3, 1], "pred": [1, 0, 1, 1]}}
    with open(meta / "imagenet_train_2x2_collage_pred_info.pkl", "wb") as f:
        pickle.dump(info, f)
    with pytest.raises(CollagePromptError, match="trusted"):
        load_official_dataset(tmp_path, "2x2")
    (sample,) = load_official_dataset(tmp_path, "2x2", trusted=True)
    assert sample.feats.shape == (4, 512) and sample.feats[3, 0] == 3
    assert sample.accuracy == 0.75 and sample.cell_correct is None
    assert sample.perm.tolist() == [2, 0, 3, 1]
    ori = load_official_dataset(tmp_path, "2x2", trusted=True, pred_order="ori")[0]
    assert ori.cell_correct.tolist() == [1, 1, 1, 0]  # pred[ord]: cell c shows ori[ord[c]]
