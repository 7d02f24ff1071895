"""Prompt lists, template masks and ground-truth images from local files (spec §4).

Prompt files: JSONL (``caption`` | ``prompt`` | ``text`` | ``Caption``; optional ``index``, ``url``, ``label``,
``type``, ``caption1..caption25``, ``gen_seeds``), a text list (one prompt per line), a CSV (``;`` or ``,``,
caption column found by name) or a Webster parquet (``caption``, ``overfit_type``; needs the ``parquet`` extra).

Kinds: ``local`` = TV/TM, ``global`` = MV/RV/VM, ``none`` = label 0 (or type N); a memorized record without a
type has kind ``unknown`` and counts only in "all".
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MemLocateError

__all__ = [
    "CAPTION_FIELDS",
    "PromptRecord",
    "image_files",
    "kind_of",
    "load_masks",
    "load_prompts",
    "load_reference_images",
    "load_run",
    "read_image",
]

CAPTION_FIELDS = ("caption", "prompt", "text", "Caption")
KEY_FIELDS = ("index", "Index", "key")
LOCAL_TYPES = {"TV", "TM"}
GLOBAL_TYPES = {"MV", "RV", "VM"}
NONE_TYPES = {"N"}
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class PromptRecord:
    """One prompt to audit.

    ``key``: unique string (the file's ``index``, else the 1-based line number); ``label``: 1 memorized, 0 not,
    None unknown; ``type``: MV/RV/TV/N/VM/TM or None; ``kind``: global | local | none | unknown;
    ``paraphrases``: ``caption1..caption25`` in order; ``gen_seeds``: [[seed, template_idx], …];
    ``source``: "file:line" it came from.
    """

    key: str
    caption: str
    label: int | None = None
    type: str | None = None
    kind: str = "unknown"
    url: str | None = None
    paraphrases: list[str] = field(default_factory=list)
    gen_seeds: list[list[int]] = field(default_factory=list)
    source: str = ""


def kind_of(label: int | None, type_: str | None) -> str:
    """Kind from a record's type and label (spec §4)."""
    t = (type_ or "").upper()
    if t in LOCAL_TYPES:
        return "local"
    if t in GLOBAL_TYPES:
        return "global"
    if t in NONE_TYPES or label == 0:
        return "none"
    return "unknown"


def _read_text(path: Path) -> str:
    if not path.exists():
        raise MemLocateError(f"{path}: prompt file not found")
    if not path.is_file():
        raise MemLocateError(f"{path}: not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MemLocateError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from err
    if not text.strip():
        raise MemLocateError(f"{path}: the file is empty; give at least one prompt")
    return text


def _label_of(raw: Any, where: str) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return int(raw)
    try:
        value = int(float(raw))
    except (TypeError, ValueError) as err:
        raise MemLocateError(f"{where}: label {raw!r} is not 0 or 1") from err
    if value not in (0, 1):
        raise MemLocateError(f"{where}: label {raw!r} is not 0 or 1")
    return value


def _record(row: dict[str, Any], line: int, path: Path, default_label: int | None) -> PromptRecord:
    where = f"{path}: line {line}"
    caption_field = next((f for f in CAPTION_FIELDS if f in row), None)
    if caption_field is None:
        raise MemLocateError(
            f"{where}: no caption field; name it one of {', '.join(CAPTION_FIELDS)} (fields: {sorted(row)})"
        )
    caption = row[caption_field]
    if not isinstance(caption, str) or not caption.strip():
        raise MemLocateError(f"{where}: the caption is empty")
    key_field = next((f for f in KEY_FIELDS if f in row and row[f] not in (None, "")), None)
    key = str(row[key_field]) if key_field else str(line)
    type_ = row.get("type", row.get("overfit_type"))
    type_ = str(type_).strip() if type_ not in (None, "") else None
    label = _label_of(row.get("label"), where)
    if label is None and type_ is not None:
        label = 0 if type_.upper() in NONE_TYPES else 1
    if label is None:
        label = default_label
    paraphrases = [str(row[f"caption{i}"]) for i in range(1, 26) if row.get(f"caption{i}")]
    gen_seeds = row.get("gen_seeds") or []
    if not isinstance(gen_seeds, list):
        raise MemLocateError(f"{where}: gen_seeds must be a list of [seed, template_idx] pairs")
    url = row.get("url", row.get("URL"))
    return PromptRecord(
        key=key,
        caption=caption.strip(),
        label=label,
        type=type_,
        kind=kind_of(label, type_),
        url=str(url) if url else None,
        paraphrases=paraphrases,
        gen_seeds=[list(s) if isinstance(s, (list, tuple)) else [int(s)] for s in gen_seeds],
        source=f"{path}:{line}",
    )


def _rows_jsonl(text: str, path: Path):
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MemLocateError(f"{path}: line {i} is not valid JSON ({err.msg})") from err
        if isinstance(row, str):
            row = {"caption": row}
        if not isinstance(row, dict):
            raise MemLocateError(f"{path}: line {i} is a JSON {type(row).__name__}, not an object")
        yield i, row


def _rows_txt(text: str, path: Path):
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield i, {"caption": line}


def _rows_csv(text: str, path: Path):
    first = text.splitlines()[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or not any(f in reader.fieldnames for f in CAPTION_FIELDS):
        raise MemLocateError(
            f"{path}: line 1: the CSV header has no caption column; name it one of {', '.join(CAPTION_FIELDS)} "
            f"(header: {reader.fieldnames})"
        )
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        yield line, {k: v for k, v in row.items() if k is not None}


def _rows_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MemLocateError(
            f"{path}: reading parquet needs pyarrow; install the extra: pip install 'mem-locate[parquet]'"
        ) from err
    table = pq.read_table(path).to_pylist()
    if not table:
        raise MemLocateError(f"{path}: the file is empty; give at least one prompt")
    yield from enumerate(table, start=1)


def load_prompts(path: str | os.PathLike[str], *, label: int | None = None) -> list[PromptRecord]:
    """Read prompts from a ``.jsonl``, ``.txt``, ``.csv`` or ``.parquet`` file.

    ``label`` is the default for records that carry neither ``label`` nor ``type`` (e.g. 1 for a list of
    memorized prompts, 0 for a non-memorized list). Keys must be unique; a duplicate names both lines.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if label is not None:
        label = _label_of(label, "load_prompts(label=)")
    if suffix == ".parquet":
        if not path.is_file():
            raise MemLocateError(f"{path}: prompt file not found")
        rows = _rows_parquet(path)
    else:
        text = _read_text(path)
        if suffix in (".jsonl", ".json", ".ndjson"):
            rows = _rows_jsonl(text, path)
        elif suffix == ".csv":
            rows = _rows_csv(text, path)
        elif suffix in (".txt", ".lst", ""):
            rows = _rows_txt(text, path)
        else:
            raise MemLocateError(
                f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .txt, .csv or .parquet"
            )
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        rec = _record(row, line, path, label)
        if rec.key in seen:
            raise MemLocateError(
                f"{path}: duplicate key {rec.key!r} on lines {seen[rec.key]} and {line}; keys (the 'index' field) "
                "must be unique"
            )
        seen[rec.key] = line
        records.append(rec)
    if not records:
        raise MemLocateError(f"{path}: the file holds no prompts")
    return records


# ---------------------------------------------------------------------------------------------- images and masks
def read_image(path: str | os.PathLike[str], *, gray: bool = False) -> torch.Tensor:
    """An image file as float [3, H, W] (or [H, W] with ``gray``) in [0, 1]; errors name the file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise MemLocateError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    except OSError as err:
        raise MemLocateError(f"{path}: cannot read the image ({err})") from err
    t = torch.from_numpy(arr)
    return t if gray else t.permute(2, 0, 1).contiguous()


def _missing_error(what: str, root: Path, missing: list[str]) -> MemLocateError:
    shown = ", ".join(missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return MemLocateError(f"{root}: no {what} for {len(missing)} key(s): {shown}{more}")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The PNG/JPEG files of ``folder``, sorted (possibly none); raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MemLocateError(f"{folder}: image folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT and p.is_file())


def load_masks(
    root: str | os.PathLike[str], keys: list[str] | None = None
) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """Template masks, binarised at 0.5, as float {0,1} tensors [H, W] (any size).

    Layouts (``root`` may be the folder holding ``masks/``/``templates/`` or ``masks/`` itself):
    ``masks/{key}.png`` → ``{key: mask}``; ``masks/{key}/{seed}.png`` → ``{key: {seed: mask}}``;
    ``templates/metadata.csv|parquet`` with ``img_file``, ``mask_file`` → key = stem of ``img_file``.
    ``keys``: the keys that must be present (missing ones are listed: the first 10 plus a count).
    """
    root = Path(root)
    if not root.is_dir():
        raise MemLocateError(f"{root}: mask folder not found")
    found: dict[str, Any] = {}
    meta = next(
        (
            root / "templates" / f"metadata.{ext}"
            for ext in ("csv", "parquet")
            if (root / "templates" / f"metadata.{ext}").is_file()
        ),
        None,
    )
    if meta is not None:
        if meta.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(_read_text(meta))))
        else:
            rows = [row for _, row in _rows_parquet(meta)]
        for i, row in enumerate(rows, start=2):
            if "img_file" not in row or "mask_file" not in row:
                raise MemLocateError(f"{meta}: line {i} needs the columns img_file and mask_file")
            mask_path = meta.parent / str(row["mask_file"])
            if not mask_path.is_file():
                raise MemLocateError(f"{meta}: line {i}: mask file {mask_path} not found")
            found[Path(str(row["img_file"])).stem] = (read_image(mask_path, gray=True) > 0.5).float()
    folder = root / "masks" if (root / "masks").is_dir() else root
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in _IMAGE_EXT:
            found[entry.stem] = (read_image(entry, gray=True) > 0.5).float()
        elif entry.is_dir():
            per_seed = {p.stem: (read_image(p, gray=True) > 0.5).float() for p in image_files(entry)}
            if per_seed:
                found[entry.name] = per_seed
    if keys is not None:
        missing = [str(k) for k in keys if str(k) not in found]
        if missing:
            raise _missing_error("mask", root, missing)
        found = {str(k): found[str(k)] for k in keys}
    if not found:
        raise MemLocateError(
            f"{root}: no mask images found (expected masks/{{key}}.png or masks/{{key}}/{{seed}}.png)"
        )
    return found


def load_reference_images(
    root: str | os.PathLike[str], keys: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Ground-truth images ``gt_images/{key}/*.png|jpg`` → ``{key: [R, 3, H, W]}`` in [0, 1].

    ``root`` may hold ``gt_images/`` or be it. References of one key are resized (bilinear) to the first's size.
    """
    root = Path(root)
    folder = root / "gt_images" if (root / "gt_images").is_dir() else root
    if not folder.is_dir():
        raise MemLocateError(f"{root}: reference image folder not found")
    found: dict[str, torch.Tensor] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            continue
        paths = image_files(entry)
        if not paths:
            continue
        imgs = [read_image(p, gray=False) for p in paths]
        size = imgs[0].shape[-2:]
        imgs = [
            im
            if im.shape[-2:] == size
            else torch.nn.functional.interpolate(
                im[None], size=tuple(size), mode="bilinear", align_corners=False
            )[0]
            for im in imgs
        ]
        found[entry.name] = torch.stack(imgs)
    if keys is not None:
        missing = [str(k) for k in keys if str(k) not in found]
        if missing:
            raise _missing_error("reference images", folder, missing)
        found = {str(k): found[str(k)] for k in keys}
    if not found:
        raise MemLocateError(f"{folder}: no reference images found (expected gt_images/{{key}}/*.png)")
    return found


@dataclass
class RunData:
    """An audit run directory read back: ``config``, ``records`` (results.jsonl), and ``map(key)``."""

    directory: Path
    config: dict
    records: list[dict]

    def map(self, key: str) -> torch.Tensor:
        """The stored BE maps of ``key``: [n, h, w] fp32."""
        from safetensors.torch import load_file

        rec = next((r for r in self.records if str(r["key"]) == str(key)), None)
        if rec is None or not rec.get("map_file"):
            raise MemLocateError(f"{self.directory}: no stored map for key {key!r}")
        path = self.directory / rec["map_file"]
        if not path.is_file():
            raise MemLocateError(f"{path}: map file of key {key!r} is missing")
        return load_file(str(path))["be_map"].float()

    def images(self, key: str) -> torch.Tensor:
        """The generated images of ``key`` saved by an audit with ``save_images``: [n, 3, H, W] in [0, 1]."""
        rec = next((r for r in self.records if str(r["key"]) == str(key)), None)
        if rec is None or not rec.get("image_files"):
            raise MemLocateError(
                f"{self.directory}: no saved images for key {key!r} (audit with save_images)"
            )
        missing = [f for f in rec["image_files"] if not (self.directory / f).is_file()]
        if missing:
            raise MemLocateError(f"{self.directory}: image files of key {key!r} are missing: {missing}")
        return torch.stack([read_image(self.directory / f) for f in rec["image_files"]])


def load_run(directory: str | os.PathLike[str]) -> RunData:
    """Read an audit run folder (``config.json``, ``results.jsonl`` and rank shards)."""
    from difflab_core.store import ResultStore

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise MemLocateError(f"{directory}: not an audit run folder (config.json is missing)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MemLocateError(f"{cfg_path}: not valid JSON ({err.msg})") from err
    from .errors import core_errors

    with core_errors(str(directory)):
        records = ResultStore(directory).records()
    return RunData(directory, config, records)
