"""Spec section 5, case 7: thresholds on the sprite testbed (Farneback, tiny embedder), and the per-type
verdicts of the audit."""

from difflab_core.metrics import roc_auc


def _rows(testbed_audit, sprite_testbed):
    rows = {r["id"]: r for r in testbed_audit.rows}
    return [(lab, rows[lab["id"]]) for lab in sprite_testbed.labels]


def test_testbed_layout(sprite_testbed):
    kinds = [c.meta["kind"] for c in sprite_testbed.videos]
    assert kinds.count("moving") == 30 and kinds.count("static") == 5 and kinds.count("pan") == 5
    assert len(sprite_testbed.images) == 20
    types = [lab["type"] for lab in sprite_testbed.labels]
    assert types.count("negative") == 12 and types.count("both") == 6
    clip = sprite_testbed.generated[0]
    assert clip.frames.shape == (16, 3, 64, 64) and clip.fps == 8.0
    # a `both` video is its training source up to noise and a brightness shift
    lab = next(lab for lab in sprite_testbed.labels if lab["type"] == "both")
    gen = next(c for c in sprite_testbed.generated if c.id == lab["id"])
    src = next(c for c in sprite_testbed.videos if c.id == lab["content_source"])
    diff = gen.frames - src.frames
    assert (diff - diff.mean()).abs().mean() < 0.03


def test_content_and_motion_auc(testbed_audit, sprite_testbed):
    pairs = _rows(testbed_audit, sprite_testbed)
    content = roc_auc([r["content_score"] for _, r in pairs], [lab["content"] for lab, _ in pairs])
    assert content >= 0.95
    moving = [(lab, r) for lab, r in pairs if lab["type"] != "partial"]
    scores = [r["motion_score"] if r["motion_score"] is not None else -1.0 for _, r in moving]
    assert roc_auc(scores, [lab["motion"] for lab, _ in moving]) >= 0.90


def test_nmf_rates(testbed_audit, sprite_testbed):
    pairs = _rows(testbed_audit, sprite_testbed)
    natural = [r["natural"] is not None for lab, r in pairs if lab["type"] in ("static", "pan")]
    moving = [r["natural"] is not None for lab, r in pairs if lab["type"] not in ("static", "pan")]
    assert sum(natural) / len(natural) >= 0.75
    assert sum(moving) / len(moving) <= 0.05


def test_copy_types(testbed_audit, sprite_testbed):
    pairs = _rows(testbed_audit, sprite_testbed)
    by_type = {}
    for lab, r in pairs:
        by_type.setdefault(lab["type"], []).append((lab, r))
    # identical videos are copies on both metrics, of their source
    for lab, r in by_type["both"]:
        assert r["type"] == "both"
        assert r["content_ref"] == lab["content_source"] and r["motion_ref"] == lab["motion_source"]
        assert r["coverage"] == 1.0
    # a content copy with new motion is content-only
    for _, r in by_type["content"]:
        assert r["type"] == "content"
    # a motion copy with new content is never a content copy; those over tau_m are motion-only
    motion_rows = [r for _, r in by_type["motion"]]
    assert all(not r["content_mem"] for r in motion_rows)
    flagged = [r for r in motion_rows if r["motion_mem"]]
    assert flagged and all(r["type"] == "motion" for r in flagged)
    # static and camera-pan videos are not motion copies
    for kind in ("static", "pan"):
        assert all(not r["motion_mem"] for _, r in by_type[kind])
    # a replaced frame is found in the training images, covering one frame
    for lab, r in by_type["image"]:
        assert r["content_source"] == "image" and r["content_ref"] == lab["content_source"]
        assert r["coverage"] == 1 / 16


def test_summary(testbed_audit):
    s = testbed_audit.summary
    assert s["n_videos"] == len(testbed_audit.rows)
    assert sum(s["counts"].values()) == s["n_videos"]
    assert 0 < s["content_from_images_share"] < 1
    assert s["distinct_training_items_extracted"] > 0
