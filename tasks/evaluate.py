"""Stage 5: score the baseline and the optimized program on the held-out test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.settings import get_settings
from tasks import stage
from tasks.compile import CompiledProgram
from tasks.data import DataSplits
from tasks.language_models import JobLMs
from tasks.user_code import UserCode


@dataclass
class TestScores:
    baseline: float | None
    optimized: float | None
    examples: int

    @property
    def improvement(self) -> float | None:
        if self.baseline is None or self.optimized is None:
            return None
        return round(self.optimized - self.baseline, 6)

    def as_details(self) -> dict[str, Any]:
        return {"test_examples": self.examples, "metric_scale": "mean metric value per test example"}


def mean_metric(program: dspy.Module, devset: list[dspy.Example], metric: Any, num_threads: int) -> float:
    """The average metric value (in the metric's own units, e.g. 0..1 for accuracy).

    DSPy's `EvaluationResult.score` is a percentage; we report the plain mean so that
    baseline and optimized scores read like the metric the user wrote. Examples whose
    prediction or metric raised count as 0, as in dspy.Evaluate.
    """
    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=num_threads, display_progress=True)
    result = evaluate(program)
    scores = [float(score or 0.0) for _, _, score in result.results]
    return round(sum(scores) / len(scores), 6) if scores else 0.0


@stage(Stage.EVALUATE)
def evaluate_programs(
    compiled: CompiledProgram, splits: DataSplits, lms: JobLMs, user_code: UserCode, threads: int | None = None
) -> TestScores:
    """`threads`: the job's `num_threads` (None: the service's default)."""
    if not splits.test:
        return TestScores(baseline=None, optimized=None, examples=0)
    threads = threads or get_settings().num_threads
    metric = user_code.metric
    with dspy.context(lm=lms.main):
        metric.reset_counts()
        baseline = mean_metric(compiled.baseline, splits.test, metric, threads)
        optimized = mean_metric(compiled.optimized, splits.test, metric, threads)
    metric.raise_if_always_failing("evaluation on the test split")
    return TestScores(baseline=baseline, optimized=optimized, examples=len(splits.test))
