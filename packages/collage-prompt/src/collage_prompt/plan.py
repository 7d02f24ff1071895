"""Budget planner (spec §8.3): the grid and detail that label N images most accurately within a budget, or
most cheaply at a target accuracy.

Cost comes from the cost model (:func:`~collage_prompt.cost.estimate`: prompt text with the category list,
image tokens of the rendered collage, answer tokens, prices from ``prices.json``). Expected accuracy comes
from an :class:`AccuracyTable` by (grid, detail): measured by your own evaluation (``AccuracyTable.load``,
``AccuracyTable.from_report``) or the simulated VLM's exact expectation on held-out images
(:func:`simulated_accuracy_table`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from collage_prompt.collect import collage_request, sample_image_sets
from collage_prompt.cost import CostModel, PriceTable, estimate
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec

__all__ = [
    "DEFAULT_GRIDS",
    "AccuracyTable",
    "BudgetPlan",
    "PlanOption",
    "plan_budget",
    "plan_for_accuracy",
    "simulated_accuracy_table",
]

DEFAULT_GRIDS = ("1x1", "2x2", "3x3", "4x4")
"""The spec's choices: standard prompting and square collages up to 4x4."""
DETAILS = ("high", "low")


def _spec(grid: str) -> GridSpec:
    try:
        rows, cols = (int(v) for v in grid.lower().split("x"))
    except ValueError:
        raise CollagePromptError(f"grid {grid!r}: use RxC, e.g. 3x3") from None
    return GridSpec(rows, cols)


@dataclass
class AccuracyTable:
    """Expected top-1 accuracy by ``(grid "RxC", detail)``, and where the numbers come from."""

    accuracy: dict[tuple[str, str], float]
    source: str

    def __post_init__(self) -> None:
        for (grid, detail), acc in self.accuracy.items():
            _spec(grid)
            if detail not in DETAILS or not 0.0 <= acc <= 1.0:
                raise CollagePromptError(
                    f"accuracy table ({self.source}): entry {grid}/{detail} = {acc}; detail must be high or "
                    "low and accuracy in [0, 1]"
                )

    def to_dict(self) -> dict:
        table: dict[str, dict[str, float]] = {}
        for (grid, detail), acc in self.accuracy.items():
            table.setdefault(grid, {})[detail] = acc
        return {"source": self.source, "accuracy": table}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AccuracyTable:
        """Read ``{"source": ..., "accuracy": {"3x3": {"high": 0.81, "low": 0.74}, ...}}``."""
        path = Path(path)
        if not path.is_file():
            raise CollagePromptError(f"{path}: accuracy table not found")
        try:
            data = json.loads(path.read_text())
            table = {
                (grid, detail): float(acc)
                for grid, by_detail in data["accuracy"].items()
                for detail, acc in by_detail.items()
            }
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as exc:
            raise CollagePromptError(
                f'{path}: expected {{"accuracy": {{"RxC": {{"high"|"low": accuracy}}}}}} ({exc})'
            ) from None
        return cls(table, data.get("source", str(path)))

    @classmethod
    def from_report(cls, report, detail: str = "high", method: str = "random") -> AccuracyTable:
        """Measured accuracies of an :func:`~collage_prompt.evaluate.evaluate_protocol` run: ``method`` per
        collage grid and the standard prompt as 1x1 (the run's ``detail``)."""
        table = {
            (grid, detail): r.acc
            for (grid, m), r in report.results.items()
            if m == method or (grid, m) == ("1x1", "standard")
        }
        return cls(table, f"evaluate_protocol ({method} arrangements, detail={detail})")


def simulated_accuracy_table(
    sim,
    dataset,
    pool: Sequence[int] | None = None,
    grids: Sequence[str] = DEFAULT_GRIDS,
    details: Sequence[str] = DETAILS,
    n_sets: int = 20,
    seed: int = 0,
    template: str = "paper-v1",
) -> AccuracyTable:
    """The simulated VLM's exact expected accuracy (:meth:`SimulatedVLM.expected_accuracy`) on ``n_sets``
    random arrangements of image sets drawn from ``pool`` (held out from its classifier), per grid and detail."""
    table = {}
    for grid in grids:
        spec = _spec(grid)
        sets = sample_image_sets(dataset.labels, spec.k, n_sets, 0.0, seed + spec.k, pool)
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(spec.k) for _ in sets]
        for detail in details:
            acc = [
                sim.expected_accuracy(collage_request(dataset, idx, perm, spec, template, detail))
                for idx, perm in zip(sets, perms, strict=True)
            ]
            table[(grid, detail)] = float(np.mean(acc))
    return AccuracyTable(table, f"simulated VLM, {n_sets} random sets per grid (seed {seed})")


@dataclass
class PlanOption:
    """One (grid, detail) choice: its expected accuracy and the cost of labelling all images with it.
    ``within_budget`` / ``meets_target`` are None when the plan has no budget / no target accuracy."""

    grid: str
    detail: str
    expected_accuracy: float
    n_queries: int
    usd_total: float
    usd_per_image: float
    within_budget: bool | None
    meets_target: bool | None = None


@dataclass
class BudgetPlan:
    """``best``: for a budget, the most accurate option within it (cheapest on ties), None when nothing fits;
    for a target accuracy, the cheapest option reaching it (most accurate on ties)."""

    n_images: int
    budget_usd: float | None
    model: str
    best: PlanOption | None
    options: list[PlanOption] = field(default_factory=list)
    accuracy_source: str = ""
    target_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _priced_options(
    n_images: int,
    categories,
    table: AccuracyTable,
    model: str,
    template: str,
    prices: PriceTable | None,
    cost_model: CostModel | None,
) -> list[PlanOption]:
    """Every (grid, detail) of ``table`` priced by the cost model for ``n_images``."""
    if n_images < 1:
        raise CollagePromptError(f"plan: n_images={n_images} must be >= 1")
    if not table.accuracy:
        raise CollagePromptError(f"plan: the accuracy table ({table.source}) is empty")
    prices = prices or PriceTable.load()
    cost_model = cost_model or CostModel.load()
    options = []
    for (grid, detail), acc in sorted(table.accuracy.items()):
        est = estimate(
            _spec(grid),
            categories,
            model,
            detail,
            n_images,
            template=template,
            cost_model=cost_model,
            prices=prices,
        )
        options.append(
            PlanOption(grid, detail, acc, est.n_queries, est.total_usd, est.total_usd / n_images, None)
        )
    return options


def plan_budget(
    n_images: int,
    categories,
    budget_usd: float,
    table: AccuracyTable,
    model: str = "gpt-4o",
    *,
    template: str = "paper-v1",
    prices: PriceTable | None = None,
    cost_model: CostModel | None = None,
) -> BudgetPlan:
    """Every (grid, detail) of ``table`` priced for ``n_images`` with ``categories`` on ``model``; the best is
    the highest expected accuracy whose total estimated cost is at most ``budget_usd``."""
    if budget_usd <= 0:
        raise CollagePromptError(f"plan_budget: budget {budget_usd} USD must be > 0")
    options = _priced_options(n_images, categories, table, model, template, prices, cost_model)
    for o in options:
        o.within_budget = o.usd_total <= budget_usd
    fitting = [o for o in options if o.within_budget]
    best = max(fitting, key=lambda o: (o.expected_accuracy, -o.usd_total)) if fitting else None
    return BudgetPlan(n_images, budget_usd, model, best, options, table.source)


def plan_for_accuracy(
    n_images: int,
    categories,
    target_accuracy: float,
    table: AccuracyTable,
    model: str = "gpt-4o",
    *,
    template: str = "paper-v1",
    prices: PriceTable | None = None,
    cost_model: CostModel | None = None,
) -> BudgetPlan:
    """The cheapest (grid, detail) of ``table`` whose expected accuracy is at least ``target_accuracy`` (the
    more accurate on equal cost); :class:`CollagePromptError` naming the best reachable accuracy when none is."""
    if not 0.0 < target_accuracy <= 1.0:
        raise CollagePromptError(f"plan_for_accuracy: target accuracy {target_accuracy} must be in (0, 1]")
    options = _priced_options(n_images, categories, table, model, template, prices, cost_model)
    for o in options:
        o.meets_target = o.expected_accuracy >= target_accuracy
    reaching = [o for o in options if o.meets_target]
    if not reaching:
        top = max(options, key=lambda o: o.expected_accuracy)
        raise CollagePromptError(
            f"target accuracy {target_accuracy}: no grid reaches it; the most accurate is {top.grid}/"
            f"{top.detail} at {top.expected_accuracy:.4f} ({table.source})"
        )
    best = min(reaching, key=lambda o: (o.usd_total, -o.expected_accuracy))
    return BudgetPlan(n_images, None, model, best, options, table.source, target_accuracy)
