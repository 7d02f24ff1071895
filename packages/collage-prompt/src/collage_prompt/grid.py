"""Collage grids: rendering, the cell graph, and the dihedral symmetries of arrangements.

An arrangement ``perm`` has ``perm[c]`` = index of the image shown in cell ``c`` (row-major, cell 0 top-left).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cache, lru_cache

import networkx as nx
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from collage_prompt.errors import CollagePromptError

__all__ = [
    "CollageLayout",
    "GridSpec",
    "all_permutations",
    "canonical",
    "grid_adjacency",
    "grid_graph",
    "normalized_adjacency",
    "render_collage",
    "symmetry_group",
]


@dataclass(frozen=True)
class GridSpec:
    """A ``rows`` x ``cols`` collage; ``cell`` px squares separated by ``gap`` px of ``gap_color``.

    With ``cell=None`` the largest cell whose row and column both fit in ``target_side`` px is used
    (2x2: 254, 3x3: 168 at the defaults), so the collage is one 512-px high-detail tile.
    """

    rows: int
    cols: int
    cell: int | None = None
    gap: int = 4
    gap_color: tuple[int, int, int] = (255, 255, 255)
    fit: str = "crop"
    index_overlay: bool = False
    index_base: int = 0
    target_side: int = 512

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise CollagePromptError(f"GridSpec: rows and cols must be >= 1, got {self.rows}x{self.cols}")
        if self.fit not in ("crop", "pad"):
            raise CollagePromptError(f"GridSpec.fit={self.fit!r}: use 'crop' or 'pad'")
        if self.gap < 0:
            raise CollagePromptError(f"GridSpec.gap={self.gap}: must be >= 0")
        if self.cell_size < 8:
            raise CollagePromptError(
                f"GridSpec {self.rows}x{self.cols}: cells of {self.cell_size} px are too small; "
                "raise target_side or set cell"
            )

    @property
    def k(self) -> int:
        """Number of cells."""
        return self.rows * self.cols

    @property
    def cell_size(self) -> int:
        """Cell side in px."""
        if self.cell is not None:
            return int(self.cell)
        n = max(self.rows, self.cols)
        return (self.target_side - (n - 1) * self.gap) // n

    @property
    def size(self) -> tuple[int, int]:
        """Collage ``(width, height)`` in px."""
        s = self.cell_size
        return self.cols * s + (self.cols - 1) * self.gap, self.rows * s + (self.rows - 1) * self.gap

    def box(self, c: int) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` of cell ``c``."""
        r, col = divmod(c, self.cols)
        s = self.cell_size
        x0, y0 = col * (s + self.gap), r * (s + self.gap)
        return x0, y0, x0 + s, y0 + s

    def to_dict(self) -> dict:
        """Plain-JSON description (for store keys and layout metadata)."""
        return {
            "rows": self.rows,
            "cols": self.cols,
            "cell": self.cell_size,
            "gap": self.gap,
            "fit": self.fit,
            "index_overlay": self.index_overlay,
            "index_base": self.index_base,
        }


@dataclass
class CollageLayout:
    """Where each image went: ``perm[c]`` is the image in cell ``c``, ``boxes[c]`` its pixel box."""

    spec: GridSpec
    perm: list[int]
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _fit(image: Image.Image, side: int, mode: str) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    if mode == "crop":
        scale = side / min(w, h)
        nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC)
        x0, y0 = (nw - side) // 2, (nh - side) // 2
        return image.crop((x0, y0, x0 + side, y0 + side))
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((side - nw) // 2, (side - nh) // 2))
    return canvas


def _draw_index(canvas: Image.Image, box: tuple[int, int, int, int], text: str, side: int) -> None:
    font = ImageFont.load_default(size=max(8, side // 8))
    _, _, tx1, ty1 = font.getbbox(text)
    pad = max(2, side // 32)
    w, h = tx1 + 2 * pad, ty1 + 2 * pad
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 153))
    ImageDraw.Draw(overlay).text((pad, pad), text, fill=(255, 255, 255, 255), font=font)
    region = canvas.crop((box[0], box[1], box[0] + w, box[1] + h)).convert("RGBA")
    canvas.paste(Image.alpha_composite(region, overlay).convert("RGB"), (box[0], box[1]))


def render_collage(images, perm, spec: GridSpec) -> tuple[Image.Image, CollageLayout]:
    """Tile ``images[perm[c]]`` into cell ``c`` row-major; returns the RGB collage and its layout.

    ``images`` are PIL images or HxW(x3) uint8 arrays; ``perm`` has one image index per cell.
    """
    perm = [int(p) for p in perm]
    if len(perm) != spec.k:
        raise CollagePromptError(
            f"render_collage: perm has {len(perm)} entries, the {spec.rows}x{spec.cols} grid {spec.k}"
        )
    if any(p < 0 or p >= len(images) for p in perm):
        raise CollagePromptError(f"render_collage: perm {perm} indexes outside the {len(images)} images")
    side = spec.cell_size
    canvas = Image.new("RGB", spec.size, spec.gap_color)
    boxes = []
    for c, i in enumerate(perm):
        img = images[i]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        box = spec.box(c)
        canvas.paste(_fit(img, side, spec.fit), box[:2])
        if spec.index_overlay:
            _draw_index(canvas, box, str(c + spec.index_base), side)
        boxes.append(box)
    return canvas, CollageLayout(spec=spec, perm=perm, boxes=boxes)


def grid_graph(rows: int, cols: int, neighbourhood: int = 4) -> nx.Graph:
    """The cell graph: nodes ``r * cols + c``, edges between 4- (or 8-) neighbours."""
    if neighbourhood not in (4, 8):
        raise CollagePromptError(f"grid_graph: neighbourhood must be 4 or 8, got {neighbourhood}")
    g = nx.grid_2d_graph(rows, cols)
    if neighbourhood == 8:
        g.add_edges_from(
            ((r, c), (r + 1, c + d))
            for r in range(rows - 1)
            for c in range(cols)
            for d in (-1, 1)
            if 0 <= c + d < cols
        )
    g = nx.relabel_nodes(g, {(r, c): r * cols + c for r, c in g.nodes})
    g.add_nodes_from(range(rows * cols))
    return g


def grid_adjacency(rows: int, cols: int, neighbourhood: int = 4) -> np.ndarray:
    """0/1 adjacency (K, K) float32 of :func:`grid_graph`, rows in cell order."""
    g = grid_graph(rows, cols, neighbourhood)
    return nx.to_numpy_array(g, nodelist=range(rows * cols), dtype=np.float32)


def normalized_adjacency(rows: int, cols: int, neighbourhood: int = 4) -> np.ndarray:
    """GCN propagation matrix D^-1/2 (A + I) D^-1/2, (K, K) float32."""
    a = grid_adjacency(rows, cols, neighbourhood) + np.eye(rows * cols, dtype=np.float32)
    d = 1.0 / np.sqrt(a.sum(1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


@cache
def _group(rows: int, cols: int) -> np.ndarray:
    idx = np.arange(rows * cols).reshape(rows, cols)
    if rows == cols:
        mats = [np.rot90(idx, k) for k in range(4)]
        mats += [np.fliplr(m) for m in mats]
    else:
        mats = [idx, np.rot90(idx, 2), np.flipud(idx), np.fliplr(idx)]
    out = np.unique(np.stack([m.ravel() for m in mats]), axis=0)
    out.setflags(write=False)
    return out


def symmetry_group(rows: int, cols: int) -> np.ndarray:
    """Cell permutations σ (G, K) of the grid's symmetries: 8 for square grids, 4 otherwise (fewer for 1-wide).

    Arrangement ``perm`` maps to ``perm[σ]``: the same collage rotated or flipped.
    """
    return _group(rows, cols)


def _codes(perms: np.ndarray, k: int) -> np.ndarray:
    weights = k ** np.arange(k - 1, -1, -1, dtype=np.int64)
    return perms.astype(np.int64) @ weights


def canonical(perm, group: np.ndarray) -> np.ndarray:
    """The lexicographically smallest member of ``perm``'s orbit ``{perm[σ] : σ in group}``."""
    orbit = np.asarray(perm)[np.asarray(group)]
    return orbit[np.lexsort(orbit.T[::-1])[0]]


@lru_cache(maxsize=8)
def _permutations(k: int, rows: int, cols: int, canonical_only: bool) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(k))), dtype=np.int8)
    if canonical_only:
        codes = _codes(perms, k)
        keep = np.ones(len(perms), dtype=bool)
        for sigma in symmetry_group(rows, cols):
            keep &= codes <= _codes(perms[:, sigma], k)
        perms = perms[keep]
    perms.setflags(write=False)
    return perms


def all_permutations(k: int, canonical_only: bool = False, grid: tuple[int, int] | None = None) -> np.ndarray:
    """All K! arrangements (N, K) int8, cached; with ``canonical_only`` one per symmetry orbit of ``grid``.

    ``grid`` defaults to the square grid with K cells. 2x2 gives 3 canonical arrangements, 3x3 gives 45,360.
    """
    if not 1 <= k <= 10:
        raise CollagePromptError(
            f"all_permutations: K={k} is out of range 1..10 (use genetic or swap search)"
        )
    if grid is None:
        side = round(k**0.5)
        if side * side != k:
            raise CollagePromptError(f"all_permutations: K={k} is not square; pass grid=(rows, cols)")
        grid = (side, side)
    if grid[0] * grid[1] != k:
        raise CollagePromptError(f"all_permutations: grid {grid} does not have {k} cells")
    return _permutations(k, grid[0], grid[1], canonical_only)
