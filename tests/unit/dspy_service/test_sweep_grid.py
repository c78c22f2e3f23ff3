"""A sweep's grid: expansion order and limits, budget shares, which cells score the
baseline, and the Pareto front (pure functions)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dspy_service.budget import Budget
from dspy_service.errors import JobError
from dspy_service.sweep_grid import SweepGrid, SweepRequest, baseline_sources, budget_share, check_request, expand


def grid(**axes) -> SweepGrid:
    return SweepGrid.model_validate(axes)


def test_cells_are_every_combination_with_the_last_axis_fastest():
    cells = expand(grid(model_config=[{"name": "a"}, {"name": "b"}], optimizer_name=["bootstrap", "labeled"]), 50)
    assert [(c.parameters["model_config"]["name"], c.parameters["optimizer_name"]) for c in cells] == [
        ("a", "bootstrap"), ("a", "labeled"), ("b", "bootstrap"), ("b", "labeled")
    ]
    assert [c.index for c in cells] == [0, 1, 2, 3]
    assert cells[3].positions == {"model_config": 1, "optimizer_name": 1}


def test_a_single_axis_is_a_grid():
    cells = expand(grid(optimizer_kwargs=[{"max_bootstrapped_demos": 1}, {"max_bootstrapped_demos": 2}]), 50)
    assert [c.parameters for c in cells] == [
        {"optimizer_kwargs": {"max_bootstrapped_demos": 1}}, {"optimizer_kwargs": {"max_bootstrapped_demos": 2}}
    ]


def test_no_axis_an_empty_axis_and_too_many_cells_are_400s_naming_the_field():
    with pytest.raises(JobError) as none:
        expand(grid(), 50)
    assert none.value.field == "grid"
    with pytest.raises(JobError) as empty:
        expand(grid(model_config=[{"name": "a"}], optimizer_name=[]), 50)
    assert empty.value.field == "grid.optimizer_name" and "empty" in str(empty.value)
    with pytest.raises(JobError) as many:
        expand(grid(optimizer_name=["a", "b", "c"], optimizer_kwargs=[{}, {}]), 5)
    assert many.value.field == "grid" and "6 cells" in str(many.value) and "DSPY_SERVICE_MAX_SWEEP_CELLS" in str(
        many.value
    )
    assert len(expand(grid(optimizer_name=["a", "b", "c"], optimizer_kwargs=[{}, {}]), 6)) == 6


def test_an_unknown_axis_is_refused_by_the_model():
    with pytest.raises(ValidationError):
        SweepGrid.model_validate({"module_name": ["predict"]})


@pytest.mark.parametrize("limit", [0, -1])
def test_a_sweep_budget_of_zero_or_less_is_invalid(limit):
    with pytest.raises(ValidationError):
        SweepRequest.model_validate({"base": {}, "grid": {"optimizer_name": ["a"]}, "budget": {"max_lm_calls": limit}})


def test_the_budget_is_shared_evenly_and_a_share_of_nothing_is_a_400():
    share = budget_share(Budget(max_lm_calls=101, max_tokens=4000, max_cost_usd=1.0), 4)
    assert share == Budget(max_lm_calls=25, max_tokens=1000, max_cost_usd=0.25)
    with pytest.raises(JobError) as nothing:
        budget_share(Budget(max_lm_calls=3), 4)
    assert nothing.value.field == "budget.max_lm_calls"


def test_early_stop_and_two_budgets_are_refused():
    with pytest.raises(JobError) as early:
        check_request(SweepRequest.model_validate({"base": {}, "grid": {"optimizer_name": ["a"]}, "early_stop": True}))
    assert early.value.field == "early_stop"
    both = {"base": {"budget": {"max_lm_calls": 5}}, "grid": {"optimizer_name": ["a"]}, "budget": {"max_lm_calls": 9}}
    with pytest.raises(JobError) as twice:
        check_request(SweepRequest.model_validate(both))
    assert twice.value.field == "budget"


def test_the_first_cell_of_each_model_scores_the_baseline_for_the_others():
    a, b = {"name": "a"}, {"name": "b", "temperature": 0.0}
    bodies = [{"model_config": m, "optimizer_name": o} for m in (a, b) for o in ("x", "y")]
    assert baseline_sources(bodies) == [0, 0, 2, 2]
    assert baseline_sources([{"model_config": a}, {"model_config": dict(a, temperature=1.0)}]) == [0, 1]


def test_a_cost_limit_beyond_any_real_spend_is_a_422_not_an_overflow():
    """1e308 USD would make a cell's share infinite; the budget refuses it, naming the field."""
    with pytest.raises(ValidationError, match="max_cost_usd"):
        Budget(max_cost_usd=1.1626565041302345e308)
    assert budget_share(Budget(max_cost_usd=1e12), 3).max_cost_usd == pytest.approx(1e12 / 3)
