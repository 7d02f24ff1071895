"""The CholecT50 triplet label space (§2.1): the ivtmetrics mapping bank, components and association matrices.

A frame's joint vector is ``[ivt (100); i (6); v (10); t (15)]`` (131 channels). Components are derived
from the triplets through the bank ``B`` (100×6: IVT, I, V, T, IV, IT with IV = 10·I + V, IT = 15·I + T):
``y_X[x] = max_{c: X(c)=x} y_ivt[c]``. IV and IT are re-indexed contiguously in sorted ID order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DiffTripletError

__all__ = [
    "BANK_COLUMNS",
    "COMPONENTS",
    "INSTRUMENTS",
    "TARGETS",
    "VERBS",
    "TripletSpace",
    "ivtmetrics_bank",
    "read_mapping_file",
]

COMPONENTS = ("ivt", "i", "v", "t", "iv", "it")
BANK_COLUMNS = {name: column for column, name in enumerate(COMPONENTS)}
DEFAULT_LAYOUT = ("ivt", "i", "v", "t")
INSTRUMENTS = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
VERBS = (
    "grasp", "retract", "dissect", "coagulate", "clip", "cut", "aspirate", "irrigate", "pack", "null_verb",
)  # fmt: skip
TARGETS = (
    "gallbladder", "cystic_plate", "cystic_duct", "cystic_artery", "cystic_pedicle", "blood_vessel",
    "fluid", "abdominal_wall_cavity", "liver", "adhesion", "omentum", "peritoneum", "gut",
    "specimen_bag", "null_target",
)  # fmt: skip


def ivtmetrics_bank() -> np.ndarray:
    """The 100×6 mapping table ivtmetrics uses (``Disentangle.map_file``), int64."""
    from ivtmetrics.disentangle import Disentangle

    return np.asarray(Disentangle().bank, dtype=np.int64)


def read_mapping_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a CholecT50 ``label_mapping.txt`` (6 comma-separated ints per line, ``#`` comments) to 100×6."""
    path = Path(path)
    if not path.is_file():
        raise DiffTripletError(f"mapping file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError as err:
            raise DiffTripletError(
                f"{path}, line {number}: {line!r} is not 6 comma-separated integers"
            ) from err
        if len(values) != 6:
            raise DiffTripletError(
                f"{path}, line {number}: expected 6 columns (IVT,I,V,T,IV,IT), got {len(values)}"
            )
        rows.append(values)
    if len(rows) != 100:
        raise DiffTripletError(f"{path}: expected 100 triplet rows, got {len(rows)}")
    return np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TripletSpace:
    """The label space: bank, names, the joint-vector layout and the association matrices.

    ``target_components`` is the joint layout (default ``ivt, i, v, t`` → 131 channels).
    """

    bank: np.ndarray
    instrument_names: tuple[str, ...] = INSTRUMENTS
    verb_names: tuple[str, ...] = VERBS
    target_names: tuple[str, ...] = TARGETS
    target_components: tuple[str, ...] = field(default=DEFAULT_LAYOUT)

    def __post_init__(self) -> None:
        bank = np.asarray(self.bank, dtype=np.int64)
        if bank.shape != (100, 6):
            raise DiffTripletError(f"the triplet bank must be 100×6 (IVT,I,V,T,IV,IT), got {bank.shape}")
        if not np.array_equal(bank[:, 0], np.arange(100)):
            raise DiffTripletError("the bank's IVT column must list 0..99 in order")
        if not (np.array_equal(bank[:, 4], 10 * bank[:, 1] + bank[:, 2])
                and np.array_equal(bank[:, 5], 15 * bank[:, 1] + bank[:, 3])):  # fmt: skip
            raise DiffTripletError("the bank violates IV = 10·I + V or IT = 15·I + T")
        layout = tuple(self.target_components)
        if not layout or layout[0] != "ivt" or len(set(layout)) != len(layout):
            raise DiffTripletError(f"target_components must start with 'ivt' without repeats, got {layout}")
        unknown = [c for c in layout if c not in COMPONENTS]
        if unknown:
            raise DiffTripletError(f"target_components {unknown} unknown; choose from {COMPONENTS}")
        object.__setattr__(self, "bank", bank)
        object.__setattr__(self, "target_components", layout)

    @classmethod
    def from_ivtmetrics(cls, target_components: Sequence[str] = DEFAULT_LAYOUT) -> TripletSpace:
        """The space of ivtmetrics' built-in bank."""
        return cls(ivtmetrics_bank(), target_components=tuple(target_components))

    @classmethod
    def from_mapping_file(
        cls, path: str | os.PathLike[str], target_components: Sequence[str] = DEFAULT_LAYOUT
    ) -> TripletSpace:
        """The space of a ``label_mapping.txt``; it must equal the ivtmetrics bank (§4.1)."""
        bank = read_mapping_file(path)
        reference = ivtmetrics_bank()
        if not np.array_equal(bank, reference):
            rows = np.flatnonzero((bank != reference).any(axis=1)).tolist()
            raise DiffTripletError(
                f"{path} differs from the ivtmetrics bank in triplet rows {rows[:10]}"
                f"{' ...' if len(rows) > 10 else ''}; the components would silently disagree with the "
                "evaluator. Use the official CholecT50 mapping."
            )
        return cls(bank, target_components=tuple(target_components))

    # ---------------------------------------------------------------- components

    def component_ids(self, component: str) -> np.ndarray:
        """Sorted distinct IDs of a component (``iv``: 26 values, ``it``: 59)."""
        return np.unique(self.bank[:, self._column(component)])

    def index_of(self, component: str) -> np.ndarray:
        """``(100,)`` contiguous class index of every triplet's ``component``."""
        column = self.bank[:, self._column(component)]
        return np.searchsorted(self.component_ids(component), column)

    def num_classes(self, component: str) -> int:
        return len(self.component_ids(component))

    def matrix(self, component: str) -> np.ndarray:
        """Association matrix ``M_X (n_X, 100)``: ``M_X[x, c] = 1`` iff ``X(c) = x``."""
        out = np.zeros((self.num_classes(component), 100), dtype=np.float32)
        out[self.index_of(component), np.arange(100)] = 1.0
        return out

    @cached_property
    def matrices(self) -> dict[str, np.ndarray]:
        """``{"M_i", "M_v", "M_t", "M_iv", "M_it"}``."""
        return {f"M_{c}": self.matrix(c) for c in COMPONENTS[1:]}

    @cached_property
    def slices(self) -> dict[str, slice]:
        """Channel slice of each component in the joint vector (``ivt`` 0–99, ``i`` 100–105 ...)."""
        out, start = {}, 0
        for c in self.target_components:
            out[c] = slice(start, start + self.num_classes(c))
            start += self.num_classes(c)
        return out

    @property
    def num_channels(self) -> int:
        """Channels of the joint vector (131 for the default layout)."""
        return self.slices[self.target_components[-1]].stop

    @cached_property
    def _groups(self) -> dict[str, list[np.ndarray]]:
        return {
            c: [np.flatnonzero(self.index_of(c) == j) for j in range(self.num_classes(c))] for c in COMPONENTS
        }

    def decompose(self, scores: np.ndarray, component: str) -> np.ndarray:
        """Triplet scores or labels ``(T, 100)`` -> ``(T, n_X)``: the max over the mapped triplets."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != 100:
            raise DiffTripletError(f"decompose expects (frames, 100) triplet scores, got {scores.shape}")
        if component == "ivt":
            return scores
        groups = self._groups[component] if component in COMPONENTS else None
        if groups is None:
            raise DiffTripletError(f"unknown component {component!r}; choose from {COMPONENTS}")
        out = np.empty((scores.shape[0], len(groups)), dtype=scores.dtype)
        for j, columns in enumerate(groups):
            out[:, j] = scores[:, columns].max(axis=1)
        return out

    def components(self, y_ivt: np.ndarray) -> np.ndarray:
        """Triplet labels ``(T, 100)`` -> the joint vector ``(T, num_channels)`` of the layout."""
        return np.concatenate([self.decompose(y_ivt, c) for c in self.target_components], axis=1)

    # --------------------------------------------------------------------- names

    def names(self, component: str) -> list[str]:
        """Class names of a component, in its contiguous index order."""
        ids = self.component_ids(component)
        if component == "i":
            return [self.instrument_names[x] for x in ids]
        if component == "v":
            return [self.verb_names[x] for x in ids]
        if component == "t":
            return [self.target_names[x] for x in ids]
        if component == "ivt":
            return [
                f"{self.instrument_names[i]},{self.verb_names[v]},{self.target_names[t]}"
                for _, i, v, t, _, _ in self.bank
            ]
        first = {"iv": self.verb_names, "it": self.target_names}[component]
        size = {"iv": 10, "it": 15}[component]
        return [f"{self.instrument_names[x // size]},{first[x % size]}" for x in ids]

    @property
    def triplet_names(self) -> list[str]:
        return self.names("ivt")

    def _column(self, component: str) -> int:
        if component not in BANK_COLUMNS:
            raise DiffTripletError(f"unknown component {component!r}; choose from {COMPONENTS}")
        return BANK_COLUMNS[component]
