"""Segment bar plots with PIL only: one coloured bar per row (e.g. ground truth, prediction), a legend."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import DiffActError
from .postprocess import segments

BAR_HEIGHT = 28
GAP = 10
TITLE_WIDTH = 110
LEGEND_ROW = 18


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for any number of classes (golden-ratio hues, alternating lightness)."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        light = 0.45 if i % 2 else 0.6
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.75)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


def render_segments(
    rows: Sequence[tuple[str, Sequence[str]]],
    class_names: Sequence[str],
    fps: float | None = None,
    width: int = 900,
) -> Image.Image:
    """Draw ``rows`` of ``(title, frame labels)`` as segment bars over a shared time axis.

    Labels must be names from ``class_names``; with ``fps`` the axis is labelled in seconds.
    """
    if not rows:
        raise DiffActError("render_segments needs at least one row")
    known = {n: i for i, n in enumerate(class_names)}
    num_frames = max(len(labels) for _, labels in rows)
    colors = class_colors(len(class_names))
    font = ImageFont.load_default()
    legend_cols = max(1, (width - 20) // 160)
    legend_rows = -(-len(class_names) // legend_cols)
    height = GAP + len(rows) * (BAR_HEIGHT + GAP) + 20 + legend_rows * LEGEND_ROW + GAP
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    bar_width = width - TITLE_WIDTH - GAP
    scale = bar_width / max(num_frames, 1)
    for r, (title, labels) in enumerate(rows):
        top = GAP + r * (BAR_HEIGHT + GAP)
        draw.text((GAP, top + BAR_HEIGHT // 3), str(title)[:16], fill="black", font=font)
        for seg in segments([str(x) for x in labels], bg_classes=()):
            if seg.label not in known:
                raise DiffActError(f"row {title!r}: label {seg.label!r} is not one of the class names")
            x0 = TITLE_WIDTH + seg.start * scale
            x1 = TITLE_WIDTH + seg.end * scale
            draw.rectangle([x0, top, max(x0, x1 - 1), top + BAR_HEIGHT], fill=colors[known[seg.label]])
    axis_top = GAP + len(rows) * (BAR_HEIGHT + GAP)
    end_text = f"{num_frames / fps:.1f} s" if fps else f"{num_frames} frames"
    draw.text((TITLE_WIDTH, axis_top), "0", fill="black", font=font)
    draw.text((width - GAP - 8 * len(end_text), axis_top), end_text, fill="black", font=font)
    legend_top = axis_top + 20
    for i, name in enumerate(class_names):
        x = GAP + (i % legend_cols) * 160
        y = legend_top + (i // legend_cols) * LEGEND_ROW
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=colors[i])
        draw.text((x + 18, y + 2), name[:22], fill="black", font=font)
    return image


def save_segment_plot(
    path: str | os.PathLike[str],
    rows: Sequence[tuple[str, Sequence[str]]],
    class_names: Sequence[str],
    fps: float | None = None,
) -> Path:
    """:func:`render_segments` saved as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_segments(rows, class_names, fps).save(path)
    return path
