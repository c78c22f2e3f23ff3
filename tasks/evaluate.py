"""Stage 5: score the baseline and the optimized program on the held-out test split.

An example whose prediction or metric raises scores 0 and is counted per cause
(tasks/evaluation_errors.py); the evaluation never stops early on errors (DSPy's
`Evaluate` would, at its default of 10, and raise "Execution cancelled"). When more than
DSPY_SERVICE_EVALUATION_ERROR_LIMIT of the optimized program's examples fail, the stage
raises `EvaluationFailed`, whose message names the most frequent cause; the flow still keeps
the compiled program as the job's artifact. A job with a budget evaluates within it
(tasks/budget.py): calls it has no room for are refused, and the stage then fails naming
the budget (the compiled program is kept the same way). The baseline's errors are counted and shown but
never fail the job: a model whose zero-shot answers mostly fail (a small model answering in
the wrong format) is what optimization is for, and the optimized program is what the user
gets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.errors import JobError
from dspy_service.settings import get_settings
from tasks import stage
from tasks.compile import CompiledProgram
from tasks.data import DataSplits
from tasks.evaluation_errors import ErrorTally, counting
from tasks.language_models import JobLMs
from tasks.stopping import raise_if_stopped
from tasks.user_code import UserCode

PROGRAMS = ("baseline", "optimized")


class EvaluationFailed(JobError):
    """Too many test examples failed; `errors` holds the counts per program."""

    def __init__(self, message: str, errors: dict[str, Any]):
        super().__init__(message)
        self.errors = errors


@dataclass
class TestScores:
    baseline: float | None
    optimized: float | None
    examples: int
    errors: dict[str, Any] = field(default_factory=dict)  # program -> ErrorTally.as_details()
    seconds_per_example: float | None = None  # the optimized program's evaluation, wall clock


    @property
    def improvement(self) -> float | None:
        if self.baseline is None or self.optimized is None:
            return None
        return round(self.optimized - self.baseline, 6)

    def as_details(self) -> dict[str, Any]:
        return {
            "test_examples": self.examples,
            "metric_scale": "mean metric value per test example",
            "evaluation_errors": self.errors,
            "seconds_per_example": self.seconds_per_example,
        }


def mean_metric(
    program: dspy.Module, devset: list[dspy.Example], metric: Any, num_threads: int, tally: ErrorTally | None = None
) -> float:
    """The average metric value (in the metric's own units, e.g. 0..1 for accuracy).

    DSPy's `EvaluationResult.score` is a percentage; we report the plain mean so that
    baseline and optimized scores read like the metric the user wrote. Examples whose
    prediction or metric raised count as 0 and are recorded in `tally`; no number of
    them stops the evaluation.
    """
    tally = tally if tally is not None else ErrorTally()
    tally.examples = len(devset)
    evaluate = dspy.Evaluate(
        devset=devset,
        metric=counting(metric, tally),
        num_threads=num_threads,
        display_progress=True,
        max_errors=len(devset) + 1,
    )
    result = evaluate(counting(program, tally))
    scores = [float(score or 0.0) for _, _, score in result.results]
    return round(sum(scores) / len(scores), 6) if scores else 0.0


def check_error_share(tallies: dict[str, ErrorTally], limit: float) -> None:
    """EvaluationFailed when more than `limit` of the optimized program's examples failed."""
    tally = tallies["optimized"]
    if tally.examples and tally.share() > limit:
        errors = {name: t.as_details() for name, t in tallies.items()}
        raise EvaluationFailed(
            f"evaluation failed: {tally.describe('optimized')} (more than {limit:.0%} of the examples; "
            "DSPY_SERVICE_EVALUATION_ERROR_LIMIT)",
            errors,
        )


@stage(Stage.EVALUATE)
def evaluate_programs(
    compiled: CompiledProgram,
    splits: DataSplits,
    lms: JobLMs,
    user_code: UserCode,
    threads: int | None = None,
    baseline: bool = True,
) -> TestScores:
    """`threads`: the job's `num_threads` (None: the service's default). `baseline` False
    (a sweep's cell whose model's first cell scores the baseline) scores only the optimized
    program: no LM call is spent on the baseline, and `baseline` is None."""
    budget = lms.budget
    if budget is not None:
        budget.start_evaluation()  # the reserve is the evaluation's now
    if not splits.test:
        if budget is not None:
            budget.lift()
        return TestScores(baseline=None, optimized=None, examples=0)
    settings = get_settings()
    threads = threads or settings.num_threads
    metric = user_code.metric
    tallies = {program: ErrorTally(secrets=lms.secrets) for program in PROGRAMS if baseline or program != "baseline"}
    with dspy.context(lm=lms.main):
        metric.reset_counts()
        baseline_score = (
            mean_metric(compiled.baseline, splits.test, metric, threads, tallies["baseline"]) if baseline else None
        )
        started = time.monotonic()
        optimized = mean_metric(compiled.optimized, splits.test, metric, threads, tallies["optimized"])
        seconds_per_example = round((time.monotonic() - started) / len(splits.test), 4)
    raise_if_stopped()  # a stop during evaluation fails every call left: not the program's errors
    if budget is not None:
        budget.raise_if_evaluation_refused()  # the refused calls are not the program's errors either
        budget.lift()
    metric.raise_if_always_failing("evaluation on the test split")
    check_error_share(tallies, settings.evaluation_error_limit)
    return TestScores(
        baseline=baseline_score,
        optimized=optimized,
        examples=len(splits.test),
        errors={program: tally.as_details() for program, tally in tallies.items()},
        seconds_per_example=seconds_per_example,
    )
