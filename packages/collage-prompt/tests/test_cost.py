"""Image-token and cost model against OpenAI's documented tiling rules, worked by hand."""

from __future__ import annotations

import json
import logging

import pytest

from collage_prompt.cost import CostModel, PriceTable, estimate, image_tokens, query_cost
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec


@pytest.mark.parametrize(
    ("w", "h", "tokens"),
    [
        (512, 512, 255),
        (1024, 1024, 765),
        (2048, 4096, 1105),
        (448, 448, 255),
        (672, 672, 765),
        (510, 510, 255),
        (4096, 8192, 1105),
        (768, 1536, 1105),
    ],
)
def test_tile_family_high_detail(w, h, tokens):
    assert image_tokens(w, h, "high", "gpt-4o") == tokens


def test_low_detail_is_base():
    assert image_tokens(4000, 3000, "low", "gpt-4o") == 85
    assert image_tokens(512, 512, "low", "gpt-4o-mini") == 2833


def test_upscale_flag_changes_small_images():
    assert image_tokens(512, 512, upscale_short_side=True) == 85 + 170 * 4  # 512 -> 768: 2x2 tiles


def test_patch_family():
    # 1024x1024: 32 x 32 = 1024 patches; 1800x2400 is shrunk to 1056x1408 -> 33 x 44 = 1452 patches (docs example)
    assert image_tokens(1024, 1024, model="gpt-4.1-mini") == round(1024 * 1.62)
    assert image_tokens(1800, 2400, model="gpt-4.1-mini") == round(1452 * 1.62)
    assert image_tokens(100, 100, model="gpt-4.1-nano") == round(16 * 2.46)


def test_unknown_model_warns(caplog):
    caplog.set_level(logging.WARNING)
    assert image_tokens(512, 512, model="my-local-llava") == 255
    assert "my-local-llava" in caplog.text


def test_prices_and_query_cost(tmp_path):
    assert query_cost({"prompt_tokens": 1_000_000, "completion_tokens": 0}, "gpt-4o") == pytest.approx(2.5)
    assert query_cost(
        {"prompt_tokens": 0, "completion_tokens": 1_000_000}, "gpt-4-vision-preview"
    ) == pytest.approx(30.0)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m": {"input_per_1m": 1.0, "output_per_1m": 2.0, "as_of": "x"}}))
    assert PriceTable.load(path).usd(1000, 1000, "m") == pytest.approx(0.003)
    with pytest.raises(CollagePromptError, match="no price"):
        PriceTable.load(path).usd(1, 1, "gpt-4o")
    path.write_text("{nope")
    with pytest.raises(CollagePromptError, match=r"prices\.json"):
        PriceTable.load(path)


def test_estimate_collage_is_cheaper_per_image():
    cats = [f"class {i}" for i in range(10)]
    standard = estimate(GridSpec(1, 1), cats, image_size=(64, 64))
    collage = estimate(GridSpec(3, 3), cats, n_images=100)
    assert standard.image_tokens == 255 and collage.image_tokens == 255
    assert collage.n_queries == 12
    assert collage.usd_per_image < 0.25 * standard.usd_per_image
    assert collage.total_usd == pytest.approx(12 * collage.usd_per_query)


def test_cost_model_file(tmp_path):
    path = tmp_path / "cm.json"
    path.write_text(json.dumps({"x": {"family": "tile", "base": 10, "per_tile": 1}}))
    assert CostModel.load(path).image_tokens(1024, 1024, "high", "x") == 14
