"""Caption statistics for AMG's caption deduplication: which training captions are duplicated, and how often.

`CaptionStats` maps each index row to a caption id and counts normalised captions (NFKC, lowercase,
collapsed whitespace, outer quotes and punctuation stripped). Saved as ``captions.parquet`` (caption_id,
caption, norm, count) and ``caption_rows.parquet`` (row, caption_id; −1 = no caption).
"""

from __future__ import annotations

import csv
import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import GuidanceKitError

__all__ = ["CaptionStats", "normalise_caption", "read_captions"]

_STRIP = string.punctuation + "\"'“”‘’«»` \t"
_PATH_KEYS = ("file", "file_name", "image")
_TEXT_KEYS = ("caption", "text")


def normalise_caption(text: str) -> str:
    """NFKC, lowercase, whitespace collapsed, outer quotes and punctuation stripped."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text).strip().strip(_STRIP).strip()


def _pick(row: dict, keys: Sequence[str], where: str) -> str:
    for key in keys:
        if key in row and row[key] is not None:
            return str(row[key])
    raise GuidanceKitError(f"{where}: needs one of the columns {list(keys)}")


def read_captions(path: str | Path) -> dict[str, str]:
    """``{relative image path: caption}`` from JSONL, CSV, TSV or parquet (columns file/file_name/image and
    caption/text), or from ``.txt`` sidecars in a folder (keyed by the image stem's path). Duplicate keys are
    an error naming their line numbers."""
    path = Path(path)
    rows: list[tuple[int, dict]] = []
    if path.is_dir():
        return {
            p.relative_to(path).with_suffix("").as_posix(): p.read_text().strip()
            for p in sorted(path.rglob("*.txt"))
        }
    if not path.is_file():
        raise GuidanceKitError(f"{path}: captions file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise GuidanceKitError(f"{path}:{n}: not valid JSON ({err.msg})") from err
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [(n, row) for n, row in enumerate(reader, 2)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(n, row) for n, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    else:
        raise GuidanceKitError(
            f"{path}: unknown captions format {suffix!r}; use .jsonl, .csv, .tsv, .parquet or a folder"
        )
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for n, row in rows:
        key = _pick(row, _PATH_KEYS, f"{path}:{n}")
        if key in out:
            raise GuidanceKitError(f"{path}: duplicate caption key {key!r} on lines {first[key]} and {n}")
        first[key] = n
        out[key] = _pick(row, _TEXT_KEYS, f"{path}:{n}")
    return out


class CaptionStats:
    """Captions of an index's rows with global duplicate counts.

    ``texts[i]``, ``norms[i]``, ``counts[i]``: caption id i's text, normalised text and number of rows whose
    normalised caption equals it; ``row_caption`` [N]: each row's caption id (−1 = none).
    """

    def __init__(
        self, texts: list[str], norms: list[str], counts: list[int], row_caption: torch.Tensor
    ) -> None:
        self.texts = texts
        self.norms = norms
        self.counts = torch.as_tensor(counts, dtype=torch.long)
        self.row_caption = torch.as_tensor(row_caption, dtype=torch.long)
        self.report: dict = {}

    @classmethod
    def build(cls, captions, index=None, out_path: str | Path | None = None) -> CaptionStats:
        """``captions``: a list of strings, one per index row (in row order), or a captions file joined to the
        index's items by relative path (needs ``index``). Writes ``captions.parquet`` into ``out_path``."""
        if isinstance(captions, (list, tuple)):
            per_row = [None if c is None else str(c) for c in captions]
            if index is not None and len(per_row) != len(index):
                raise GuidanceKitError(f"captions: {len(per_row)} captions for an index of {len(index)} rows")
        else:
            if index is None or not index.items:
                raise GuidanceKitError(
                    "captions file: pass the index it belongs to (its items give the image paths)"
                )
            table = read_captions(captions)
            per_row = []
            for item in index.items:
                key = item["path"]
                per_row.append(table.get(key, table.get(str(Path(key).with_suffix("")))))
        per_row = [c if c and c.strip() else None for c in per_row]
        norms_per_row = [None if c is None else normalise_caption(c) for c in per_row]
        counter = Counter(n for n in norms_per_row if n)
        ids: dict[str, int] = {}
        texts, norms = [], []
        row_caption = []
        for text, norm in zip(per_row, norms_per_row, strict=True):
            if not norm:
                row_caption.append(-1)
                continue
            if norm not in ids:
                ids[norm] = len(texts)
                texts.append(text)
                norms.append(norm)
            row_caption.append(ids[norm])
        stats = cls(texts, norms, [counter[n] for n in norms], torch.tensor(row_caption, dtype=torch.long))
        stats.report = {"rows": len(per_row), "missing_or_empty": sum(c is None for c in per_row)}
        if out_path is not None:
            stats.save(out_path)
        return stats

    def save(self, folder: str | Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "caption_id": list(range(len(self.texts))),
                "caption": self.texts,
                "norm": self.norms,
                "count": self.counts.tolist(),
            }
        )
        pq.write_table(table, folder / "captions.parquet")
        rows = pa.table({"row": list(range(len(self.row_caption))), "caption_id": self.row_caption.tolist()})
        pq.write_table(rows, folder / "caption_rows.parquet")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> CaptionStats:
        import pyarrow.parquet as pq

        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        files = [folder / "captions.parquet", folder / "caption_rows.parquet"]
        for file in files:
            if not file.is_file():
                raise GuidanceKitError(f"{file}: missing; build caption statistics with build-captions")
        table = pq.read_table(files[0]).to_pydict()
        rows = pq.read_table(files[1]).to_pydict()
        order = torch.as_tensor(rows["row"]).argsort()
        return cls(
            table["caption"], table["norm"], table["count"], torch.as_tensor(rows["caption_id"])[order]
        )

    def caption_of(self, row: int) -> str | None:
        cid = int(self.row_caption[row])
        return None if cid < 0 else self.texts[cid]

    def dup_caption(
        self, rows: torch.Tensor, min_count: int = 21, mode: str = "neighbourhood"
    ) -> list[str | None]:
        """Per query row set [B, K] (nearest first): y_N or None.

        ``"neighbourhood"``: the most frequent caption among the K neighbours, if it occurs ≥ ``min_count``
        times there; ``"nearest"``: the nearest neighbour's caption, if its global count is ≥ ``min_count``.
        """
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(len(rows), -1)
        ids = self.row_caption[rows.cpu()]
        out: list[str | None] = []
        for line in ids:
            if mode == "nearest":
                cid = int(line[0])
                out.append(self.texts[cid] if cid >= 0 and int(self.counts[cid]) >= min_count else None)
                continue
            valid = line[line >= 0]
            if not len(valid):
                out.append(None)
                continue
            values, counts = valid.unique(return_counts=True)
            best = int(counts.argmax())
            out.append(self.texts[int(values[best])] if int(counts[best]) >= min_count else None)
        return out
