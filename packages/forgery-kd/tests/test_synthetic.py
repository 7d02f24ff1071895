"""Spec §5 test 7: the synthetic forgery generator."""

import numpy as np
import pytest

from forgery_kd import DeepfakeBenchDataset, make_synthetic_forgeries
from forgery_kd.freq import dct_matrix, fad_band_masks
from forgery_kd.synthetic import MANIPULATIONS, _source, manipulate


def test_deterministic_for_a_fixed_seed(tmp_path):
    a = make_synthetic_forgeries(tmp_path / "a", {"train": 4, "val": 2, "test": 2}, frames=2, size=24, seed=7)
    b = make_synthetic_forgeries(tmp_path / "b", {"train": 4, "val": 2, "test": 2}, frames=2, size=24, seed=7)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.png"))
    assert len(files) == 2 * 8 * 2
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)
    assert (a.json_dir / "Synthetic.json").read_text() == (b.json_dir / "Synthetic.json").read_text()


def test_written_in_the_deepfakebench_layout(synthetic):
    ds = DeepfakeBenchDataset(
        synthetic.json_dir, "Synthetic", "test", frame_num=32, rgb_root=synthetic.root, img_size=32
    )
    assert len(ds) == 6 * 2 and sum(ds.labels) == 3 * 2
    assert set(ds.kinds) >= {"Synth_real", "Synth_blend"}


@pytest.mark.parametrize("kind", MANIPULATIONS)
def test_masks_are_non_empty_and_outside_is_unchanged(kind):
    rng = np.random.default_rng(1)
    image, donor = _source(rng, 48), _source(rng, 48)
    fake, mask = manipulate(image, kind, rng, 0.5, donor=donor)
    assert mask.shape == (48, 48) and mask.max() > 0
    assert not np.allclose(fake[mask > 0], image[mask > 0])
    if kind in ("splice", "blend"):
        np.testing.assert_array_equal(fake[mask == 0], image[mask == 0])


@pytest.mark.parametrize("seed", range(4))
def test_freq_raises_high_band_dct_energy(seed):
    rng = np.random.default_rng(seed)
    image = _source(rng, 64)
    fake, _ = manipulate(image, "freq", rng, 0.5)
    d = dct_matrix(64).numpy().astype(np.float64)
    low, _, high, _ = fad_band_masks(64).numpy()

    def energy(x, band):
        return sum(((d @ x[..., c] @ d.T) ** 2 * band).sum() for c in range(3))

    assert energy(fake, high) > energy(image, high)
    added = fake - image
    assert energy(added, high) > energy(added, low)  # the artefact lives mostly in the high band
