"""A job's hard budget on the wire (`budget` of POST /run and of a schedule).

The job enforces it at its metered LMs (tasks/budget.py). Each limit is optional; a given
one must be > 0 (pydantic answers 422 naming `budget.<field>`). A budget with no limit set
is no budget. `check_room` raises JobError (field `budget`) when `max_lm_calls` leaves no
call for optimizing once the test evaluation is served: the API asks it at submit (400,
one call per test example and program) and the job again with the module's predictors.
Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dspy_service.errors import JobError

# The three limits and what the job counts against each (tasks/budget.py `used`).
LIMITS = ("max_lm_calls", "max_tokens", "max_cost_usd")
# Where a job's budget came from: its own body, or its owner's default budget (the whole
# default applies to a job whose body has no `budget` key; dspy_service/budget_defaults.py).
BudgetSource = Literal["job", "user_default"]
JOB, USER_DEFAULT = "job", "user_default"


# Beyond any real spend; keeps every share and sum of budgets a finite float.
MAX_COST_USD = 1e12


class Budget(BaseModel):
    """Hard limits on what the job's LM calls may use, every role counted (main, reflection,
    prompt, task), compile and test evaluation together."""

    model_config = ConfigDict(extra="forbid")

    max_lm_calls: int | None = Field(
        default=None, gt=0, description="LM requests the job may send (answers from the cache are not counted)."
    )
    max_tokens: int | None = Field(
        default=None, gt=0, description="Prompt plus completion tokens the job may use."
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        le=MAX_COST_USD,
        allow_inf_nan=False,
        description="USD the job may spend, priced as `usage.cost` is (DSPy's price metadata or the model "
        "config's own `input_cost_per_token` / `output_cost_per_token`); at most 1e12.",
    )

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {name: getattr(self, name) for name in LIMITS if getattr(self, name) is not None}


def evaluation_calls(test_examples: int, predictors: int = 1) -> int:
    """LM calls of the two test evaluations (baseline and optimized) when each predictor is
    called once per example: what the job reserves of its budget before compile."""
    return 2 * test_examples * max(1, predictors)


def check_room(budget: Budget | None, test_examples: int, predictors: int = 1) -> int:
    """The calls reserved for the evaluation; JobError when that leaves compile none."""
    calls = evaluation_calls(test_examples, predictors)
    limit = budget.max_lm_calls if budget is not None else None
    if limit is not None and calls >= limit:
        per = f" × {predictors} predictor calls" if predictors > 1 else ""
        raise JobError(
            f"budget.max_lm_calls {limit} leaves no LM call for optimizing: the test evaluation alone needs "
            f"{calls} (2 programs × {test_examples} test examples{per}); raise it or make the test split smaller",
            field="budget.max_lm_calls",
        )
    return calls
