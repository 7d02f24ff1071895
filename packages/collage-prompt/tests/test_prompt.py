"""The answer parser (strict and lenient), templates, messages and class files."""

from __future__ import annotations

import json

import pytest

from collage_prompt.errors import CollagePromptError
from collage_prompt.prompt import PromptTemplate, build_messages, load_classes, normalize_label, parse_answer

CATS = ["vase", "pot pie", "feather boa", "tench, Tinca tinca", "dog"]
V, P, F, T, D = range(5)

# (text, expected strict matches for K=4, expected status)
CASES = [
    ("Here is the prediction: [0: 'vase', 1: 'pot pie', 2: 'dog', 3: 'tench']", [V, P, D, T], "ok"),
    ('Here is the prediction: [0: "vase", 1: "pot pie", 2: "dog", 3: "tench"]', [V, P, D, T], "ok"),
    ("[0: vase, 1: pot pie, 2: dog, 3: tench]", [V, P, D, T], "ok"),
    ("0: vase\n1: pot pie\n2: dog\n3: tench", [V, P, D, T], "ok"),
    ("[2: 'dog', 0: 'vase', 3: 'tench', 1: 'pot pie']", [V, P, D, T], "ok"),
    ('{"0": "vase", "1": "pot pie", "2": "dog", "3": "tench"}', [V, P, D, T], "ok"),
    ('```json\n{"0": "vase", "1": "pot pie", "2": "dog", "3": "tench"}\n```', [V, P, D, T], "ok"),
    ('["vase", "pot pie", "dog", "tench"]', [V, P, D, T], "ok"),
    ("1. vase\n2. pot pie\n3. dog\n4. tench", [V, P, D, T], "ok"),
    ("1) vase\n2) pot pie\n3) dog\n4) tench", [V, P, D, T], "ok"),
    ("[1: 'vase', 2: 'pot pie', 3: 'dog', 4: 'tench']", [V, P, D, T], "ok"),
    (
        "Sure! Looking at the grid:\nHere is the prediction: [0: 'vase', 1: 'pot pie', 2: 'dog', 3: 'tench']\nHope this helps.",
        [V, P, D, T],
        "ok",
    ),
    ("Here is the prediction: ['vase', 'pot pie', 'dog', 'tench']", [V, P, D, T], "ok"),
    ("vase, pot pie, dog, tench", [V, P, D, T], "ok"),
    ("[0: 'VASE', 1: 'Pot  Pie', 2: 'Dog.', 3: 'TENCH']", [V, P, D, T], "ok"),
    ("[0: 'vase', 1: 'pot pie', 2: 'dog', 3: 'Tinca tinca']", [V, P, D, T], "ok"),
    ("[0: 'vase', 1: 'pot pie', 2: 'feather', 3: 'vast']", [V, P, None, None], "ok"),
    ("[0: 'vase', 1: 'pot pie', 2: 'dog']", [V, P, D, None], "partial"),
    ("[0: 'vase', 0: 'dog', 2: 'dog', 3: 'tench']", [None, None, D, T], "partial"),
    ("[0: 'vase', 1: 'cat', 2: 'dog', 3: 'tench']", [V, None, D, T], "ok"),
    ("[0: 'vase', 1: 'pot pie', 2: 'dog', 3: 'tench', 4: 'vase']", [V, P, D, T], "ok"),
    ("Here is the prediction: [0: 'vase', 1: 'pot pie', 2: 'do", [V, P, None, None], "partial"),
    ("", [None] * 4, "failed"),
    (None, [None] * 4, "failed"),
    ("   \n ", [None] * 4, "failed"),
    ("[0: '', 1: 'pot pie', 2: 'dog', 3: 'tench']", [None, P, D, T], "partial"),
    ("“vase”, ‘pot pie’, dog, tench", [V, P, D, T], "ok"),
]


@pytest.mark.parametrize(("text", "expected", "status"), CASES)
def test_parser_table(text, expected, status):
    result = parse_answer(text, 4, CATS)
    assert result.matched == expected
    assert result.status == status


def test_lenient_matching_is_secondary():
    result = parse_answer("[0: 'feather', 1: 'vast', 2: 'pot pies', 3: 'zebra']", 4, CATS)
    assert result.matched == [None, None, None, None]
    assert result.lenient == [F, None, P, None]  # "vast" vs "vase": ratio 0.75 < 0.85


def test_standard_answer_k1():
    assert parse_answer("Here is the prediction: ['vase']", 1, CATS).matched == [V]


def test_normalize_label():
    assert normalize_label("  'Ｆeather   Boa.' ") == "feather boa"


def test_templates_and_messages():
    text = PromptTemplate.get("paper-v1").text(3, 3, CATS)
    assert text.startswith("Act as an image classifier by providing predictions for each 3x3 grid collage")
    assert "['vase', 'pot pie', 'feather boa', 'tench', 'dog']" in text and "8: '<label>'" in text
    assert "providing prediction for this image" in PromptTemplate.get("paper-v1").text(1, 1, CATS)
    assert '"3": "<label>"' in PromptTemplate.get("json-v1").text(2, 2, CATS)
    with pytest.raises(CollagePromptError):
        PromptTemplate.get("v9")
    msg = build_messages(b"\x89PNG", "hi", "low")
    assert msg[0]["content"][1]["image_url"]["detail"] == "low"


def test_load_classes(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"1": ["pot pie"], "0": ["tench", "Tinca tinca"]}))
    classes = load_classes(path)
    assert classes.names == ["tench", "pot pie"] and classes.synonyms[0] == ["tench", "Tinca tinca"]
    txt = tmp_path / "classes.txt"
    txt.write_text("a\nb\nA\n")
    with pytest.raises(CollagePromptError, match="duplicate"):
        load_classes(txt)
    with pytest.raises(CollagePromptError, match="not found"):
        load_classes(tmp_path / "missing.json")
