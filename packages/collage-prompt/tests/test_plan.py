"""Budget planner (spec §8.3): the most accurate grid/detail within a budget, priced by the cost model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from collage_prompt.cli import app
from collage_prompt.client import VLMRequest
from collage_prompt.collect import collage_request
from collage_prompt.cost import estimate
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec
from collage_prompt.plan import AccuracyTable, plan_budget, simulated_accuracy_table
from collage_prompt.prompt import parse_answer
from collage_prompt.simulate import SimConfig, SimulatedVLM

CATS = [f"class {i}" for i in range(10)]
TABLE = AccuracyTable(
    {
        ("1x1", "high"): 0.95,
        ("2x2", "high"): 0.93,
        ("3x3", "high"): 0.90,
        ("3x3", "low"): 0.90,
        ("4x4", "low"): 0.80,
    },
    "hand-made",
)


def _usd(grid, detail, n=1000):
    rows, cols = (int(v) for v in grid.split("x"))
    return estimate(GridSpec(rows, cols), CATS, "gpt-4o", detail, n).total_usd


def test_best_is_the_most_accurate_option_within_budget():
    # budget between the 2x2 and the 1x1 cost: 1x1 is too dear, 2x2 is the most accurate that fits
    budget = (_usd("2x2", "high") + _usd("1x1", "high")) / 2
    plan = plan_budget(1000, CATS, budget, TABLE)
    assert (plan.best.grid, plan.best.detail, plan.best.expected_accuracy) == ("2x2", "high", 0.93)
    by = {(o.grid, o.detail): o for o in plan.options}
    assert not by[("1x1", "high")].within_budget and by[("2x2", "high")].within_budget
    for (grid, _), o in by.items():
        k = int(grid[0]) ** 2
        assert o.n_queries == math.ceil(1000 / k) and o.usd_per_image == pytest.approx(o.usd_total / 1000)
    # a budget that only the 3x3s fit: equal accuracy, so the cheaper (low detail) wins
    budget = _usd("3x3", "high") * 1.0001
    assert _usd("3x3", "low") < _usd("3x3", "high") < _usd("2x2", "high")
    best = plan_budget(1000, CATS, budget, TABLE).best
    assert (best.grid, best.detail) == ("3x3", "low")


def test_nothing_fits_and_bad_input():
    plan = plan_budget(1000, CATS, 1e-6, TABLE)
    assert plan.best is None and not any(o.within_budget for o in plan.options)
    with pytest.raises(CollagePromptError, match="budget"):
        plan_budget(1000, CATS, 0, TABLE)
    with pytest.raises(CollagePromptError, match="n_images"):
        plan_budget(0, CATS, 1.0, TABLE)
    with pytest.raises(CollagePromptError, match="detail must be high or low"):
        AccuracyTable({("2x2", "auto"): 0.5}, "bad")


def test_table_round_trip_and_bad_file(tmp_path):
    path = TABLE.save(tmp_path / "acc.json")
    assert AccuracyTable.load(path) == TABLE
    (tmp_path / "bad.json").write_text('{"accuracy": [1, 2]}')
    with pytest.raises(CollagePromptError, match=r"bad\.json"):
        AccuracyTable.load(tmp_path / "bad.json")
    with pytest.raises(CollagePromptError, match="not found"):
        AccuracyTable.load(tmp_path / "missing.json")


def test_simulated_expected_accuracy_matches_sampled_answers(digits, classifier):
    """The simulator's exact expectation against the mean of 400 sampled answers to the same collage."""
    sim = SimulatedVLM(classifier, digits.classes, SimConfig(malformed_rate=0.0, a_read=0.3, lam=0.5))
    spec = GridSpec(2, 2, target_side=96)
    req = collage_request(digits, [600, 601, 602, 650], [2, 0, 3, 1], spec)
    expected = sim.expected_accuracy(req)
    hits = []
    for draw in range(400):
        again = VLMRequest(req.image_png, req.prompt, req.detail, req.k, req.meta, key=f"{draw + 1:016x}" * 4)
        matched = parse_answer(sim.complete(again).text, 4, digits.classes).matched
        hits += [m == t for m, t in zip(matched, req.meta["truth"], strict=True)]
    se = math.sqrt(expected * (1 - expected) / len(hits)) + 1e-3
    assert abs(np.mean(hits) - expected) < 4 * se


def test_simulated_table_covers_every_grid_and_detail(digits, classifier):
    sim = SimulatedVLM(classifier, digits.classes)
    table = simulated_accuracy_table(sim, digits, np.arange(600, 900), ("1x1", "2x2"), n_sets=3)
    assert set(table.accuracy) == {("1x1", "high"), ("1x1", "low"), ("2x2", "high"), ("2x2", "low")}
    assert all(0.0 <= a <= 1.0 for a in table.accuracy.values()) and "simulated" in table.source


def test_cli_cost_budget(tmp_path):
    TABLE.save(tmp_path / "acc.json")
    budget = (_usd("2x2", "high") + _usd("1x1", "high")) / 2
    args = ["cost", "--n-images", "1000", "--accuracy-table", str(tmp_path / "acc.json")]
    result = CliRunner().invoke(app, [*args, "--budget", str(budget)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["best"]["grid"], plan["best"]["detail"]) == ("2x2", "high")
    assert plan["accuracy_source"] == "hand-made"
    broke = CliRunner().invoke(app, [*args, "--budget", "0.000001"])
    assert broke.exit_code == 2 and "error: --budget 1e-06: no grid labels 1000 images" in broke.output
    assert "Traceback" not in broke.output
