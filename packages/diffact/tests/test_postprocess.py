"""Post-processing: full-rate restoration, purge under both conventions, median smoothing, segments."""

from __future__ import annotations

import numpy as np
import pytest

from diffact.postprocess import Segment, median_smooth, purge, restore_full_rate, segments


def test_restore_full_rate_nearest_tick_ties_down() -> None:
    out = restore_full_rate(np.array([0, 1, 2]), 24, 8)  # ticks at frames 4, 12, 20
    assert out[:9].tolist() == [0] * 9  # frames 0-3 copy the edge, 4-8 are nearest (8 is a tie) to tick 0
    assert out[9:17].tolist() == [1] * 8
    assert out[17:].tolist() == [2] * 7
    probs = np.arange(6).reshape(2, 3)
    assert restore_full_rate(probs, 5, 1).shape == (2, 5)
    np.testing.assert_array_equal(restore_full_rate(np.array([3, 4, 5]), 3, 1), [3, 4, 5])


def test_restore_matches_scipy_interp1d_nearest() -> None:
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(0)
    for r in (2, 3, 8):
        total = 50
        values = rng.integers(0, 5, size=total // r)
        ticks = r // 2 + r * np.arange(len(values))
        inside = np.arange(ticks[0], ticks[-1] + 1)
        ref = interp1d(ticks, values, kind="nearest")(inside)
        np.testing.assert_array_equal(restore_full_rate(values, total, r)[inside], ref)


def test_purge_mstcn() -> None:
    assert "".join(purge(list("aaaabbccccccddd"), 3, "mstcn")) == "aaaaa" + "c" * 10  # inner b split, last d
    assert "".join(purge(list("abbbbbcccc"), 3)) == "bbbbbbcccc"  # the first takes the next label
    assert "".join(purge(list("aaaaxxbbbb"), 3)) == "aaaaabbbbb"  # first len//2 frames to the previous
    assert purge(list("aaa"), 3) == list("aaa")  # a single segment stays
    assert purge([0, 0, 0, 0, 1, 2, 2, 2, 2], 1) == [0, 0, 0, 0, 2, 2, 2, 2, 2]  # any label type


def test_purge_segments_computed_once() -> None:
    """x, y, z are 1-frame inner segments: each takes its ORIGINAL next label (y, z, b), not a purged one."""
    assert "".join(purge(list("aaaaxyzbbbb"), 3)) == "aaaayzbbbbb"


def test_purge_asformer_last_segment_one_frame_short() -> None:
    labels = list("aaaaaabbb")  # last segment is 3 frames; asformer measures 2 and keeps the final frame
    assert "".join(purge(labels, 3, "mstcn")) == "aaaaaaaaa"
    assert "".join(purge(labels, 3, "asformer")) == "aaaaaaaab"
    labels = list("aaaaaabbbb")
    assert "".join(purge(labels, 3, "mstcn")) == "aaaaaabbbb"
    assert "".join(purge(labels, 3, "asformer")) == "aaaaaaaaab"


def test_median_smooth_columns_sum_to_one() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=40).T
    out = median_smooth(probs, 5)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-12)
    spike = np.zeros((2, 11))
    spike[0] = 1.0
    spike[:, 5] = [0.0, 1.0]
    assert median_smooth(spike, 3).argmax(0).tolist() == [0] * 11  # a 1-frame flip is removed


def test_segments_end_conventions() -> None:
    seq = ["bg", "a", "a", "bg", "b"]
    assert segments(seq, ("bg",)) == [Segment("a", 1, 3), Segment("b", 4, 5)]
    assert segments(seq, ("bg",), "asformer") == [Segment("a", 1, 3), Segment("b", 4, 4)]
    assert segments([], ()) == []
    with pytest.raises(ValueError):
        segments(seq, (), "other")
