"""Prompt templates (the paper's text and a JSON mode), chat messages, class lists and the answer parser."""

from __future__ import annotations

import ast
import base64
import difflib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collage_prompt.errors import CollagePromptError

__all__ = [
    "ClassList",
    "ParseResult",
    "PromptTemplate",
    "answer_slots",
    "build_messages",
    "load_classes",
    "normalize_label",
    "parse_answer",
]

LENIENT_RATIO = 0.85


@dataclass(frozen=True)
class ClassList:
    """Category names: ``names[i]`` is class ``i``'s primary name, ``synonyms[i]`` all its accepted names."""

    names: list[str]
    synonyms: list[list[str]]

    @classmethod
    def from_names(cls, entries: Sequence[str | Sequence[str]]) -> ClassList:
        """From names (``"tench, Tinca tinca"`` splits on commas) or ``[name, synonym, ...]`` lists."""
        names, syns = [], []
        for e in entries:
            parts = [p.strip() for p in e.split(",")] if isinstance(e, str) else [str(p).strip() for p in e]
            parts = [p for p in parts if p]
            if not parts:
                raise CollagePromptError(f"class list: empty class name in {list(entries)[:5]}...")
            names.append(parts[0])
            syns.append(parts)
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            key = normalize_label(n)
            if key in seen:
                raise CollagePromptError(
                    f"class list: duplicate class name {n!r} (classes {seen[key]} and {i})"
                )
            seen[key] = i
        return cls(names=names, synonyms=syns)

    def __len__(self) -> int:
        return len(self.names)


def load_classes(path: str | Path) -> ClassList:
    """Read ``classes.json`` (``{id: [name, synonyms...]}`` or ``{id: "name"}``) or ``classes.txt`` (a name per line)."""
    path = Path(path)
    if not path.is_file():
        raise CollagePromptError(f"{path}: class file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CollagePromptError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            try:
                items = sorted(data.items(), key=lambda kv: int(kv[0]))
            except ValueError as exc:
                raise CollagePromptError(f"{path}: keys must be integer class ids") from exc
            entries = [[v] if isinstance(v, str) else v for _, v in items]
        elif isinstance(data, list):
            entries = data
        else:
            raise CollagePromptError(f"{path}: expected an object {{id: [name, ...]}} or a list")
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip()]
    if not entries:
        raise CollagePromptError(f"{path}: no classes")
    try:
        return ClassList.from_names(entries)
    except CollagePromptError as exc:
        raise CollagePromptError(f"{path}: {exc}") from exc


def _as_classes(categories) -> ClassList:
    return categories if isinstance(categories, ClassList) else ClassList.from_names(categories)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt version: ``text(rows, cols, classes)`` builds the question for one collage."""

    version: str
    standard: str
    collage: str
    json_mode: bool = False

    @classmethod
    def get(cls, version: str = "paper-v1") -> PromptTemplate:
        """``"paper-v1"`` (the paper's figure) or ``"json-v1"`` (answer as a JSON object)."""
        if version not in _TEMPLATES:
            raise CollagePromptError(f"unknown prompt template {version!r}; use one of {sorted(_TEMPLATES)}")
        return _TEMPLATES[version]

    def text(self, rows: int, cols: int, categories) -> str:
        """The prompt for a ``rows`` x ``cols`` collage (1x1 uses the standard single-image prompt)."""
        classes = _as_classes(categories)
        cats = repr(list(classes.names))
        k = rows * cols
        if k == 1:
            return self.standard.format(categories=cats)
        return self.collage.format(
            R=rows, C=cols, categories=cats, K=k, slots=answer_slots(k, self.json_mode)
        )


def answer_slots(k: int, json_mode: bool = False) -> str:
    """The ``k`` answer slots of a collage reply: ``"0": "<label>", …`` (JSON) or ``0: '<label>', …``."""
    if json_mode:
        return ", ".join(f'"{i}": "<label>"' for i in range(k))
    return ", ".join(f"{i}: '<label>'" for i in range(k))


_TEMPLATES = {
    "paper-v1": PromptTemplate(
        version="paper-v1",
        standard=(
            "Act as an image classifier by providing prediction for this image with assigned categories "
            "from a given list {categories}.\nAnswer exactly as: Here is the prediction: ['<label>']"
        ),
        collage=(
            "Act as an image classifier by providing predictions for each {R}x{C} grid collage with assigned "
            "categories from a given list {categories}, following left-to-right, top-to-bottom order."
            "\nAnswer exactly as: Here is the prediction: [{slots}] with {K} entries, index 0 top-left."
        ),
    ),
    "json-v1": PromptTemplate(
        version="json-v1",
        standard=(
            "Classify this image into one category from the list {categories}. "
            'Reply with a JSON object {{"0": "<label>"}} and nothing else.'
        ),
        collage=(
            "Classify each cell of this {R}x{C} grid collage into one category from the list {categories}. "
            "Cells are numbered left-to-right, top-to-bottom from 0. Reply with a JSON object {{{slots}}} "
            "with {K} entries and nothing else."
        ),
        json_mode=True,
    ),
}


def build_messages(png_bytes: bytes, text: str, detail: str = "high") -> list[dict]:
    """OpenAI chat messages: one user turn with the prompt text and the image as a base64 PNG data URL."""
    if detail not in ("low", "high", "auto"):
        raise CollagePromptError(f"detail={detail!r}: use 'low', 'high' or 'auto'")
    url = "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


_PUNCT_ENDS = "\"'`“”‘’.,;:!?()[]{}<> \t"


def normalize_label(label: str) -> str:
    """NFKC, lower case, collapsed whitespace, quotes and punctuation stripped from both ends."""
    s = unicodedata.normalize("NFKC", str(label)).lower()
    s = re.sub(r"\s+", " ", s)
    return s.strip(_PUNCT_ENDS)


@dataclass
class ParseResult:
    """A parsed answer for K cells.

    ``labels[c]``: the raw label given for cell c (None if missing); ``matched[c]``: the class index it names
    strictly (None if missing, duplicated or outside the list); ``lenient[c]``: the class index under fuzzy
    matching (difflib ratio >= 0.85, or the label's words are part of exactly one class name); ``status``: ``ok`` (all K cells answered), ``partial`` or ``failed``.
    """

    labels: list[str | None]
    matched: list[int | None]
    lenient: list[int | None]
    status: str
    notes: list[str] = field(default_factory=list)


_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")
_PAIR = re.compile(
    r"""(?:^|[\s\[{(,;])["']?(\d{1,3})["']?\s*[:=]\s*(?:'([^'\n]*)'|"([^"\n]*)"|([^,\]}\n'"]+))"""
)
_LINE = re.compile(r"^\s*(?:cell\s*)?(\d{1,3})\s*[.)\-]\s+(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def _from_pairs(pairs: list[tuple[int, str]], k: int, notes: list[str]) -> list[str | None]:
    indices = [i for i, _ in pairs]
    if indices and 0 not in indices and max(indices) == k and set(indices) <= set(range(1, k + 1)):
        notes.append("1-based indices")
        pairs = [(i - 1, lab) for i, lab in pairs]
    labels: list[str | None] = [None] * k
    counts: dict[int, int] = {}
    for i, lab in pairs:
        counts[i] = counts.get(i, 0) + 1
        if 0 <= i < k:
            labels[i] = lab
        else:
            notes.append(f"index {i} outside 0..{k - 1}")
    for i, n in counts.items():
        if n > 1 and 0 <= i < k:
            notes.append(f"duplicate index {i}")
            labels[i] = None
    return labels


def _bare_list(text: str) -> list[str] | None:
    m = re.search(r"\[(.*)\]", text, re.DOTALL)
    if m:
        try:
            value = ast.literal_eval("[" + m.group(1) + "]")
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        except (ValueError, SyntaxError):
            pass
        return [p for p in (s.strip() for s in m.group(1).split(",")) if p]
    body = text.split(":", 1)[1] if re.match(r"^[^\n,]*:", text) else text
    parts = [p.strip() for p in re.split(r"[,\n]", body) if p.strip()]
    return parts or None


def _extract(text: str, k: int, notes: list[str]) -> list[str | None]:
    pairs = [
        (int(m.group(1)), next(g for g in m.groups()[1:] if g is not None)) for m in _PAIR.finditer(text)
    ]
    if pairs:
        return _from_pairs(pairs, k, notes)
    start = text.find("[")
    if start >= 0 or text.lstrip().startswith("{"):
        try:
            value = json.loads(text[text.find("{") :] if text.lstrip().startswith("{") else text[start:])
            if isinstance(value, list):
                notes.append("json list")
                return [str(v) for v in value[:k]] + [None] * max(0, k - len(value))
        except json.JSONDecodeError:
            pass
    lines = [(int(m.group(1)), m.group(2)) for m in _LINE.finditer(text)]
    if lines:
        notes.append("numbered lines")
        return _from_pairs(lines, k, notes)
    items = _bare_list(text)
    if items:
        notes.append("bare list")
        if len(items) > k:
            notes.append(f"{len(items)} labels for {k} cells; extra ignored")
        return [*items[:k], *([None] * max(0, k - len(items)))]
    return [None] * k


def _match(label: str | None, lookup: dict[str, int], classes: ClassList, lenient: bool) -> int | None:
    if label is None:
        return None
    key = normalize_label(label)
    if key in lookup:
        return lookup[key]
    if not lenient or not key:
        return None
    best, best_ratio = None, 0.0
    for name, idx in lookup.items():
        ratio = difflib.SequenceMatcher(None, key, name).ratio()
        if ratio > best_ratio:
            best, best_ratio = idx, ratio
    if best_ratio >= LENIENT_RATIO:
        return best
    words = set(key.split())
    containing = {idx for name, idx in lookup.items() if words <= set(name.split())}
    return containing.pop() if len(containing) == 1 else None


def parse_answer(text: str | None, k: int, categories) -> ParseResult:
    """Parse a VLM reply into K cell labels and match them strictly (and leniently) to ``categories``.

    Accepts ``i: 'label'`` pairs (any quotes, brackets and preamble), JSON objects or lists, numbered lines
    (1-based numbering detected when indices run 1..K) and bare lists (mapped by order); code fences and prose
    are stripped. Missing, duplicate-index or out-of-list cells get ``matched[c] = None``.
    """
    classes = _as_classes(categories)
    lookup = {normalize_label(s): i for i, syns in enumerate(classes.synonyms) for s in syns}
    notes: list[str] = []
    if not text or not str(text).strip():
        return ParseResult([None] * k, [None] * k, [None] * k, "failed", ["empty answer"])
    body = _FENCE.sub("", str(text)).strip()
    labels = _extract(body, k, notes)
    labels = [None if lab is None or not normalize_label(lab) else lab.strip() for lab in labels]
    matched = [_match(lab, lookup, classes, lenient=False) for lab in labels]
    lenient = [_match(lab, lookup, classes, lenient=True) for lab in labels]
    n = sum(lab is not None for lab in labels)
    status = "ok" if n == k else ("failed" if n == 0 else "partial")
    if n < k:
        notes.append(f"{k - n} of {k} cells missing")
    return ParseResult(labels, matched, lenient, status, notes)
