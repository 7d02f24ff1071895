"""Cost calibration probe (spec §8.2): fit an endpoint's image-token rule from the usage it reports.

Blank PNGs of chosen sizes are sent with one short prompt, and the same prompt once without an image. For
each size, image tokens = reported prompt_tokens(image) - prompt_tokens(text only); a least-squares line over
the 512-px tile counts that the cost model predicts for those sizes (:func:`~collage_prompt.cost.tile_count`)
gives ``base`` and ``per_tile``. The fit is written as a cost-model entry file for ``CostModel.load(path,
extend_shipped=True)`` / ``--cost-model``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from collage_prompt.batch import run_batch
from collage_prompt.client import VLMClient, VLMRequest, encode_png
from collage_prompt.cost import tile_count
from collage_prompt.errors import CollagePromptError

__all__ = ["DEFAULT_SIZES", "PROBE_TEXT", "Calibration", "calibrate_image_tokens", "parse_sizes"]

DEFAULT_SIZES = ((512, 512), (1024, 512), (1536, 512), (1024, 1024))
"""1, 2, 3 and 4 tiles at high detail: four points for a two-parameter line (a few cents on gpt-4o)."""
PROBE_TEXT = "Reply with the single word: ok"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"512x512,1024x512"`` -> ``[(512, 512), (1024, 512)]`` (width x height, px)."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise CollagePromptError(f"--sizes {text!r}: use WxH[,WxH...], e.g. 512x512,1024x1024") from None
        if w < 1 or h < 1:
            raise CollagePromptError(f"--sizes {text!r}: sizes must be positive")
        sizes.append((w, h))
    return sizes


@dataclass
class Calibration:
    """A fitted tile rule: image tokens = ``base + per_tile * tiles`` on ``model`` at ``host``.

    ``points``: per size ``{"width", "height", "tiles", "image_tokens"}``; ``max_residual``: the largest
    |measured - fitted| in tokens; ``cost_usd``: what the probe cost.
    """

    model: str
    host: str
    base: float
    per_tile: float
    text_tokens: int
    points: list[dict] = field(default_factory=list)
    max_residual: float = 0.0
    cost_usd: float = 0.0

    def entry(self) -> dict:
        """The cost-model entry (``cost_models.json`` shape) with the probe's evidence."""
        return {
            "family": "tile",
            "base": _tidy(self.base),
            "per_tile": _tidy(self.per_tile),
            "calibrated": {"host": self.host, "points": self.points, "max_residual": self.max_residual},
        }

    def save(self, path: str | Path) -> Path:
        """Write (or update this model's entry in) a cost-model file usable with ``--cost-model``."""
        path = Path(path)
        table = {}
        if path.is_file():
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CollagePromptError(f"{path}: exists and is not valid JSON ({exc})") from None
        table.setdefault("_note", "image-token rules fitted by collage-prompt cost --calibrate")
        table[self.model] = self.entry()
        path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        return path

    def to_dict(self) -> dict:
        return asdict(self)


def _tidy(x: float) -> float | int:
    return round(float(x)) if abs(x - round(x)) < 1e-6 else round(float(x), 3)


def calibrate_image_tokens(
    client: VLMClient,
    sizes=DEFAULT_SIZES,
    *,
    probe_text: str = PROBE_TEXT,
    store: str | Path | None = None,
    **batch_kwargs,
) -> Calibration:
    """Send blank high-detail PNGs of ``sizes`` (width, height) and one text-only probe through ``client``
    (via :func:`~collage_prompt.batch.run_batch`, in ``store`` or a temporary folder) and fit the tile rule.

    Raises :class:`CollagePromptError` when a probe fails, the endpoint reports no usage, or the sizes give
    fewer than two distinct tile counts.
    """
    sizes = [tuple(int(v) for v in s) for s in sizes]
    tiles = [tile_count(w, h) for w, h in sizes]
    if len(set(tiles)) < 2:
        raise CollagePromptError(
            f"calibrate: sizes {sizes} all give {tiles[0]} tile(s); choose sizes with at least two tile counts"
        )
    text_only = VLMRequest(b"", probe_text, "high", 1, {"calibration": "text"})
    probes = [
        VLMRequest(
            encode_png(Image.new("RGB", (w, h), (255, 255, 255))),
            probe_text,
            "high",
            1,
            {"calibration": f"{w}x{h}"},
        )
        for w, h in sizes
    ]
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_batch([text_only, *probes], client, store or tmp, **batch_kwargs)
    missing = [r.meta["calibration"] for r in (text_only, *probes) if r.key not in summary.records]
    if missing:
        raise CollagePromptError(
            f"calibrate: no answer for probe(s) {missing} (run status {summary.status}: {summary.error})"
        )
    records = [summary.records[r.key] for r in (text_only, *probes)]
    if any(r["usage_estimated"] for r in records):
        raise CollagePromptError(
            f"calibrate: {getattr(client, 'host', 'the endpoint')} reports no usage.prompt_tokens; nothing to fit"
        )
    text_tokens = int(records[0]["prompt_tokens"])
    y = np.array([r["prompt_tokens"] - text_tokens for r in records[1:]], dtype=np.float64)
    x = np.array(tiles, dtype=np.float64)
    (base, per_tile), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y, rcond=None)
    residual = float(np.abs(y - (base + per_tile * x)).max())
    points = [
        {"width": w, "height": h, "tiles": t, "image_tokens": int(v)}
        for (w, h), t, v in zip(sizes, tiles, y, strict=True)
    ]
    return Calibration(
        model=getattr(client, "model", ""),
        host=getattr(client, "host", type(client).__name__),
        base=float(base),
        per_tile=float(per_tile),
        text_tokens=text_tokens,
        points=points,
        max_residual=round(residual, 3),
        cost_usd=summary.cost_usd,
    )
