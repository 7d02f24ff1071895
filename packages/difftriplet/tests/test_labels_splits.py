"""Label space, mapping file and the official split tables (§2.1, §4.2)."""

from __future__ import annotations

import numpy as np
import pytest

from difftriplet.errors import DiffTripletError
from difftriplet.labels import TripletSpace, ivtmetrics_bank
from difftriplet.splits import (
    CV_FOLDS,
    cholect45_crossval,
    cholect50_challenge,
    cholect50_crossval,
    cholect50_rdv,
)


def test_components_reproduce_the_bank(space):
    bank = ivtmetrics_bank()
    assert np.array_equal(bank[:, 4], 10 * bank[:, 1] + bank[:, 2])
    assert np.array_equal(bank[:, 5], 15 * bank[:, 1] + bank[:, 3])
    joint = space.components(np.eye(100, dtype=np.uint8))  # one triplet per frame
    assert joint.shape == (100, 131)
    for column, c in ((1, "i"), (2, "v"), (3, "t")):
        assert np.array_equal(joint[:, space.slices[c]].argmax(1), bank[:, column])
        assert np.array_equal(joint[:, space.slices[c]].sum(1), np.ones(100))
    assert np.array_equal(space.component_ids("iv")[space.index_of("iv")], bank[:, 4])
    assert np.array_equal(space.component_ids("it")[space.index_of("it")], bank[:, 5])
    assert (space.num_classes("iv"), space.num_classes("it")) == (26, 59)
    assert space.components(np.zeros((3, 100))).sum() == 0


def test_slices_matrices_and_names(space):
    assert space.slices == {
        "ivt": slice(0, 100),
        "i": slice(100, 106),
        "v": slice(106, 116),
        "t": slice(116, 131),
    }
    for c, n in (("i", 6), ("v", 10), ("t", 15)):
        matrix = space.matrices[f"M_{c}"]
        assert matrix.shape == (n, 100) and np.array_equal(matrix.sum(0), np.ones(100))
    assert space.triplet_names[94] == "grasper,null_verb,null_target"
    assert np.array_equal(ivtmetrics_bank()[94:, 1:4], np.c_[np.arange(6), np.full(6, 9), np.full(6, 14)])


def test_mapping_file_must_equal_the_bank(tmp_path):
    bank = ivtmetrics_bank()
    good = tmp_path / "label_mapping.txt"
    good.write_text("# IVT, I, V, T, IV, IT\n" + "".join(",".join(map(str, r)) + "\n" for r in bank))
    assert np.array_equal(TripletSpace.from_mapping_file(good).bank, bank)
    swapped = bank.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    swapped[:, 0] = np.arange(100)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(",".join(map(str, r)) + "\n" for r in swapped))
    with pytest.raises(
        DiffTripletError, match=r"bad.txt differs from the ivtmetrics bank in triplet rows \[3, 4\]"
    ):
        TripletSpace.from_mapping_file(bad)


def test_crossval_tables():
    fold1 = cholect50_crossval(1)
    assert fold1.test == tuple(f"VID{v:02d}" for v in CV_FOLDS[1])
    assert fold1.val == ("VID01", "VID56", "VID04", "VID13", "VID92")
    assert len(fold1.train) == 35 and fold1.train[:3] == ("VID80", "VID32", "VID05")
    assert cholect45_crossval(1).val == ("VID74", "VID01", "VID56", "VID04", "VID13")
    assert len(cholect45_crossval(1).train) == 31 and "VID111" not in cholect45_crossval(1).test
    for k in range(1, 6):
        s = cholect50_crossval(k)
        assert len(set(s.train) | set(s.val) | set(s.test)) == 50
    assert cholect50_crossval(5).val == ("VID75", "VID22", "VID49", "VID12", "VID110")
    with pytest.raises(DiffTripletError, match="fold"):
        cholect50_crossval(6)


def test_fixed_splits():
    challenge = cholect50_challenge()
    assert challenge.test == ("VID92", "VID96", "VID103", "VID110", "VID111")
    assert challenge.val == ("VID05", "VID18", "VID36", "VID65", "VID74") and len(challenge.train) == 40
    rdv = cholect50_rdv()
    assert (
        rdv.val == ("VID08", "VID12", "VID29", "VID50", "VID78")
        and len(rdv.test) == 10
        and len(rdv.train) == 35
    )
    assert not set(rdv.train) & (set(rdv.val) | set(rdv.test))
