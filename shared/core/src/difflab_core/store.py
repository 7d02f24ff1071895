"""Append-only JSONL result store with crash-safe resume, and run-config fingerprints.

A run writes one JSON object per finished work item to ``{directory}/{name}.jsonl``; under data-parallel
launch each rank writes its own shard ``{name}.rank{r}.jsonl`` and the main process folds the shards into
the main file with ``ResultStore.merge()`` at the end. Reopening a store skips every item already recorded,
in any shard, so an interrupted run resumes where it stopped::

    store = ResultStore(out_dir, rank=rank)
    for item in items:
        if store.done(item.id):
            continue
        store.append({"key": item.id, "score": score(item)})

``write_run_config`` guards a results folder against being resumed with a different configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from difflab_core.errors import DifflabError
from difflab_core.report import atomic_write_text, to_jsonable, write_json

__all__ = ["Key", "ResultStore", "cached_stage", "fingerprint", "write_run_config"]

logger = logging.getLogger(__name__)

Key = str | int
"""A record key: a string or an integer (booleans are rejected)."""


def _check_key(value: Any, where: str, key: str) -> Key:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DifflabError(
            f"{where}: the key field {key!r} must be a string or an integer, got {type(value).__name__} {value!r}"
        )
    return value


def _read_jsonl(path: Path, key: str) -> tuple[list[dict[str, Any]], int | None, bool]:
    """Parse ``path``.

    Returns ``(records, torn_at, needs_newline)``: ``torn_at`` is the byte offset of an unparsable last
    line (dropped) or None; ``needs_newline`` is True when the file's last record lacks its line end.
    A bad line that is not the last raises ``DifflabError`` naming file and line number.
    """
    data = path.read_bytes()
    segments = data.split(b"\n")
    starts = []
    pos = 0
    for seg in segments:
        starts.append(pos)
        pos += len(seg) + 1
    content = [i for i, seg in enumerate(segments) if seg.strip()]
    last = content[-1] if content else -1
    records: list[dict[str, Any]] = []
    torn_at: int | None = None
    for i in content:
        try:
            rec = json.loads(segments[i].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if i == last:
                torn_at = starts[i]
                logger.warning("%s: dropping unparsable last line %d (interrupted write?)", path, i + 1)
                break
            raise DifflabError(
                f"{path}: line {i + 1} is not valid JSON ({exc}); only a torn last line is repaired "
                "automatically, so fix or delete that line by hand"
            ) from exc
        if not isinstance(rec, dict):
            raise DifflabError(
                f"{path}: line {i + 1} is a JSON {type(rec).__name__}, not an object; delete it"
            )
        if key not in rec:
            raise DifflabError(
                f"{path}: line {i + 1} has no key field {key!r}; open the store with the key= its records use"
            )
        _check_key(rec[key], f"{path}: line {i + 1}", key)
        records.append(rec)
    needs_newline = torn_at is None and last >= 0 and not data.endswith(b"\n")
    return records, torn_at, needs_newline


class ResultStore:
    """Append-only JSONL records keyed by ``record[key]``, resumable after a crash.

    Args:
        directory: folder of the store (created if missing).
        name: file stem; records live in ``{name}.jsonl`` or, with ``rank``, ``{name}.rank{rank}.jsonl``.
        key: the record field that identifies a work item (string or integer values).
        rank: data-parallel rank writing its own shard, or None for the main file.

    On open the main file and every rank shard of ``name`` are read, so ``done`` sees all finished items.
    An unparsable *last* line (a write cut short by a crash) is dropped, and cut off this store's own
    file so later appends stay valid JSONL; a bad line anywhere else raises ``DifflabError``.
    A key recorded twice (possible only across shards) counts once: the first occurrence wins.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = "results",
        key: str = "key",
        rank: int | None = None,
    ) -> None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DifflabError(f"ResultStore: name must be a plain file stem, got {name!r}")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise DifflabError(f"ResultStore: rank must be None or an integer >= 0, got {rank!r}")
        self.directory = Path(directory)
        self.name = name
        self.key = key
        self.rank = rank
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load(repair_own=True)

    # ------------------------------------------------------------------ paths

    @property
    def main_path(self) -> Path:
        """``{directory}/{name}.jsonl``."""
        return self.directory / f"{self.name}.jsonl"

    @property
    def path(self) -> Path:
        """The file this store appends to (main file or this rank's shard)."""
        if self.rank is None:
            return self.main_path
        return self.directory / f"{self.name}.rank{self.rank}.jsonl"

    def _shards(self) -> dict[int, Path]:
        pat = re.compile(rf"^{re.escape(self.name)}\.rank(0|[1-9]\d*)\.jsonl$")
        found = {}
        for p in self.directory.iterdir():
            m = pat.match(p.name)
            if m and p.is_file():
                found[int(m.group(1))] = p
        return found

    def shard_paths(self) -> list[Path]:
        """Existing rank shards of ``name``, in rank order."""
        shards = self._shards()
        return [shards[r] for r in sorted(shards)]

    def _file_order(self) -> list[Path]:
        shards = self._shards()
        if self.rank is not None:
            shards.setdefault(self.rank, self.path)
        return [self.main_path, *(shards[r] for r in sorted(shards))]

    # ------------------------------------------------------------------ loading

    def _load(self, *, repair_own: bool) -> None:
        self._by_file: dict[Path, list[dict[str, Any]]] = {}
        self._keys: set[Key] = set()
        for p in self._file_order():
            recs: list[dict[str, Any]] = []
            if p.exists():
                recs, torn_at, needs_newline = _read_jsonl(p, self.key)
                if repair_own and p == self.path:
                    self._repair(p, torn_at, needs_newline)
            self._by_file[p] = recs
            self._keys.update(r[self.key] for r in recs)

    @staticmethod
    def _repair(path: Path, torn_at: int | None, needs_newline: bool) -> None:
        if torn_at is None and not needs_newline:
            return
        with open(path, "r+b") as f:
            if torn_at is not None:
                f.truncate(torn_at)
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ queries

    def done(self, key: Key) -> bool:
        """True if a record with this key exists in the main file or any shard."""
        return key in self._keys

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def records(self) -> list[dict[str, Any]]:
        """All records, main file first, then shards by rank; one per key (first occurrence)."""
        seen: set[Key] = set()
        out = []
        for recs in self._by_file.values():
            for r in recs:
                k = r[self.key]
                if k not in seen:
                    seen.add(k)
                    out.append(r)
        return out

    def keys(self) -> list[Key]:
        """Keys of ``records()``, in the same order."""
        return [r[self.key] for r in self.records()]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, records={len(self)})"

    # ------------------------------------------------------------------ writing

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line, then flush and fsync.

        ``record`` must hold the key field, with a key not yet done. numpy / torch values, Paths and
        dataclasses are converted as by ``report.to_jsonable``; the stored record is the JSON round trip.
        """
        if not isinstance(record, Mapping):
            raise DifflabError(f"ResultStore.append: record must be a dict, got {type(record).__name__}")
        if self.key not in record:
            raise DifflabError(
                f"ResultStore.append: record has no key field {self.key!r} (fields: {sorted(map(str, record))}); "
                f"add it or open the store with key=<field>"
            )
        rec = to_jsonable(dict(record))
        k = _check_key(rec[self.key], "ResultStore.append", self.key)
        if k in self._keys:
            raise DifflabError(
                f"ResultStore.append: key {k!r} is already recorded in {self.directory}; check done(key) before "
                "computing an item, or start over with a new results folder"
            )
        line = json.dumps(rec, ensure_ascii=False)
        stored = json.loads(line)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._by_file.setdefault(self.path, []).append(stored)
        self._keys.add(k)

    def merge(self) -> Path:
        """Fold every rank shard into the main file and delete the shards (main process only).

        Files are re-read from disk first. Records already in the main file stay; shard records are added
        in rank order, skipping keys seen before. The main file is replaced atomically before the
        shards are removed, so an interrupted merge can simply be run again. Returns the main path.
        """
        if self.rank is not None:
            raise DifflabError(
                f"ResultStore.merge: this store writes the rank {self.rank} shard; merge from the main process "
                f"with ResultStore({str(self.directory)!r}, name={self.name!r}, rank=None)"
            )
        self._load(repair_own=True)
        shards = self.shard_paths()
        if shards:
            merged = self.records()
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
            atomic_write_text(self.main_path, text)
            for p in shards:
                p.unlink()
            self._load(repair_own=False)
        return self.main_path


# ---------------------------------------------------------------------------------------- run configs


def fingerprint(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces).

    ``obj`` may hold anything ``report.to_jsonable`` accepts; tuples hash like lists, dict keys as strings.
    """
    plain = json.loads(json.dumps(to_jsonable(obj)))
    canon = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def _move_aside(directory: Path) -> Path | None:
    entries = [p for p in directory.iterdir() if not p.name.startswith("previous-")]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = directory / f"previous-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = directory / f"previous-{stamp}-{n}"
    dest.mkdir()
    for p in entries:
        os.replace(p, dest / p.name)
    logger.info("moved the previous run in %s aside to %s", directory, dest)
    return dest


def write_run_config(
    directory: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    new_run: bool = False,
) -> Path:
    """Write ``{directory}/config.json`` and refuse to mix results of different configurations.

    The written config carries a ``"fingerprint"``: ``config["fingerprint"]`` if given (to fingerprint only
    the settings that change results), else ``fingerprint(config)``. If ``config.json`` already exists with
    another fingerprint, ``DifflabError`` is raised, unless ``new_run=True``: then everything in
    ``directory`` (except earlier ``previous-*`` folders) is first moved into ``directory/previous-<timestamp>/``.
    ``new_run=True`` always starts over this way, even when the fingerprints match. Returns the config path.
    """
    if not isinstance(config, Mapping):
        raise DifflabError(f"write_run_config: config must be a dict, got {type(config).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = to_jsonable(dict(config))
    if cfg.get("fingerprint") is None:
        cfg["fingerprint"] = fingerprint(cfg)
    path = directory / "config.json"
    if new_run:
        _move_aside(directory)
    elif path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DifflabError(
                f"{path} is not valid JSON ({exc}); pass new_run=True / --new-run to start over"
            ) from exc
        old_fp = old.get("fingerprint") if isinstance(old, dict) else None
        if old_fp != cfg["fingerprint"]:
            raise DifflabError(
                f"{path} holds a run with fingerprint {old_fp!r}, but this configuration has fingerprint "
                f"{cfg['fingerprint']!r}; resume with the same settings, use another output folder, or pass "
                "new_run=True / --new-run to start over (the old results are moved to previous-<timestamp>/)"
            )
    write_json(path, cfg)
    return path


def cached_stage(
    cache_dir: str | os.PathLike[str],
    name: str,
    config: Mapping[str, Any],
    compute: Callable[[Path], Mapping[str, Any]],
) -> dict[str, Any]:
    """Run one stage of a multi-stage job once per configuration, and reuse its result afterwards.

    The stage lives in ``cache_dir/<name>-<fingerprint(config)>/``: ``compute(stage_dir)`` may write any files
    there (grids, weights) and returns a JSON-able dict, stored last (atomically) as ``result.json``. A stage
    killed before that is recomputed; a finished one is read back without calling ``compute``.
    """
    stage = Path(cache_dir) / f"{name}-{fingerprint(config)}"
    done = stage / "result.json"
    if done.is_file():
        try:
            return json.loads(done.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("%s is unreadable; recomputing the stage", done)
    stage.mkdir(parents=True, exist_ok=True)
    write_json(stage / "config.json", dict(config))
    result = to_jsonable(dict(compute(stage)))
    write_json(done, result)
    return result
