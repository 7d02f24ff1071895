"""Collage rendering, the grid graph and the grid symmetries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import (
    GridSpec,
    all_permutations,
    canonical,
    grid_adjacency,
    grid_graph,
    normalized_adjacency,
    render_collage,
    symmetry_group,
)

COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (128, 0, 0),
    (0, 128, 0),
    (0, 0, 128),
    (90, 90, 90),
]


def _solid(i: int, size=(40, 40)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[i])


@pytest.mark.parametrize(
    ("rows", "cols", "cell", "size"),
    [(2, 2, 254, (512, 512)), (3, 3, 168, (512, 512)), (2, 5, 99, (511, 202))],
)
def test_sizes_and_cell_centres(rows, cols, cell, size):
    spec = GridSpec(rows, cols)
    k = rows * cols
    perm = np.random.default_rng(0).permutation(k)
    image, layout = render_collage([_solid(i) for i in range(k)], perm, spec)
    assert spec.cell_size == cell and image.size == size
    arr = np.asarray(image)
    for c, (x0, y0, x1, y1) in enumerate(layout.boxes):
        assert tuple(arr[(y0 + y1) // 2, (x0 + x1) // 2]) == COLOURS[perm[c]]
    assert tuple(arr[0, cell + 1]) == (255, 255, 255)  # the gap


def test_index_overlay_changes_only_corner_boxes():
    spec = GridSpec(3, 3)
    plain, layout = render_collage([_solid(i) for i in range(9)], range(9), spec)
    marked, _ = render_collage([_solid(i) for i in range(9)], range(9), GridSpec(3, 3, index_overlay=True))
    diff = np.any(np.asarray(plain) != np.asarray(marked), axis=2)
    assert diff.any()
    for x0, y0, x1, y1 in layout.boxes:
        cell = diff[y0:y1, x0:x1]
        assert cell[: spec.cell_size // 3, : spec.cell_size // 3].any()
        assert not cell[spec.cell_size // 2 :, :].any() and not cell[:, spec.cell_size // 2 :].any()


def test_pad_versus_crop_on_wide_image():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    crop, _ = render_collage([wide], [0], GridSpec(1, 1, cell=90, gap=0, fit="crop"))
    pad, _ = render_collage([wide], [0], GridSpec(1, 1, cell=90, gap=0, fit="pad"))
    assert (np.asarray(crop) == (255, 0, 0)).all()
    p = np.asarray(pad)
    assert tuple(p[45, 45]) == (255, 0, 0) and tuple(p[2, 45]) == (0, 0, 0) and tuple(p[87, 45]) == (0, 0, 0)


def test_bad_inputs():
    with pytest.raises(CollagePromptError, match="perm"):
        render_collage([_solid(0)] * 4, [0, 1, 2], GridSpec(2, 2))
    with pytest.raises(CollagePromptError, match="fit"):
        GridSpec(2, 2, fit="stretch")


def test_grid_graph_edges_and_adjacency():
    assert grid_graph(3, 3).number_of_edges() == 12
    assert grid_graph(2, 2).number_of_edges() == 4
    assert grid_graph(3, 3, neighbourhood=8).number_of_edges() == 20
    a = grid_adjacency(3, 3)
    assert a[0, 1] == a[0, 3] == 1 and a[0, 4] == 0 and a[4].sum() == 4
    a_hat = normalized_adjacency(3, 3)
    assert np.allclose(a_hat, a_hat.T)
    assert a_hat[0, 0] == pytest.approx(1 / 3) and a_hat[0, 1] == pytest.approx(1 / math.sqrt(3 * 4))


def test_symmetry_groups():
    assert (
        len(symmetry_group(3, 3)) == 8 and len(symmetry_group(2, 2)) == 8 and len(symmetry_group(2, 3)) == 4
    )
    g = symmetry_group(3, 3)
    adj = grid_adjacency(3, 3)
    for sigma in g:  # every symmetry preserves adjacency
        assert np.array_equal(adj[np.ix_(sigma, sigma)], adj)


def test_canonical_counts_and_orbits():
    assert len(all_permutations(4)) == 24 and len(all_permutations(4, canonical_only=True)) == 3
    assert len(all_permutations(9, canonical_only=True)) == 45360
    g = symmetry_group(3, 3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        perm = rng.permutation(9)
        forms = {tuple(canonical(perm[sigma], g)) for sigma in g}
        assert len(forms) == 1
    assert len(all_permutations(6, True, grid=(2, 3))) == math.factorial(6) // 4
