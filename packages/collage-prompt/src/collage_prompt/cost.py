"""Image-token and USD cost model for OpenAI-style vision requests.

The reported ``usage`` is the ground truth; this model serves estimates, budgets and the simulator.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec
from collage_prompt.prompt import PromptTemplate

__all__ = [
    "CostEstimate",
    "CostModel",
    "PriceTable",
    "estimate",
    "estimate_text_tokens",
    "image_tokens",
    "query_cost",
    "tile_count",
]

logger = logging.getLogger(__name__)
PATCH = 32
PATCH_CAP = 1536


def _read(path: str | Path | None, default: str) -> dict:
    if path is None:
        text = resources.files("collage_prompt").joinpath("resources", default).read_text(encoding="utf-8")
        where = default
    else:
        path = Path(path)
        if not path.is_file():
            raise CollagePromptError(f"{path}: file not found")
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CollagePromptError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CollagePromptError(f"{where}: expected a JSON object keyed by model name")
    return {k: v for k, v in data.items() if not k.startswith("_")}


@dataclass
class CostModel:
    """Model name -> image-token rule (``cost_models.json``)."""

    models: dict[str, dict]

    @classmethod
    def load(cls, path: str | Path | None = None, *, extend_shipped: bool = False) -> CostModel:
        """The shipped table, or your own file of the same shape; with ``extend_shipped`` your file's entries
        (e.g. one written by ``collage-prompt cost --calibrate``) replace or add to the shipped ones."""
        models = _read(path, "cost_models.json")
        where = str(path) if path is not None else "cost_models.json"
        for name, rule in models.items():
            _check_rule(rule, name, where)
        if extend_shipped and path is not None:
            models = {**_read(None, "cost_models.json"), **models}
        return cls(models)

    def rule(self, model: str) -> dict:
        """The rule for ``model``; an unknown model falls back to the gpt-4o tile rule with a warning."""
        if model in self.models:
            return self.models[model]
        logger.warning(
            "model %r is not in the cost table: image tokens are estimated with the gpt-4o tile rule", model
        )
        return {"family": "tile", "base": 85, "per_tile": 170}

    def image_tokens(
        self,
        width: int,
        height: int,
        detail: str = "high",
        model: str = "gpt-4o",
        *,
        upscale_short_side: bool = False,
    ) -> int:
        """Input tokens for one image of ``width`` x ``height`` px."""
        if width < 1 or height < 1:
            raise CollagePromptError(f"image_tokens: size {width}x{height} must be positive")
        if detail not in ("low", "high", "auto"):
            raise CollagePromptError(f"image_tokens: detail={detail!r}; use 'low', 'high' or 'auto'")
        rule = self.rule(model)
        if rule["family"] == "patch":
            return _patch_tokens(width, height, float(rule["multiplier"]))
        if detail == "low":
            return round(rule["base"])
        return round(rule["base"] + rule["per_tile"] * tile_count(width, height, upscale_short_side))


def _check_rule(rule, name: str, where: str) -> None:
    ok = isinstance(rule, dict) and (
        (
            rule.get("family") == "tile"
            and all(isinstance(rule.get(k), (int, float)) for k in ("base", "per_tile"))
        )
        or (rule.get("family") == "patch" and isinstance(rule.get("multiplier"), (int, float)))
    )
    if not ok:
        raise CollagePromptError(
            f"{where}: model {name!r} needs {{'family': 'tile', 'base': n, 'per_tile': n}} or "
            f"{{'family': 'patch', 'multiplier': x}}, got {rule!r}"
        )


def tile_count(width: int, height: int, upscale_short_side: bool = False) -> int:
    """512-px tiles of a high-detail image: fit within 2048 x 2048, shrink the short side to 768 px (or, with
    ``upscale_short_side``, also enlarge it to 768), then count ``ceil(w / 512) * ceil(h / 512)``."""
    w, h = float(width), float(height)
    s = min(1.0, 2048.0 / max(w, h))
    w, h = w * s, h * s
    s = 768.0 / min(w, h)
    if s < 1.0 or upscale_short_side:
        w, h = w * s, h * s
    return math.ceil(round(w, 6) / 512) * math.ceil(round(h, 6) / 512)


def _patch_tokens(width: int, height: int, multiplier: float) -> int:
    patches = math.ceil(width / PATCH) * math.ceil(height / PATCH)
    if patches > PATCH_CAP:
        shrink = math.sqrt(PATCH * PATCH * PATCH_CAP / (width * height))
        w, h = width * shrink, height * shrink
        shrink2 = math.floor(w / PATCH) / (w / PATCH)
        w, h = w * shrink2, h * shrink2
        patches = min(PATCH_CAP, math.ceil(round(w, 6) / PATCH) * math.ceil(round(h, 6) / PATCH))
    return round(patches * multiplier)


def image_tokens(
    width: int, height: int, detail: str = "high", model: str = "gpt-4o", *, upscale_short_side: bool = False
) -> int:
    """Input tokens of one image under the shipped cost table (see :meth:`CostModel.image_tokens`)."""
    return CostModel.load().image_tokens(width, height, detail, model, upscale_short_side=upscale_short_side)


@dataclass
class PriceTable:
    """Model name -> ``{input_per_1m, output_per_1m, as_of}`` in USD (``prices.json``)."""

    prices: dict[str, dict]

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The shipped prices, or your own file of the same shape."""
        table = cls(_read(path, "prices.json"))
        for name, p in table.prices.items():
            if not {"input_per_1m", "output_per_1m"} <= set(p):
                raise CollagePromptError(
                    f"{path or 'prices.json'}: model {name!r} needs input_per_1m and output_per_1m"
                )
        return table

    def usd(self, prompt_tokens: float, completion_tokens: float, model: str) -> float:
        """Cost of one request in USD."""
        if model not in self.prices:
            raise CollagePromptError(
                f"no price for model {model!r}; add it to your prices.json (known: {sorted(self.prices)})"
            )
        p = self.prices[model]
        return (prompt_tokens * p["input_per_1m"] + completion_tokens * p["output_per_1m"]) / 1e6


def query_cost(usage, model: str, prices: PriceTable | None = None) -> float:
    """USD of one request from its usage (a dict or object with ``prompt_tokens`` and ``completion_tokens``)."""
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k)
    return (prices or PriceTable.load()).usd(get("prompt_tokens") or 0, get("completion_tokens") or 0, model)


def estimate_text_tokens(text: str) -> int:
    """Text tokens as characters / 4 (tiktoken is not a dependency)."""
    return math.ceil(len(text) / 4)


@dataclass
class CostEstimate:
    """Estimated tokens and USD for labelling ``n_images`` with one grid."""

    n_queries: int
    text_tokens: int
    image_tokens: int
    output_tokens: int
    usd_per_query: float
    usd_per_image: float
    tokens_per_image: float
    total_usd: float


def estimate(
    spec: GridSpec,
    categories,
    model: str = "gpt-4o",
    detail: str = "high",
    n_images: int = 1,
    *,
    template: str = "paper-v1",
    output_tokens_per_cell: int = 8,
    image_size: tuple[int, int] | None = None,
    cost_model: CostModel | None = None,
    prices: PriceTable | None = None,
) -> CostEstimate:
    """Cost of labelling ``n_images`` as ``spec`` collages (a 1x1 spec is standard prompting).

    ``image_size`` overrides the collage size (e.g. the raw image size for standard prompting).
    """
    text = PromptTemplate.get(template).text(spec.rows, spec.cols, categories)
    t_text = estimate_text_tokens(text)
    w, h = image_size or spec.size
    t_img = (cost_model or CostModel.load()).image_tokens(w, h, detail, model)
    t_out = output_tokens_per_cell * spec.k + 6
    usd = (prices or PriceTable.load()).usd(t_text + t_img, t_out, model)
    n_q = math.ceil(n_images / spec.k)
    if len(text) > 20000:
        logger.warning("the prompt is %d characters long: the category list dominates the cost", len(text))
    return CostEstimate(
        n_q, t_text, t_img, t_out, usd, usd / spec.k, (t_text + t_img + t_out) / spec.k, usd * n_q
    )
