"""Budget planner for a target accuracy (spec §8.3): the cheapest grid/detail that reaches it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from collage_prompt.cli import app
from collage_prompt.cost import estimate
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec
from collage_prompt.plan import AccuracyTable, plan_for_accuracy

CATS = [f"class {i}" for i in range(10)]
TABLE = AccuracyTable(
    {
        ("1x1", "high"): 0.95,
        ("2x2", "high"): 0.93,
        ("2x2", "low"): 0.85,
        ("3x3", "high"): 0.90,
        ("3x3", "low"): 0.90,
        ("4x4", "low"): 0.80,
    },
    "hand-made",
)


def _usd(grid, detail, n=1000):
    rows, cols = (int(v) for v in grid.split("x"))
    return estimate(GridSpec(rows, cols), CATS, "gpt-4o", detail, n).total_usd


def _cheapest_reaching(target):
    """Brute force over the table, independent of the planner."""
    costs = {key: _usd(*key) for key in TABLE.accuracy}
    reaching = [key for key, acc in TABLE.accuracy.items() if acc >= target]
    return min(reaching, key=lambda key: (costs[key], -TABLE.accuracy[key]))


@pytest.mark.parametrize("target", [0.5, 0.85, 0.9, 0.91, 0.93, 0.95])
def test_cheapest_option_reaching_the_target(target):
    plan = plan_for_accuracy(1000, CATS, target, TABLE)
    assert (plan.best.grid, plan.best.detail) == _cheapest_reaching(target)
    assert plan.best.expected_accuracy >= target and plan.target_accuracy == target
    assert plan.budget_usd is None
    for o in plan.options:
        assert o.meets_target == (o.expected_accuracy >= target) and o.within_budget is None
        if o.meets_target:
            assert o.usd_total >= plan.best.usd_total


def test_known_choices():
    assert _usd("3x3", "low") < _usd("3x3", "high") < _usd("2x2", "high") < _usd("1x1", "high")
    best = plan_for_accuracy(1000, CATS, 0.9, TABLE).best  # 3x3 high and low tie at 0.90: low is cheaper
    assert (best.grid, best.detail) == ("3x3", "low")
    best = plan_for_accuracy(1000, CATS, 0.92, TABLE).best
    assert (best.grid, best.detail) == ("2x2", "high")


def test_unreachable_target_and_bad_input():
    with pytest.raises(
        CollagePromptError, match=r"no grid reaches it; the most accurate is 1x1/high at 0\.95"
    ):
        plan_for_accuracy(1000, CATS, 0.97, TABLE)
    with pytest.raises(CollagePromptError, match=r"must be in \(0, 1\]"):
        plan_for_accuracy(1000, CATS, 1.5, TABLE)
    with pytest.raises(CollagePromptError, match="n_images"):
        plan_for_accuracy(0, CATS, 0.9, TABLE)


def test_cli_target_accuracy(tmp_path):
    TABLE.save(tmp_path / "acc.json")
    args = ["cost", "--n-images", "1000", "--accuracy-table", str(tmp_path / "acc.json")]
    result = CliRunner().invoke(app, [*args, "--target-accuracy", "0.92"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["best"]["grid"], plan["best"]["detail"], plan["target_accuracy"]) == ("2x2", "high", 0.92)
    none = CliRunner().invoke(app, [*args, "--target-accuracy", "0.99"])
    assert none.exit_code == 2 and "error: target accuracy 0.99: no grid reaches it" in none.output
    assert "Traceback" not in none.output
    both = CliRunner().invoke(app, [*args, "--target-accuracy", "0.9", "--budget", "1"])
    assert both.exit_code == 2 and "not both" in both.output
