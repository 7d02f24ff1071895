"""JSON and self-contained HTML reports.

``write_json`` writes any mix of Python, numpy, torch, ``Path`` and dataclass values atomically.
``HtmlReport`` builds one HTML file with everything inlined: images as base64 PNG ``data:`` URIs and
plots as inline SVG, so a report can be mailed or archived as a single file and opened offline.
No JavaScript and no external URL is used.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from difflab_core.errors import DifflabError

__all__ = [
    "HtmlReport",
    "ImageLike",
    "atomic_write_text",
    "colormap",
    "heatmap_overlay",
    "image_grid",
    "to_jsonable",
    "to_pil",
    "write_json",
]

ImageLike = Image.Image | np.ndarray | torch.Tensor
"""A PIL image, an ``[H,W,3]``/``[H,W]`` numpy array (uint8, or float in [0,1]) or a ``[3,H,W]``/``[1,H,W]``/
``[H,W]`` torch tensor (float in [0,1], or uint8). A leading batch axis of size 1 is accepted."""


# --------------------------------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` recursively into plain JSON types.

    numpy / torch scalars become Python numbers, arrays and tensors nested lists, ``Path`` a string,
    dataclass instances dicts of their fields, enums their value, dates ISO strings, sets sorted lists.
    Non-finite floats stay floats (``json`` writes them as ``NaN`` / ``Infinity``).
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return t.item() if t.ndim == 0 else t.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [to_jsonable(v) for v in obj.tolist()]
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            jk = to_jsonable(k)
            if not (jk is None or isinstance(jk, (str, int, float, bool))):
                jk = str(jk)
            out[jk] = to_jsonable(v)
        return out
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    raise DifflabError(
        f"to_jsonable: cannot convert a value of type {type(obj).__qualname__} to JSON; "
        "convert it to a number, string, list, dict, array or dataclass first"
    )


def package_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the distributions ``dists`` (``"not installed"`` for missing ones), for reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (see ``to_jsonable`` for the accepted types)."""
    text = json.dumps(to_jsonable(data), indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------------- images


def _to_uint8_hwc(img: ImageLike, what: str = "image") -> np.ndarray:
    """Any ``ImageLike`` to a ``[H,W,3]`` uint8 array."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise DifflabError(
                f"{what}: a torch tensor must be [3,H,W], [1,H,W] or [H,W] (channels first), got {tuple(img.shape)}"
            )
        t = t.expand(3, -1, -1)
        if t.dtype == torch.uint8:
            return t.permute(1, 2, 0).contiguous().numpy()
        t = t.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return t.permute(1, 2, 0).contiguous().numpy()
    if isinstance(img, np.ndarray):
        a = img
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise DifflabError(
                f"{what}: a numpy array must be [H,W,3], [H,W,4], [H,W,1] or [H,W] (channels last), got {img.shape}"
            )
        a = a[..., :3]
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        if a.dtype == np.uint8:
            return np.ascontiguousarray(a)
        if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.floating):
            return (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        raise DifflabError(f"{what}: numpy images must be uint8, bool or float in [0,1], got dtype {a.dtype}")
    raise DifflabError(
        f"{what}: expected a PIL image, numpy array or torch tensor, got {type(img).__qualname__}"
    )


def to_pil(img: ImageLike) -> Image.Image:
    """Any ``ImageLike`` to an RGB PIL image."""
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    return Image.fromarray(_to_uint8_hwc(img))


# Control points of the "heat" colormap (dark → purple → red → orange → pale yellow), RGB in [0,255].
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_RGB = np.array(
    [
        [0, 0, 8],
        [84, 14, 120],
        [196, 48, 72],
        [250, 146, 20],
        [252, 252, 170],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map ``values`` (any shape, clipped to [0,1]) to uint8 RGB ``[..., 3]`` with a piecewise-linear heat map."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.interp(v, _HEAT_STOPS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def heatmap_overlay(image: ImageLike, heat: np.ndarray | torch.Tensor, *, alpha: float = 0.5) -> Image.Image:
    """Blend a colour-mapped heat map over ``image``.

    Args:
        image: ``[3,H,W]`` float tensor in [0,1], ``[H,W,3]`` uint8 array or PIL image (see ``ImageLike``).
        heat: ``[h,w]`` map on any scale (leading size-1 axes are dropped); min-max normalised to [0,1]
            (a constant map becomes 0) and bilinearly resized to ``H,W``.
        alpha: weight of the heat colour; 0 returns the image, 1 the colour map alone.

    Returns:
        RGB PIL image of size ``(W, H)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise DifflabError(f"heatmap_overlay: alpha must be in [0, 1], got {alpha}")
    base = _to_uint8_hwc(image, "heatmap_overlay image").astype(np.float64)
    h_img, w_img = base.shape[:2]
    if isinstance(heat, torch.Tensor):
        hm = heat.detach().cpu().to(torch.float64)
    else:
        hm = torch.as_tensor(np.asarray(heat, dtype=np.float64))
    while hm.ndim > 2 and hm.shape[0] == 1:
        hm = hm[0]
    if hm.ndim != 2 or hm.numel() == 0:
        raise DifflabError(
            f"heatmap_overlay: heat must be a non-empty [h,w] map, got shape {tuple(hm.shape)}"
        )
    if not torch.isfinite(hm).all():
        raise DifflabError(
            "heatmap_overlay: heat contains NaN or infinite values; clean it with nan_to_num first"
        )
    lo, hi = hm.min(), hm.max()
    hm = (hm - lo) / (hi - lo) if hi > lo else torch.zeros_like(hm)
    hm = F.interpolate(hm[None, None], size=(h_img, w_img), mode="bilinear", align_corners=False)[0, 0]
    color = colormap(hm.numpy()).astype(np.float64)
    out = (1.0 - alpha) * base + alpha * color
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


def image_grid(
    images: Sequence[ImageLike],
    ncols: int,
    *,
    pad: int = 2,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile ``images`` row by row into one PIL image.

    Every cell is as large as the largest image (smaller ones sit at the cell's top-left); cells are
    separated by ``pad`` pixels of ``fill``. The grid has ``min(ncols, len(images))`` columns.
    """
    if len(images) == 0:
        raise DifflabError("image_grid: images is empty; pass at least one image")
    if ncols < 1:
        raise DifflabError(f"image_grid: ncols must be >= 1, got {ncols}")
    if pad < 0:
        raise DifflabError(f"image_grid: pad must be >= 0, got {pad}")
    pils = [to_pil(im) for im in images]
    cw = max(p.width for p in pils)
    ch = max(p.height for p in pils)
    cols = min(ncols, len(pils))
    rows = math.ceil(len(pils) / cols)
    grid = Image.new("RGB", (cols * cw + (cols - 1) * pad, rows * ch + (rows - 1) * pad), fill)
    for i, p in enumerate(pils):
        r, c = divmod(i, cols)
        grid.paste(p, (c * (cw + pad), r * (ch + pad)))
    return grid


def _png_data_uri(img: ImageLike) -> tuple[str, int, int]:
    pil = to_pil(img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), pil.width, pil.height


# --------------------------------------------------------------------------------------------------- SVG plots

_PALETTE = ["#1f6fb4", "#e0671b", "#2a9d3a", "#c8323c", "#7b5ab6", "#8a5a44", "#d457a8", "#6f6f6f"]


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] with steps of 1, 2 or 5 times a power of ten."""
    span = hi - lo
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _expand_range(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    d = abs(lo) * 0.05 or 0.5
    return lo - d, hi + d


def _fmt_num(v: float) -> str:
    return f"{v:.6g}"


def _svg_line_plot(
    series: Mapping[str, tuple[Any, Any]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int,
    height: int,
) -> str:
    data = []
    for name, xy in series.items():
        if not isinstance(xy, (tuple, list)) or len(xy) != 2:
            raise DifflabError(f"add_plot: series {name!r} must be a pair (xs, ys)")
        xs = np.asarray(to_jsonable(xy[0]), dtype=np.float64).reshape(-1)
        ys = np.asarray(to_jsonable(xy[1]), dtype=np.float64).reshape(-1)
        if xs.shape != ys.shape:
            raise DifflabError(
                f"add_plot: series {name!r} has {xs.size} x values but {ys.size} y values; pass equal lengths"
            )
        keep = np.isfinite(xs) & np.isfinite(ys)
        data.append((str(name), xs[keep], ys[keep]))
    all_x = np.concatenate([d[1] for d in data]) if data else np.zeros(0)
    all_y = np.concatenate([d[2] for d in data]) if data else np.zeros(0)
    if all_x.size == 0:
        all_x, all_y = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    x0, x1 = _expand_range(float(all_x.min()), float(all_x.max()))
    y0, y1 = _expand_range(float(all_y.min()), float(all_y.max()))

    ml, mr, mt, mb = 64, 16 + (140 if data else 0), 32, 48
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (1.0 - (y - y0) / (y1 - y0)) * ph

    e = html.escape
    parts = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{e(title)}</title>",
        f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>',
    ]
    for t in _nice_ticks(x0, x1):
        px = sx(t)
        parts.append(f'<line x1="{px:.2f}" y1="{mt}" x2="{px:.2f}" y2="{mt + ph}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{px:.2f}" y="{mt + ph + 16}" text-anchor="middle" font-size="11">{e(_fmt_num(t))}</text>'
        )
    for t in _nice_ticks(y0, y1):
        py = sy(t)
        parts.append(f'<line x1="{ml}" y1="{py:.2f}" x2="{ml + pw}" y2="{py:.2f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{ml - 6}" y="{py + 4:.2f}" text-anchor="end" font-size="11">{e(_fmt_num(t))}</text>'
        )
    for i, (name, xs, ys) in enumerate(data):
        color = _PALETTE[i % len(_PALETTE)]
        pts = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in zip(xs.tolist(), ys.tolist(), strict=True))
        parts.append(
            f'<polyline data-series="{e(name)}" fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>'
        )
        ly = mt + 14 + 18 * i
        lx = ml + pw + 12
        parts.append(
            f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>'
        )
        parts.append(f'<text x="{lx + 24}" y="{ly}" font-size="12">{e(name)}</text>')
    parts.append(
        f'<text x="{ml + pw / 2:.1f}" y="{mt - 12}" text-anchor="middle" font-size="14" font-weight="bold">{e(title)}</text>'
    )
    parts.append(
        f'<text x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="12">{e(xlabel)}</text>'
    )
    cy = mt + ph / 2
    parts.append(
        f'<text x="14" y="{cy:.1f}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {cy:.1f})">{e(ylabel)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; }
td.s { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; text-align: center; }
figcaption { font-size: 13px; color: #555; max-width: 100%; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
p.text { white-space: pre-wrap; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
img { image-rendering: pixelated; }
"""


def _cell(v: Any) -> tuple[str, bool]:
    """Format one table value; returns (escaped text, is_numeric)."""
    if isinstance(v, (torch.Tensor, np.ndarray, np.generic)):
        v = to_jsonable(v)
    if v is None:
        return "", False
    if isinstance(v, bool):
        return html.escape(str(v)), False
    if isinstance(v, int):
        return html.escape(str(v)), True
    if isinstance(v, float):
        return html.escape(f"{v:.4g}"), True
    if not isinstance(v, str):
        try:
            v = json.dumps(to_jsonable(v), ensure_ascii=False)
        except DifflabError:
            v = str(v)
    return html.escape(v), False


def scalar_figures(figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"figure", "value"}`` for every scalar in ``figures``; nested dicts flattened with dots."""
    rows: list[dict[str, Any]] = []
    for key, value in figures.items():
        if isinstance(value, Mapping):
            rows.extend(scalar_figures({f"{key}.{k}": v for k, v in value.items()}))
        elif value is None or isinstance(value, (int, float, str, bool)):
            rows.append({"figure": key, "value": value})
    return rows


class HtmlReport:
    """A single-file HTML report; add blocks in order, then ``render()`` or ``save(path)``.

    All text is HTML-escaped; images are inlined as base64 PNGs, plots as SVG; no scripts, no external URLs.
    """

    def __init__(self, title: str) -> None:
        self.title = str(title)
        self._blocks: list[str] = []

    def __len__(self) -> int:
        return len(self._blocks)

    def add_heading(self, text: str, *, level: int = 2) -> HtmlReport:
        """Add a heading ``<h{level}>`` (level 1..6)."""
        if not 1 <= level <= 6:
            raise DifflabError(f"add_heading: level must be in 1..6, got {level}")
        self._blocks.append(f"<h{level}>{html.escape(str(text))}</h{level}>")
        return self

    def add_text(self, text: str) -> HtmlReport:
        """Add a paragraph; line breaks are kept."""
        self._blocks.append(f'<p class="text">{html.escape(str(text))}</p>')
        return self

    def add_table(
        self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
    ) -> HtmlReport:
        """Add a table of ``rows`` (dicts). ``columns`` defaults to every key, in first-seen order.

        Floats are shown with 4 significant digits; missing values as empty cells.
        """
        if columns is None:
            seen: dict[str, None] = {}
            for r in rows:
                for k in r:
                    seen.setdefault(k, None)
            columns = list(seen)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for r in rows:
            cells = []
            for c in columns:
                text, numeric = _cell(r.get(c))
                cells.append(f"<td>{text}</td>" if numeric else f'<td class="s">{text}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        self._blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def add_figures(self, figures: Mapping[str, Any]) -> HtmlReport:
        """Add the ``figure | value`` table: one row per scalar, nested dicts flattened to dotted names.

        Lists are left out (plot or tabulate them separately). The apps' end-to-end tests read this table back
        from the rendered page (`difflab_core.browser`) and compare it with ``report.json``.
        """
        return self.add_table(scalar_figures(figures), columns=["figure", "value"])

    @staticmethod
    def _figure(img: ImageLike, caption: str | None, width: int | None) -> str:
        uri, w, h = _png_data_uri(img)
        if width is not None:
            h = round(h * width / w)
            w = width
        alt = html.escape(caption or "image")
        cap = f"<figcaption>{html.escape(str(caption))}</figcaption>" if caption else ""
        return f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{alt}">{cap}</figure>'

    def add_image(
        self, img: ImageLike, caption: str | None = None, *, width: int | None = None
    ) -> HtmlReport:
        """Add one image (see ``ImageLike``), shown at its own size or at ``width`` pixels wide."""
        self._blocks.append(self._figure(img, caption, width))
        return self

    def add_images(
        self,
        images: Sequence[ImageLike],
        captions: Sequence[str] | None = None,
        *,
        width: int | None = None,
    ) -> HtmlReport:
        """Add images side by side in a wrapping row; ``captions`` must match ``images`` in length."""
        if captions is not None and len(captions) != len(images):
            raise DifflabError(
                f"add_images: got {len(images)} images but {len(captions)} captions; pass one caption per image"
            )
        caps: Sequence[str | None] = captions if captions is not None else [None] * len(images)
        figs = "".join(self._figure(im, c, width) for im, c in zip(images, caps, strict=True))
        self._blocks.append(f'<div class="row">{figs}</div>')
        return self

    def add_plot(
        self,
        series: Mapping[str, tuple[Any, Any]],
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
        *,
        width: int = 640,
        height: int = 360,
    ) -> HtmlReport:
        """Add an inline-SVG line plot; ``series`` maps a legend name to ``(xs, ys)``.

        One ``<polyline>`` per series with one point per (finite) sample; non-finite samples are dropped.
        """
        self._blocks.append(_svg_line_plot(series, str(title), str(xlabel), str(ylabel), width, height))
        return self

    def add_json(self, obj: Any, *, summary: str = "JSON") -> HtmlReport:
        """Add ``obj`` as pretty-printed JSON in a collapsible ``<details>`` block."""
        text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False)
        self._blocks.append(
            f"<details><summary>{html.escape(str(summary))}</summary><pre>{html.escape(text)}</pre></details>"
        )
        return self

    def render(self) -> str:
        """The complete HTML document as a string."""
        t = html.escape(self.title)
        body = "\n".join(self._blocks)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{t}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n<h1>{t}</h1>\n{body}\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically to ``path``; returns the path."""
        return atomic_write_text(path, self.render())
