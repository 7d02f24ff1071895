import json

import numpy as np
import pytest
import torch
from PIL import Image

from mem_locate.data import load_masks, load_prompts, load_reference_images
from mem_locate.errors import MemLocateError


def test_jsonl_fields_kinds_and_keys(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [
        {
            "caption": "a cat",
            "index": 7,
            "type": "TV",
            "url": "u",
            "caption1": "a kitty",
            "caption2": "feline",
        },
        {"prompt": "a dog", "type": "MV"},
        {"text": "a bird", "label": 0},
        {"Caption": "a fish"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    recs = load_prompts(p, label=1)
    assert [r.key for r in recs] == ["7", "2", "3", "4"]  # index, else 1-based line number
    assert [r.kind for r in recs] == ["local", "global", "none", "unknown"]
    assert [r.label for r in recs] == [1, 1, 0, 1]
    assert recs[0].paraphrases == ["a kitty", "feline"] and recs[0].url == "u"


def test_txt_and_csv(tmp_path):
    t = tmp_path / "p.txt"
    t.write_text("one\n\ntwo\n")
    assert [(r.key, r.caption) for r in load_prompts(t, label=0)] == [("1", "one"), ("3", "two")]
    c = tmp_path / "p.csv"
    c.write_text("Caption;URL;type;Index\nhello;x;VM;5\nworld;y;TM;6\n")
    recs = load_prompts(c)
    assert [(r.key, r.caption, r.kind, r.label) for r in recs] == [
        ("5", "hello", "global", 1),
        ("6", "world", "local", 1),
    ]


def test_bad_prompt_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("  \n")
    with pytest.raises(MemLocateError, match=r"e.jsonl.*empty"):
        load_prompts(empty)
    nocap = tmp_path / "n.jsonl"
    nocap.write_text('{"caption": "ok"}\n{"url": "x"}\n')
    with pytest.raises(MemLocateError, match=r"n.jsonl: line 2: no caption"):
        load_prompts(nocap)
    dup = tmp_path / "d.jsonl"
    dup.write_text(
        '{"caption": "a", "index": 1}\n{"caption": "b", "index": 2}\n{"caption": "c", "index": 1}\n'
    )
    with pytest.raises(MemLocateError, match=r"duplicate key '1' on lines 1 and 3"):
        load_prompts(dup)
    with pytest.raises(MemLocateError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"caption": "a"}\n{oops\n')
    with pytest.raises(MemLocateError, match="line 2 is not valid JSON"):
        load_prompts(bad)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_masks_and_references(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 200
    _png(tmp_path / "masks" / "a.png", m)
    _png(tmp_path / "masks" / "b" / "3.png", 255 - m)
    masks = load_masks(tmp_path, ["a", "b"])
    assert torch.equal(masks["a"], torch.from_numpy(m > 127).float())
    assert torch.equal(masks["b"]["3"], torch.from_numpy(m < 127).float())
    with pytest.raises(MemLocateError, match=r"no mask for 2 key\(s\): c, d"):
        load_masks(tmp_path, ["a", "c", "d"])
    img = (np.random.default_rng(0).random((6, 6, 3)) * 255).astype(np.uint8)
    _png(tmp_path / "gt_images" / "a" / "0.png", img)
    _png(tmp_path / "gt_images" / "a" / "1.png", img)
    refs = load_reference_images(tmp_path, ["a"])
    assert refs["a"].shape == (2, 3, 6, 6)
    assert torch.allclose(refs["a"][0], torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    with pytest.raises(MemLocateError, match="reference images for 1 key"):
        load_reference_images(tmp_path, ["zz"])
